"""Rows of a store as the engine's data (StoreRows), and fit_on_rows: THE way to fit a head on them (fit-head and bench).

Features stay float16 (as stored); they are either read once into one array (the only full-size array) or,
for heads that can, streamed from the store chunk by chunk every epoch, so memory is bounded by the shuffle
buffer whatever the store's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mito.core.resources import available_memory
from mito.heads.base import Head, HeadError, not_streamable
from mito.heads.engine import PARTS, FitResult, Prepared, Scored, fit_and_score, keep_order
from mito.heads.features import FeaturePipeline, feature_dims, one_hot, select_features
from mito.heads.stream import DEFAULT_BUFFER_ROWS, FeatureStream, fit_pipeline_stream
from mito.heads.view_noise import VIEW_NOISE_MODES
from mito.heads.views import read_views
from mito.store import Store

STREAM_MEMORY_SHARE = 0.5  # auto: stream when the features would take more than this share of the memory budget
BUFFER_MEMORY_SHARE = 0.25  # streamed under an explicit memory budget: the two shuffle buffers take at most this share
__all__ = ["PARTS", "FitResult", "Scored", "StoreRows", "fit_on_rows", "use_stream"]


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


@dataclass
class StoreRows:
    """Rows of a store as the engine's data (mito.heads.engine): the features ``keys`` (float16, as stored) through a
    standardise/PCA pipeline fitted on the training rows, plus metadata one-hots; ``labels``: one per store row.

    They are either read once into one array (the only full-size array) or, for heads that can, streamed from the
    store chunk by chunk every epoch, so memory is bounded by the shuffle buffer whatever the store's size.
    ``stream``: True/False, or None to stream when the features would fill ``memory_budget`` (see use_stream)."""

    store: Store
    keys: Sequence[str]
    labels: np.ndarray
    standardize: bool = False
    pca: int | None = None
    categories: Mapping[str, Sequence[str]] | None = None
    tiles: pd.DataFrame | None = None
    stream: bool | None = None
    memory_budget: int | None = None
    seed: int = 0
    buffer_rows: int = DEFAULT_BUFFER_ROWS

    def prepare(self, head: Head, parts: Mapping[str, np.ndarray]) -> Prepared:
        """The head's inputs for each part, in memory or as FeatureStreams."""
        keys, cats = list(self.keys), dict(self.categories or {})
        tiles = self.tiles if self.tiles is not None or not cats else self.store.tiles
        width = sum(feature_dims(self.store, keys))
        feature_bytes = sum(len(r) for r in parts.values()) * width * np.dtype(np.float16).itemsize
        on_views = getattr(head, "noise_mode", None) in VIEW_NOISE_MODES
        if on_views and self.stream:
            raise HeadError(f"noise_mode {head.noise_mode} trains from memory: use --no-stream")
        streamed = False if on_views else use_stream(self.stream, head, feature_bytes, self.memory_budget)
        pipe = FeaturePipeline(standardize=self.standardize, pca=self.pca)
        labels = np.asarray(self.labels)
        if not streamed:
            return _in_memory(self.store, keys, parts, labels, on_views, tiles, cats, pipe, self.seed)
        buffer_rows = self.buffer_rows
        if self.memory_budget is not None:  # two float16 shuffle buffers within their share of the budget
            row_bytes = 2 * 2 * max(1, width + sum(len(c) for c in cats.values()))
            buffer_rows = max(1, min(buffer_rows, int(BUFFER_MEMORY_SHARE * self.memory_budget) // row_bytes))
        return _streamed(self.store, keys, parts, labels, tiles, cats, pipe, self.seed, buffer_rows)


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
    early-stopping on ``parts['val']``, and score ``parts['val']`` and ``parts['test']``: mito.heads.engine.fit_and_score
    on StoreRows (the options are its fields).

    ``parts`` hold row indices of the store (distinct, any order); ``labels`` has one label per store row.
    """
    data = StoreRows(store, keys, labels, standardize, pca, categories, tiles, stream, memory_budget, seed, buffer_rows)
    return fit_and_score(head, data, parts)


def _in_memory(
    store: Store,
    keys: list[str],
    parts: Mapping[str, np.ndarray],
    labels: np.ndarray,
    on_views: bool,
    tiles: pd.DataFrame | None,
    cats: dict[str, Sequence[str]],
    pipe: FeaturePipeline,
    seed: int,
) -> Prepared:
    """All chosen features in one float16 array (the only full-size array), through the pipeline fitted on train."""
    rows = np.concatenate([parts[name] for name in PARTS])
    X = select_features(store, keys, rows, categories={}, dtype=np.float16)
    y = labels[rows]
    n_tr, n_va = len(parts["train"]), len(parts["val"])
    t0 = time.perf_counter()
    pipe.fit(X[:n_tr], seed=seed)
    X = _through(pipe, X)
    if cats:
        X = np.concatenate([X, one_hot(tiles, rows, cats).astype(X.dtype)], axis=1)
    seconds = time.perf_counter() - t0
    X_tr, X_va, X_te = X[:n_tr], X[n_tr : n_tr + n_va], X[n_tr + n_va :]
    y_tr, y_va, y_te = y[:n_tr], y[n_tr : n_tr + n_va], y[n_tr + n_va :]
    views = None
    if on_views:  # the training rows' views, through the same pipeline
        views = np.stack([_through(pipe, v) for v in read_views(store, keys, parts["train"])])
        if cats:
            extra = one_hot(tiles, parts["train"], cats).astype(views.dtype)
            views = np.concatenate([views, np.broadcast_to(extra, (len(views), *extra.shape))], axis=2)
    score = {name: (Xs, ys, keep_order) for name, Xs, ys in (("val", X_va, y_va), ("test", X_te, y_te)) if len(ys)}
    eval_set = (X_va, y_va) if n_va else None
    return Prepared(X_tr, y_tr, eval_set, views, score, pipe, X.shape[1], seconds)


def _through(pipe: FeaturePipeline, X: np.ndarray) -> np.ndarray:
    """X through the fitted pipeline, in place unless PCA changes its width."""
    return pipe.transform(X) if pipe.pca else pipe.transform(X, out=X)


def _streamed(
    store: Store,
    keys: list[str],
    parts: Mapping[str, np.ndarray],
    labels: np.ndarray,
    tiles: pd.DataFrame | None,
    cats: dict[str, Sequence[str]],
    pipe: FeaturePipeline,
    seed: int,
    buffer_rows: int,
) -> Prepared:
    """FeatureStreams of each part, read chunk by chunk: memory bounded by the shuffle buffer."""
    order = {name: np.argsort(parts[name], kind="stable") for name in PARTS}

    def stream(name: str, p: FeaturePipeline | None) -> FeatureStream:
        r = parts[name][order[name]]  # a stream reads its rows in store order
        return FeatureStream(store, keys, r, labels[r], tiles, cats, p, buffer_rows)

    def restore(name: str) -> Callable[[np.ndarray], np.ndarray]:
        def back(sorted_proba: np.ndarray) -> np.ndarray:
            proba = np.empty_like(sorted_proba)
            proba[order[name]] = sorted_proba  # back to the order the rows were given in
            return proba

        return back

    t0 = time.perf_counter()
    if pipe.active:
        fit_pipeline_stream(pipe, stream("train", None), seed=seed)
    streams = {name: stream(name, pipe) for name in PARTS}
    seconds = time.perf_counter() - t0
    score = {name: (streams[name], labels[parts[name]], restore(name)) for name in ("val", "test") if len(parts[name])}
    eval_set = streams["val"] if len(parts["val"]) else None
    return Prepared(streams["train"], None, eval_set, None, score, pipe, streams["train"].d, seconds, streamed=True)
