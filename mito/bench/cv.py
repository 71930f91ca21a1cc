"""Cross-validation folds grouped by slide: the same folds for every row of a leaderboard."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mito.bench.errors import BenchError
from mito.core.tasks import group_ids, one_group_per_tile, per_tile_warning

CVMode = Literal["auto", "kfold", "split"]
CV_MODES: tuple[str, ...] = get_args(CVMode)


@dataclass(frozen=True)
class Fold:
    """Row indices (into the tile table) to train on, to early-stop on, and to score."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class CVPlan:
    """All folds of one task, how they were made, and a fingerprint that changes when any assignment does."""

    mode: str
    folds: list[Fold]
    fingerprint: str
    description: str
    warning: str = ""  # e.g. the folds split tile by tile because the tiles carry no slide information


def has_split(tiles: pd.DataFrame, y: pd.Series) -> bool:
    """True when labelled tiles exist on both sides of a train/test ``split`` column."""
    if "split" not in tiles:
        return False
    side = tiles["split"].astype(str)
    return all(y[y.notna() & (side == s)].nunique() >= 2 for s in ("train", "test"))


def _group_folds(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Split ``rows`` into ``n`` parts, stratified by label, never splitting a group."""
    n_groups = len(np.unique(groups))
    if n_groups < n:
        raise BenchError(f"{n} folds need at least {n} slides/groups, the labelled tiles have {n_groups}")
    for c in np.unique(y):
        k = len(np.unique(groups[y == c]))
        if k < n:
            raise BenchError(f"{n} folds need every class on at least {n} slides/groups; class '{c}' is on {k} (use fewer --folds)")
    sgkf = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [rows[te] for _, te in sgkf.split(rows, y, groups)]


def _carve_val(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Set about ``fraction`` of ``rows`` aside (whole groups) for early stopping; returns (train, val)."""
    largest = int(np.unique(y, return_counts=True)[1].max()) if len(y) else 0
    n = min(max(2, round(1 / fraction)), len(np.unique(groups)), largest)  # sklearn needs n <= some class's size
    if n < 2:
        return rows, rows[:0]
    sgkf = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    tr, va = next(iter(sgkf.split(rows, y, groups)))
    return _keep_classes(rows, y, groups, tr, va)


def _keep_classes(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, tr: np.ndarray, va: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) rows where every class of the early-stopping part is also trained on: the groups of a class whose
    every group landed in ``va`` go back to training (a head cannot early-stop on a class it never saw)."""
    lost = np.setdiff1d(np.unique(y[va]), np.unique(y[tr]))
    if len(lost):
        back = np.isin(groups[va], np.unique(groups[va][np.isin(y[va], lost)]))
        tr, va = np.concatenate([tr, va[back]]), va[~back]
    return rows[np.sort(tr)], rows[np.sort(va)]


def make_folds(
    tiles: pd.DataFrame,
    y: pd.Series,
    n_folds: int = 5,
    cv: str = "auto",
    seed: int = 0,
    exclude: np.ndarray | None = None,
    val_fraction: float = 0.15,
    unit: str = "tile",
) -> CVPlan:
    """Stratified group k-fold by slide, or (``split``) k models trained on the train split and scored on its test split.

    ``y`` is aligned with ``tiles`` (None = unlabelled); ``exclude`` masks rows to drop (e.g. unreadable tiles).
    In ``kfold`` mode each fold tests on one part and early-stops on a slice of whole slides of the rest; in
    ``split`` mode fold k early-stops on part k of the train split, trains on the others and tests on the test split.
    ``unit``: what a row is; for tiles, folds that split one group per row are described as tile by tile and warned of.
    """
    if cv not in CV_MODES:
        raise BenchError(f"cv must be one of {', '.join(CV_MODES)}, not {cv!r}")
    if n_folds < 2:
        raise BenchError("need at least 2 folds")
    if "group" not in tiles:
        raise BenchError("the tile table has no group column to keep slides together")
    labelled = y.notna().to_numpy().copy()
    if exclude is not None:
        labelled = labelled & ~np.asarray(exclude, bool)
    split_ok = has_split(tiles, y.where(labelled, None))
    if cv == "split" and not split_ok:
        raise BenchError("cv=split needs labelled tiles in both split=train and split=test")
    mode = "split" if (cv == "split" or (cv == "auto" and split_ok)) else "kfold"
    groups = group_ids(tiles, "group")
    labels = y.astype(object).to_numpy()
    folds: list[Fold] = []
    if mode == "split":
        side = tiles["split"].astype(str).to_numpy()
        train_rows = np.flatnonzero(labelled & (side == "train"))
        test_rows = np.flatnonzero(labelled & (side == "test"))
        yt, gt = labels[train_rows].astype(str), groups[train_rows]
        parts = _group_folds(train_rows, yt, gt, n_folds, seed)
        for k, val in enumerate(parts):
            in_val = np.isin(train_rows, val)
            train, val = _keep_classes(train_rows, yt, gt, np.flatnonzero(~in_val), np.flatnonzero(in_val))
            folds.append(Fold(k, train, val, test_rows))
        per_tile = unit == "tile" and one_group_per_tile(groups[train_rows])
        by = "part drawn tile by tile (every tile is its own group)" if per_tile else "slide-grouped part"
        desc = f"{n_folds} models, each trained on the train split minus one {by} (its early-stopping set), all scored on the test split"
    else:
        rows = np.flatnonzero(labelled)
        parts = _group_folds(rows, labels[rows].astype(str), groups[rows], n_folds, seed)
        for k, test in enumerate(parts):
            rest = np.setdiff1d(rows, test)
            train, val = _carve_val(rest, labels[rest].astype(str), groups[rest], val_fraction, seed + 1 + k)
            folds.append(Fold(k, np.sort(train), np.sort(val), np.sort(test)))
        per_tile = unit == "tile" and one_group_per_tile(groups[rows])
        desc = (f"stratified {n_folds}-fold tile by tile (every tile is its own group); {val_fraction:.0%} of each training part held out for early stopping"
                if per_tile else
                f"stratified group {n_folds}-fold by slide; {val_fraction:.0%} of each training part (whole slides) held out for early stopping")
    return CVPlan(mode, folds, fold_fingerprint(tiles, folds), desc, per_tile_warning("group", None) if per_tile else "")


def fold_fingerprint(tiles: pd.DataFrame, folds: list[Fold]) -> str:
    """sha256 over (tile id, role in every fold): equal fingerprints mean identical folds."""
    roles = np.full((len(folds), len(tiles)), "-", dtype="<U1")
    for f in folds:
        roles[f.index, f.train] = "t"
        roles[f.index, f.val] = "v"
        roles[f.index, f.test] = "e"
    ids = tiles["tile_id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")
    h = hashlib.sha256()
    for i in order:
        h.update(f"{ids[i]}\t{''.join(roles[:, i])}\n".encode())
    return h.hexdigest()


# Fewer test tiles than this of one class in one fold and the fold's scores are too coarse to rank on: that class's
# recall moves in steps of 1/n, so below 10 a single tile moves it by more than 10 points (and a two-class balanced
# accuracy by more than 5), more than the gaps a leaderboard ranks; its binomial spread at recall 0.7 is already +-0.14.
MIN_TEST_PER_CLASS = 10


def small_test_note(plan: CVPlan, y: np.ndarray, classes: list[str], unit: str = "tiles") -> str:
    """One line when some fold tests fewer than :data:`MIN_TEST_PER_CLASS` of some class (else ""): the ranks of such
    a task are mostly noise."""
    labels = np.asarray(y, dtype=object)
    worst: tuple[int, str] | None = None  # (count, class)
    for f in plan.folds:
        got = pd.Series(labels[f.test]).dropna().astype(str).value_counts()
        for c in classes:
            n = int(got.get(str(c), 0))
            if worst is None or n < worst[0]:
                worst = (n, str(c))
    if worst is None or worst[0] >= MIN_TEST_PER_CLASS:
        return ""
    n, c = worst
    where = "the test split" if plan.mode == "split" else "a test fold"
    return (f"too small to rank: {where} holds only {n} {unit} of class {c!r} (under {MIN_TEST_PER_CLASS} per class per fold, "
            f"one {unit[:-1]} moves that class's recall by over {100 / max(n, 1):.0f} points): read its ranks and 'best' as noise")
