"""Cross-validation plans grouped by slide: the same folds for every row of a leaderboard (the splitting itself is
mito.heads.split, which fit-head uses too)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

from mito.bench.errors import BenchError
from mito.core.tasks import group_ids, one_group_per_tile, per_tile_warning
from mito.heads.split import (
    PUBLISHED_SPLIT,
    VAL_FRACTION,
    Fold,
    SplitError,
    grouped_parts,
    kfold_fold,
    published_split,
    split_fold,
    split_sides,
)

CVMode = Literal["auto", "kfold", "split"]
CV_MODES: tuple[str, ...] = get_args(CVMode)

__all__ = ["CVMode", "CVPlan", "CV_MODES", "Fold", "fold_fingerprint", "make_folds"]


@dataclass(frozen=True)
class CVPlan:
    """All folds of one task, how they were made, and a fingerprint that changes when any assignment does."""

    mode: str
    folds: list[Fold]
    fingerprint: str
    description: str
    warning: str = ""  # e.g. the folds split tile by tile because the tiles carry no slide information


def make_folds(
    tiles: pd.DataFrame,
    y: pd.Series,
    n_folds: int = 5,
    cv: str = "auto",
    seed: int = 0,
    exclude: np.ndarray | None = None,
    val_fraction: float = VAL_FRACTION,
    unit: str = "tile",
) -> CVPlan:
    """Stratified group k-fold by slide, or (``split``) k models trained on the train split and scored on its test split.

    ``y`` is aligned with ``tiles`` (None = unlabelled); ``exclude`` masks rows to drop (e.g. unreadable tiles).
    In ``kfold`` mode fold k tests on part k and early-stops on ``val_fraction`` of the rest (whole slides); in
    ``split`` mode (the published ``split`` column, see mito.heads.split.published_split; its val rows join the train
    rows) fold k early-stops on part k of the train split, trains on the others and tests on the test split.
    Fold 0 is what fit-head carves with the same seed (``test_fraction = 1/n_folds``, or ``val_fraction = 1/n_folds``
    on a published split). ``unit``: what a row is; for tiles, folds that split one group per row are described as
    tile by tile and warned of.
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
    split_ok = published_split(tiles, y, labelled)
    if cv == "split" and not split_ok:
        raise BenchError("cv=split needs labelled tiles of two classes in both split=train and split=test")
    mode = "split" if (cv == "split" or (cv == "auto" and split_ok)) else "kfold"
    groups = group_ids(tiles, "group")
    labels = y.astype(object).to_numpy()
    try:
        side = split_sides(tiles, PUBLISHED_SPLIT) if mode == "split" else None
        folds, gr = _folds(labelled, labels, groups, side, n_folds, seed, val_fraction)
    except SplitError as e:
        raise BenchError(str(e)) from None
    per_tile = unit == "tile" and one_group_per_tile(gr)
    desc = _describe(mode, n_folds, per_tile, val_fraction)
    return CVPlan(mode, folds, fold_fingerprint(tiles, folds), desc, per_tile_warning("group", None) if per_tile else "")


def _folds(
    labelled: np.ndarray, labels: np.ndarray, groups: np.ndarray, side: np.ndarray | None, n_folds: int, seed: int, val_fraction: float
) -> tuple[list[Fold], np.ndarray]:
    """The folds (``side``: the published split of each row, else k-fold) and the groups of the rows they split."""
    if side is not None:
        rows = np.flatnonzero(labelled & np.isin(side, ["train", "val"]))
        test = np.flatnonzero(labelled & (side == "test"))
    else:
        rows = np.flatnonzero(labelled)
    yr, gr = labels[rows].astype(str), groups[rows]
    parts = grouped_parts(yr, gr, n_folds, seed, every_class=True)
    if side is not None:
        return [split_fold(rows, yr, gr, parts, k, test) for k in range(n_folds)], gr
    return [kfold_fold(rows, yr, gr, parts, k, val_fraction, seed) for k in range(n_folds)], gr


def _describe(mode: str, n_folds: int, per_tile: bool, val_fraction: float) -> str:
    """How the folds were made, in one line."""
    if mode == "split":
        by = "part drawn tile by tile (every tile is its own group)" if per_tile else "slide-grouped part"
        return f"{n_folds} models, each trained on the train split minus one {by} (its early-stopping set), all scored on the test split"
    if per_tile:
        return f"stratified {n_folds}-fold tile by tile (every tile is its own group); {val_fraction:.0%} of each training part held out for early stopping"
    return f"stratified group {n_folds}-fold by slide; {val_fraction:.0%} of each training part (whole slides) held out for early stopping"


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
    return (
        f"too small to rank: {where} holds only {n} {unit} of class {c!r} (under {MIN_TEST_PER_CLASS} per class per fold, "
        f"one {unit[:-1]} moves that class's recall by over {100 / max(n, 1):.0f} points): read its ranks and 'best' as noise"
    )
