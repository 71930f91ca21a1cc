"""Forward selection of store variants (fit-head --feature-search), decided on inner grouped folds of the training rows.

The rows it fits and scores on are the non-test rows of fit-head's split only (train + val): grouped k-fold by slide
(mito.heads.split), each fold scoring the held-out part with a head early-stopped on a part carved from the rest. It
starts from the empty set and adds the variant that most raises the mean inner-fold score, until no candidate raises it
by more than ``margin`` or the set has ``max_size`` variants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mito.core.metrics import metric_score
from mito.heads.base import Head
from mito.heads.engine import fit_and_score
from mito.heads.fit import StoreRows
from mito.heads.split import Fold, grouped_parts, kfold_fold
from mito.store import Store

SEARCH_METRIC = "balanced_accuracy"


@dataclass
class SearchResult:
    """The chosen variants and, per step, every candidate's mean inner-fold score (the one added: ``added``)."""

    selected: list[str]
    path: list[dict[str, Any]] = field(default_factory=list)
    folds: int = 0
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the store rows the search fitted and scored on
    metric: str = SEARCH_METRIC

    def report(self) -> dict[str, Any]:
        """What metrics.json and config.json record."""
        return {"selected": self.selected, "metric": self.metric, "folds": self.folds, "n_rows": len(self.rows), "path": self.path}


def inner_folds(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int, val_fraction: float, seed: int) -> list[Fold]:
    """``k`` grouped folds over ``rows`` (store rows): score part i, early-stop on a slice of the rest, train on the others."""
    y, g = np.asarray(labels)[rows].astype(str), np.asarray(groups)[rows]
    parts = grouped_parts(y, g, k, seed)
    return [kfold_fold(rows, y, g, parts, i, val_fraction, seed) for i in range(k)]


def fold_score(
    store: Store,
    keys: Sequence[str],
    labels: np.ndarray,
    folds: Sequence[Fold],
    make: Callable[[], Head],
    data_kw: dict[str, Any],
    on_fit: Callable[[], None] = lambda: None,
) -> float:
    """Mean over ``folds`` of the balanced accuracy on each fold's scored rows of a fresh head on ``keys``."""
    data = StoreRows(store, list(keys), labels, **data_kw)
    scores = []
    for f in folds:
        fitted = fit_and_score(make(), data, {"train": f.train, "val": f.val, "test": f.test})
        y, proba = fitted.scored["test"]
        index = {c: i for i, c in enumerate(fitted.head.classes_.tolist())}
        yi = np.array([index[v] for v in np.asarray(y).tolist()], dtype=np.int64)
        scores.append(metric_score(SEARCH_METRIC, yi, proba))
        on_fit()
    return float(np.nanmean(scores))


def max_fits(n_candidates: int, folds: int, max_size: int) -> int:
    """The most heads a search fits: every remaining candidate on every fold at each of up to ``max_size`` steps."""
    return folds * sum(n_candidates - i for i in range(min(max_size, n_candidates)))


def forward_select(
    score: Callable[[list[str]], float], candidates: Sequence[str], max_size: int, margin: float
) -> tuple[list[str], list[dict[str, Any]]]:
    """Greedy forward selection: add the candidate whose set scores best while it beats the current set by > ``margin``."""
    chosen: list[str] = []
    best = float("-inf")
    path: list[dict[str, Any]] = []
    while len(chosen) < max_size:
        left = [c for c in candidates if c not in chosen]
        if not left:
            break
        scores = {c: score([*chosen, c]) for c in left}
        top = max(left, key=lambda c: scores[c])  # first among equals: candidate order breaks ties
        gain = scores[top] - best
        added = top if not chosen or gain > margin else None
        path.append({"step": len(chosen) + 1, "scores": {c: round(v, 4) for c, v in scores.items()}, "added": added})
        if added is None:
            break
        chosen.append(top)
        best = scores[top]
    return chosen, path


def feature_search(
    store: Store,
    candidates: Sequence[str],
    labels: np.ndarray,
    rows: np.ndarray,
    groups: np.ndarray,
    make: Callable[[], Head],
    *,
    folds: int = 3,
    max_size: int = 4,
    margin: float = 0.005,
    val_fraction: float = 0.2,
    seed: int = 0,
    data_kw: dict[str, Any] | None = None,
    on_fit: Callable[[], None] = lambda: None,
) -> SearchResult:
    """Forward selection of ``candidates`` on ``folds`` inner grouped folds of ``rows`` (never give it test rows);
    ``on_fit`` is called after every head fitted (at most :func:`max_fits`)."""
    split = inner_folds(np.asarray(rows, np.int64), labels, groups, folds, val_fraction, seed)
    kw = {"seed": seed, **(data_kw or {})}
    selected, path = forward_select(lambda keys: fold_score(store, keys, labels, split, make, kw, on_fit), candidates, max_size, margin)
    used = np.unique(np.concatenate([np.concatenate([f.train, f.val, f.test]) for f in split]))
    return SearchResult(selected, path, folds, used)
