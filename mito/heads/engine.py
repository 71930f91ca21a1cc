"""The one engine: ``fit_and_score(model, data, split)`` fits any model (mito.heads.model.Model) on the train part of
its data, early-stops on the val part and scores val and test.

The data says how its parts become a model's X: rows of a store (mito.heads.fit.StoreRows: float16 in memory or
streamed chunk by chunk, through the standardise/PCA pipeline), bags of store rows (mito.heads.bags.BagSet), or
images through a backbone (mito.bench.finetune's fold data). fit-head, the slide-level fit, bench and the fine-tuning
folds are this one path with different data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from mito.heads.errors import HeadError
from mito.heads.features import FeaturePipeline
from mito.heads.model import Callback

PARTS = ("train", "val", "test")
Scored = dict[str, tuple[np.ndarray, np.ndarray]]
H = TypeVar("H")


@dataclass
class FitResult(Generic[H]):
    """A fitted model with its pipeline, and its probabilities on the val/test rows (in the order the rows were given)."""

    head: H  # the fitted model (a Head, an Ensemble, a MILHead, ...)
    pipeline: FeaturePipeline  # the standardise/PCA pipeline the model's inputs went through (identity: none)
    n_features_in: int
    scored: Scored = field(default_factory=dict)
    pipeline_seconds: float = 0.0
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    streamed: bool = False


def keep_order(proba: np.ndarray) -> np.ndarray:
    """The probabilities as predicted (the scored rows were read in the order they were given)."""
    return proba


@dataclass
class Prepared:
    """What a data object hands the engine: the model's training input and labels, the eval_set and views for fit,
    and per scored part (val, test) the model's input, its labels and how to put predictions back in the given order."""

    train: Any
    y: Any
    eval_set: Any = None
    views: np.ndarray | None = None
    score: Mapping[str, tuple[Any, Any, Callable[[np.ndarray], np.ndarray]]] = field(default_factory=dict)
    pipeline: FeaturePipeline = field(default_factory=FeaturePipeline)
    n_features_in: int = 0
    pipeline_seconds: float = 0.0
    streamed: bool = False


class Data(Protocol):
    """Data the engine fits on: it turns a split (part name -> indices) into the model's inputs."""

    def prepare(self, model: Any, split: Mapping[str, np.ndarray]) -> Prepared: ...


def split_parts(split: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Train/val/test indices (missing parts empty); no training rows is a HeadError."""
    parts = {name: np.asarray(split.get(name, np.zeros(0, np.int64)), dtype=np.int64) for name in PARTS}
    if len(parts["train"]) == 0:
        raise HeadError("the split left no training rows")
    return parts


def fit_and_score(model: H, data: Data, split: Mapping[str, Any], *, callbacks: Sequence[Callback] = ()) -> FitResult[H]:
    """Fit ``model`` on ``split['train']`` of ``data`` (early-stopping on ``split['val']``) and score the val and test
    parts; ``callbacks`` are told after every epoch."""
    prep = data.prepare(model, split_parts(split))
    t1 = time.perf_counter()
    model.fit(prep.train, prep.y, eval_set=prep.eval_set, views=prep.views, callbacks=callbacks)  # type: ignore[attr-defined]
    t2 = time.perf_counter()
    out = FitResult(model, prep.pipeline, prep.n_features_in, pipeline_seconds=prep.pipeline_seconds, train_seconds=t2 - t1)
    out.streamed = prep.streamed
    for name, (X, y, restore) in prep.score.items():
        t = time.perf_counter()
        out.scored[name] = (y, restore(model.predict_proba(X)))  # type: ignore[attr-defined]
        if name == "test":
            out.predict_seconds = time.perf_counter() - t
    return out
