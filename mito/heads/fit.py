"""fit_on_rows: THE way to fit a head on rows of a store (fit-head and bench both call it).

Features stay float16 (as stored); they are either read once into one array (the only full-size array) or,
for heads that can, streamed from the store chunk by chunk every epoch, so memory is bounded by the shuffle
buffer whatever the store's size.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import pandas as pd

from mito.core.resources import available_memory
from mito.heads.base import FittedHead, Head, HeadError, not_streamable
from mito.heads.features import FeaturePipeline, feature_dims, one_hot, select_features
from mito.heads.stream import DEFAULT_BUFFER_ROWS, FeatureStream, fit_pipeline_stream
from mito.heads.view_noise import VIEW_NOISE_MODES
from mito.heads.views import read_views
from mito.store import Store

STREAM_MEMORY_SHARE = 0.5  # auto: stream when the features would take more than this share of the memory budget
BUFFER_MEMORY_SHARE = 0.25  # streamed under an explicit memory budget: the two shuffle buffers take at most this share
PARTS = ("train", "val", "test")

Scored = dict[str, tuple[np.ndarray, np.ndarray]]


H = TypeVar("H", bound=FittedHead)


@dataclass
class FitResult(Generic[H]):
    """A fitted head with its pipeline, and its probabilities on the val/test rows (in the order the rows were given)."""

    head: H  # a Head (fit_on_rows) or an Ensemble (mito.heads.ensemble.fit_ensemble)
    pipeline: FeaturePipeline
    n_features_in: int
    scored: Scored = field(default_factory=dict)
    pipeline_seconds: float = 0.0
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    streamed: bool = False


def use_stream(stream: bool | None, head: Head, feature_bytes: int, budget: int | None = None) -> bool:
    """Whether to train from the store chunk by chunk: as asked, or (auto) when a streaming head's features would
    take more than STREAM_MEMORY_SHARE of ``budget`` (default: the memory available now)."""
    if stream is not None:
        if stream and not head.supports_stream:
            raise not_streamable(head.name)
        return stream
    if budget is None:
        budget = available_memory()
    return bool(head.supports_stream and budget is not None and feature_bytes > STREAM_MEMORY_SHARE * budget)


def fit_on_rows(
    store: Store,
    keys: Sequence[str],
    parts: Mapping[str, np.ndarray],
    labels: np.ndarray,
    head: Head,
    *,
    standardize: bool = False,
    pca: int | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
    tiles: pd.DataFrame | None = None,
    stream: bool | None = None,
    memory_budget: int | None = None,
    seed: int = 0,
    buffer_rows: int = DEFAULT_BUFFER_ROWS,
) -> FitResult[Head]:
    """Fit ``head`` (after the standardise/PCA pipeline, fitted on the training rows) on ``parts['train']`` of ``store``,
    early-stopping on ``parts['val']``, and score ``parts['val']`` and ``parts['test']``.

    ``parts`` hold row indices of the store (distinct, any order); ``labels`` has one label per store row;
    ``categories`` are metadata one-hot vocabularies (columns of ``tiles``, default the store's tile table).
    ``stream``: True/False, or None to stream when the features would fill ``memory_budget`` (see use_stream).
    """
    keys = list(keys)
    rows = {name: np.asarray(parts.get(name, np.zeros(0, np.int64)), dtype=np.int64) for name in PARTS}
    if len(rows["train"]) == 0:
        raise HeadError("the split left no training rows")
    cats = dict(categories or {})
    if cats and tiles is None:
        tiles = store.tiles
    labels = np.asarray(labels)
    n_rows = sum(len(r) for r in rows.values())
    feature_bytes = n_rows * sum(feature_dims(store, keys)) * np.dtype(np.float16).itemsize
    on_views = getattr(head, "noise_mode", None) in VIEW_NOISE_MODES
    if on_views and stream:
        raise HeadError(f"noise_mode {head.noise_mode} trains from memory: use --no-stream")
    streamed = False if on_views else use_stream(stream, head, feature_bytes, memory_budget)
    if streamed and memory_budget is not None:  # two float16 shuffle buffers within their share of the budget
        width = sum(feature_dims(store, keys)) + sum(len(c) for c in cats.values())
        buffer_rows = max(1, min(buffer_rows, int(BUFFER_MEMORY_SHARE * memory_budget) // (2 * 2 * max(1, width))))
    fit = _fit_streamed if streamed else _fit_in_memory
    result = fit(store, keys, rows, labels, head, tiles, cats, FeaturePipeline(standardize=standardize, pca=pca), seed, buffer_rows)
    result.streamed = streamed
    return result


def _fit_in_memory(
    store: Store,
    keys: list[str],
    parts: dict[str, np.ndarray],
    labels: np.ndarray,
    head: Head,
    tiles: pd.DataFrame | None,
    cats: dict[str, Sequence[str]],
    pipe: FeaturePipeline,
    seed: int,
    buffer_rows: int,
) -> FitResult[Head]:
    """All chosen features in one float16 array (the only full-size array), then fit and score."""
    rows = np.concatenate([parts[name] for name in PARTS])
    X = select_features(store, keys, rows, categories={}, dtype=np.float16)
    y = labels[rows]
    n_tr, n_va = len(parts["train"]), len(parts["val"])
    t0 = time.perf_counter()
    pipe.fit(X[:n_tr], seed=seed)
    if pipe.pca:
        X = pipe.transform(X)
    else:
        pipe.transform(X, out=X)
    if cats:
        X = np.concatenate([X, one_hot(tiles, rows, cats).astype(X.dtype)], axis=1)
    t1 = time.perf_counter()
    X_tr, X_va, X_te = X[:n_tr], X[n_tr : n_tr + n_va], X[n_tr + n_va :]
    y_tr, y_va, y_te = y[:n_tr], y[n_tr : n_tr + n_va], y[n_tr + n_va :]
    views = None
    if getattr(head, "noise_mode", None) in VIEW_NOISE_MODES:  # the training rows' views, through the same pipeline
        views = read_views(store, keys, parts["train"])
        views = np.stack([pipe.transform(v) if pipe.pca else pipe.transform(v, out=v) for v in views])
        if cats:
            extra = one_hot(tiles, parts["train"], cats).astype(views.dtype)
            views = np.concatenate([views, np.broadcast_to(extra, (len(views), *extra.shape))], axis=2)
    head.fit(X_tr, y_tr, X_va if n_va else None, y_va if n_va else None, views=views)
    t2 = time.perf_counter()
    out = FitResult(head, pipe, X.shape[1], pipeline_seconds=t1 - t0, train_seconds=t2 - t1)
    for name, Xs, ys in (("val", X_va, y_va), ("test", X_te, y_te)):
        if len(ys):
            t = time.perf_counter()
            out.scored[name] = (ys, head.predict_proba(Xs))
            if name == "test":
                out.predict_seconds = time.perf_counter() - t
    return out


def _fit_streamed(
    store: Store,
    keys: list[str],
    parts: dict[str, np.ndarray],
    labels: np.ndarray,
    head: Head,
    tiles: pd.DataFrame | None,
    cats: dict[str, Sequence[str]],
    pipe: FeaturePipeline,
    seed: int,
    buffer_rows: int,
) -> FitResult[Head]:
    """Fit the pipeline, train and score reading the store chunk by chunk: memory bounded by the shuffle buffer."""
    order = {name: np.argsort(parts[name], kind="stable") for name in PARTS}

    def stream(name: str, p: FeaturePipeline | None) -> FeatureStream:
        r = parts[name][order[name]]  # a stream reads its rows in store order
        return FeatureStream(store, keys, r, labels[r], tiles, cats, p, buffer_rows)

    t0 = time.perf_counter()
    if pipe.active:
        fit_pipeline_stream(pipe, stream("train", None), seed=seed)
    streams = {name: stream(name, pipe) for name in PARTS}
    t1 = time.perf_counter()
    head.fit_stream(streams["train"], streams["val"] if len(parts["val"]) else None)
    t2 = time.perf_counter()
    out = FitResult(head, pipe, streams["train"].d, pipeline_seconds=t1 - t0, train_seconds=t2 - t1)
    for name in ("val", "test"):
        if len(parts[name]):
            t = time.perf_counter()
            sorted_proba = head.predict_proba_stream(streams[name])
            proba = np.empty_like(sorted_proba)
            proba[order[name]] = sorted_proba  # back to the order the rows were given in
            out.scored[name] = (labels[parts[name]], proba)
            if name == "test":
                out.predict_seconds = time.perf_counter() - t
    return out
