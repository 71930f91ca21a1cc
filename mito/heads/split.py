"""The one splitter: which rows train, early-stop and test, for fit-head, bench (kfold, split and shift rows), ensembles,
slide-level heads and LoRA runs.

One rule throughout: a group (slide) never spans two sides; parts are stratified by label (scikit-learn's
StratifiedGroupKFold, shuffled with the seed); an early-stopping part never holds a class its training part lacks.
``val_fraction`` is the share of the rows left for training (after the test rows) that early stopping holds out. So
fit-head with ``test_fraction = 1/K`` carves exactly fold 0 of a K-fold ``kfold`` bench with the same seed and
``val_fraction``, and on a published split fit-head with ``val_fraction = 1/K`` carves fold 0 of a K-fold ``split``
bench; the defaults (K = 5, fractions 0.2) make the default fit-head the default bench's fold 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mito.core.io import atomic_write
from mito.core.tasks import group_ids
from mito.heads.base import HeadError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
AUTO = "auto"  # split_column value: the published split column when the store has one, else a random grouped split
PUBLISHED_SPLIT = "split"  # the column name mito extract gives a published split (e.g. AMi-Br's train/test)
VAL_FRACTION = 0.2  # share of the training rows held out for early stopping (fit-head, bench kfold, --test-group)
TEST_FRACTION = 0.2  # fit-head's test share without a split column: fold 0 of a 5-fold bench


class SplitError(HeadError):
    """A split that cannot be made (too few slides or classes, a bad split column): one line for the user."""


@dataclass(frozen=True)
class Fold:
    """Row indices (into the tile table) to train on, to early-stop on, and to score."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


# ---------------------------------------------------------------- split columns


def _normalized(values: pd.Series) -> pd.Series:
    return values.astype(object).map(lambda v: "" if v is None or v != v else str(v).strip().lower())


def split_sides(tiles: pd.DataFrame, column: str) -> np.ndarray:
    """``train``/``val``/``test`` per row from a split column (val also as valid/validation, any case; '' = none)."""
    if column not in tiles:
        raise SplitError(f"no split column {column!r} in the tile table (it has: {', '.join(map(str, tiles.columns))})")
    norm = _normalized(tiles[column])
    bad = sorted(set(norm[(norm != "") & ~norm.isin(list(SPLIT_NAMES))]))
    if bad:
        raise SplitError(f"split column {column!r} holds {', '.join(map(repr, bad[:5]))}; expected train, val (or valid) and test")
    return norm.map(lambda v: SPLIT_NAMES.get(v, "")).to_numpy(dtype=object).astype(str)


def published_split(tiles: pd.DataFrame, labels: pd.Series | np.ndarray, usable: np.ndarray, column: str = PUBLISHED_SPLIT) -> bool:
    """True when ``column`` is a published split: only train/val/test values, and two classes or more among the usable
    labelled rows of its train side and of its test side (fit-head's ``auto`` and bench's ``auto`` both ask this)."""
    if column not in tiles:
        return False
    try:
        side = split_sides(tiles, column)
    except SplitError:
        return False
    y = np.asarray(labels, dtype=object)
    ok = np.asarray(usable, bool) & np.array([v is not None and v == v for v in y], bool)
    return all(len({str(v) for v in y[ok & (side == s)]}) >= 2 for s in ("train", "test"))


# ---------------------------------------------------------------- grouped, stratified parts


def n_parts(y: np.ndarray, groups: np.ndarray, fraction: float) -> int:
    """How many parts a carve of ``fraction`` cuts the rows into: round(1/fraction), at most the groups and the largest
    class's rows (scikit-learn refuses more); fewer than 2 is a SplitError."""
    if len(np.unique(groups)) < 2:
        raise SplitError("cannot split: all rows come from one slide/group; give a split column or more slides")
    largest = int(np.unique(y, return_counts=True)[1].max())
    k = int(min(max(2, round(1 / fraction)), len(np.unique(groups)), largest))
    if k < 2:
        raise SplitError("cannot split: every class has a single labelled row; give a split column or more data")
    return k


def grouped_parts(y: np.ndarray, groups: np.ndarray, k: int, seed: int, every_class: bool = False) -> list[np.ndarray]:
    """``k`` label-stratified parts (positions into y) that never split a group; ``every_class``: refuse unless every
    class is on at least ``k`` groups (the bench's rule, so every fold trains and tests on every class)."""
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise SplitError(f"{k} folds need at least {k} slides/groups, the labelled rows have {n_groups}")
    if every_class:
        for c in np.unique(y):
            on = len(np.unique(groups[y == c]))
            if on < k:
                raise SplitError(f"{k} folds need every class on at least {k} slides/groups; class '{c}' is on {on} (use fewer --folds)")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [held for _, held in sgkf.split(np.zeros(len(y)), y, groups)]


def keep_classes(y: np.ndarray, groups: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions, sorted, where every class of the early-stopping part is also trained on: the groups of a
    class whose every group landed in ``val`` go back to training (a head cannot early-stop on a class it never saw)."""
    lost = np.setdiff1d(np.unique(y[val]), np.unique(y[train]))
    if len(lost):
        back = np.isin(groups[val], np.unique(groups[val][np.isin(y[val], lost)]))
        train, val = np.concatenate([train, val[back]]), val[~back]
    return np.sort(train), np.sort(val)


def carve(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int, strict: bool = True) -> np.ndarray:
    """Boolean mask of about ``fraction`` of the rows for early stopping: whole groups, stratified by y, never a class the
    other rows lack (part 0 of ``n_parts`` grouped parts). ``strict=False``: no rows instead of a SplitError."""
    try:
        k = n_parts(y, groups, fraction)
    except SplitError:
        if strict:
            raise
        return np.zeros(len(y), bool)
    held = grouped_parts(y, groups, k, seed)[0]
    _, val = keep_classes(y, groups, np.setdiff1d(np.arange(len(y)), held), held)
    mask = np.zeros(len(y), bool)
    mask[val] = True
    return mask


# ---------------------------------------------------------------- folds


def kfold_fold(
    rows: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    parts: list[np.ndarray],
    k: int,
    val_fraction: float,
    seed: int,
    strict: bool = False,
) -> Fold:
    """Fold ``k`` of a grouped k-fold over ``rows`` (y, groups and ``parts`` by position in rows): test on part k,
    early-stop on ``val_fraction`` of the rest (carved with seed + 1 + k), train on the others."""
    test = np.zeros(len(rows), bool)
    test[parts[k]] = True
    rest = np.flatnonzero(~test)
    held = carve(y[rest], groups[rest], val_fraction, seed + 1 + k, strict)
    return Fold(k, rows[rest[~held]], rows[rest[held]], rows[test])


def split_fold(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, parts: list[np.ndarray], k: int, test: np.ndarray) -> Fold:
    """Fold ``k`` of the ``split`` protocol over the training ``rows`` (y, groups and ``parts`` by position in rows):
    early-stop on part k, train on the others, score ``test`` (row indices)."""
    held = np.zeros(len(rows), bool)
    held[parts[k]] = True
    train, val = keep_classes(y, groups, np.flatnonzero(~held), np.flatnonzero(held))
    return Fold(k, rows[train], rows[val], np.asarray(test))


# ---------------------------------------------------------------- leave one group out


def group_values(tiles: pd.DataFrame, column: str, what: str = "column") -> np.ndarray:
    """A grouping column (e.g. ``dataset``) as text, '' where missing; an unknown column is a SplitError."""
    if column not in tiles:
        raise SplitError(f"no {what} {column!r} in the tile table (it has: {', '.join(map(str, tiles.columns))})")
    return tiles[column].astype(object).map(lambda v: "" if v is None or v != v else str(v).strip()).to_numpy(dtype=object)


def leave_group_out(values: np.ndarray, usable: np.ndarray, held: str, train_values: Sequence[str] | None = None) -> np.ndarray:
    """``test`` for the usable rows whose value is ``held``, ``train`` for those of ``train_values`` (default: every other
    value), '' for the rest (rows without a value included)."""
    test = usable & (values == held)
    train = usable & (np.isin(values, list(train_values)) if train_values else (values != "") & (values != held))
    return np.where(test, "test", np.where(train, "train", ""))


def parse_test_group(value: str) -> tuple[str, str]:
    """``COL=VALUE`` -> (column, value); anything else is a one-line SplitError."""
    col, sep, val = value.partition("=")
    if not sep or not col.strip() or not val.strip():
        raise SplitError(f"--test-group takes COLUMN=VALUE (e.g. dataset=TUPAC16), got {value!r}")
    return col.strip(), val.strip()


# ---------------------------------------------------------------- fit-head's split


def _row_groups(tiles: pd.DataFrame, group_column: str | None) -> np.ndarray:
    if group_column is None:
        return np.arange(len(tiles)).astype(str)
    if group_column not in tiles:
        raise SplitError(
            f"no group column {group_column!r} in the tile table (it has: {', '.join(map(str, tiles.columns))}); "
            "pass --group-column COL, or --group-column none to split tiles independently"
        )
    return group_ids(tiles, group_column)


def make_split(
    tiles: pd.DataFrame,
    labels: pd.Series,
    usable: np.ndarray,
    split_column: str | None = None,
    group_column: str | None = "group",
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> np.ndarray:
    """``train``/``val``/``test`` per tile ('' for tiles not used).

    With ``split_column`` (``auto``: the published ``split`` column when :func:`published_split` says so): its
    train/val/test values are used; when it has no val rows, val is fold 0's early-stopping part of a
    ``round(1/val_fraction)``-fold ``split`` bench. Without it: test is part 0 of ``round(1/test_fraction)`` grouped
    parts and val ``val_fraction`` of the rest, i.e. fold 0 of a k-fold bench. ``group_column=None`` splits tiles
    independently (only safe when each slide gives one tile).
    """
    if not 0 < val_fraction < 1:
        raise SplitError(f"val_fraction ({val_fraction}) must be in (0, 1): the share of the training rows held out for early stopping")
    if not 0 <= test_fraction < 1:
        raise SplitError(f"test_fraction ({test_fraction}) must be in [0, 1)")
    groups = _row_groups(tiles, group_column)
    usable = np.asarray(usable, bool)
    y = labels.astype(str).to_numpy()
    out = np.full(len(tiles), "", dtype=object)
    if split_column == AUTO:
        split_column = PUBLISHED_SPLIT if published_split(tiles, labels, usable) else None
    if split_column is not None:
        out[:] = split_sides(tiles, split_column)
        out[~usable] = ""
        if not (out == "train").any():
            raise SplitError(f"split column {split_column!r} marks no labelled tile as train")
        if not (out == "val").any():
            tr = np.flatnonzero(out == "train")
            parts = grouped_parts(y[tr], groups[tr], n_parts(y[tr], groups[tr], val_fraction), seed)
            out[split_fold(tr, y[tr], groups[tr], parts, 0, np.flatnonzero(out == "test")).val] = "val"
        return out.astype(str)
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        raise SplitError("no labelled tiles to train on")
    if test_fraction > 0:
        parts = grouped_parts(y[idx], groups[idx], n_parts(y[idx], groups[idx], test_fraction), seed)
        fold = kfold_fold(idx, y[idx], groups[idx], parts, 0, val_fraction, seed, strict=True)
    else:
        held = carve(y[idx], groups[idx], val_fraction, seed + 1)
        fold = Fold(0, idx[~held], idx[held], idx[:0])
    out[fold.train], out[fold.val], out[fold.test] = "train", "val", "test"
    return out.astype(str)


def group_split(
    tiles: pd.DataFrame,
    labels: pd.Series,
    usable: np.ndarray,
    test_group: str,
    train_groups: list[str] | None = None,
    group_column: str | None = "group",
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
) -> np.ndarray:
    """``train``/``val``/``test`` per tile for ``--test-group COL=VALUE``: test = the tiles of VALUE; train = tiles of
    ``train_groups`` (default: every other value of COL), val carved from them as fold 0 of a ``bench --shift-column COL``
    row with ``round(1/val_fraction)`` folds; tiles of neither side (or missing COL) are ''."""
    column, value = parse_test_group(test_group)
    values = group_values(tiles, column)
    usable = np.asarray(usable, bool)
    present = sorted(set(values[usable]) - {""})
    missing = [v for v in [value, *(train_groups or [])] if v not in present]
    if missing:
        raise SplitError(f"{column}={missing[0]!r} has no labelled tile (values: {', '.join(present)})")
    if value in (train_groups or []):
        raise SplitError(f"{column}={value!r} cannot be both the test group and a training group")
    side = leave_group_out(values, usable, value, train_groups)
    y = labels.astype(str).to_numpy()
    if len(set(y[side == "test"])) < 2:
        raise SplitError(f"the test group {column}={value} has only class {y[side == 'test'][0]!r}: its scores need two classes")
    if not (side == "train").any():
        raise SplitError(f"no labelled tile has another value of {column} than {value!r} to train on")
    if len(set(y[side == "train"])) < 2:
        raise SplitError(f"the training groups of {column} have only class {y[side == 'train'][0]!r}")
    groups = _row_groups(tiles, group_column)
    tr = np.flatnonzero(side == "train")
    parts = grouped_parts(y[tr], groups[tr], n_parts(y[tr], groups[tr], val_fraction), seed)
    out = side.astype(object)
    out[split_fold(tr, y[tr], groups[tr], parts, 0, np.flatnonzero(side == "test")).val] = "val"
    return out.astype(str)


def group_split_description(test_group: str, train_groups: list[str] | None, group_column: str | None, val_fraction: float) -> str:
    """How a --test-group split was made, in words."""
    column, value = parse_test_group(test_group)
    on = f"{column} in {{{', '.join(train_groups)}}}" if train_groups else f"{column} other than {value}"
    by = f"by {group_column!r}" if group_column else "tile by tile"
    return f"domain shift: test on {column} = {value}; train on {on} (val {val_fraction:g} carved {by})"


# ---------------------------------------------------------------- the fitted split, recorded with the model

SPLIT_FILE = "split.csv.gz"  # in a model directory: the identity and side (train/val/test) of every row it was fitted on
UNSEEN, UNKNOWN = "unseen", "unknown"  # a predicted row the model never saw; a model that records no split


def identity_columns(table: pd.DataFrame) -> list[str]:
    """The columns that name a row across stores: its tile id and, when the table has it, the file it was read from."""
    extra = next((c for c in ("path", "slide_path") if c in table), None)
    return ["tile_id", *([extra] if extra else [])]


def save_split(folder: str | os.PathLike, ids: pd.DataFrame, side: np.ndarray) -> Path:
    """Write the rows a model was fitted on (``ids``: identity columns; ``side``: train/val/test, '' = not used)."""

    used = np.asarray(side) != ""
    table = ids.loc[used].astype(object).where(ids.loc[used].notna(), "").astype(str).reset_index(drop=True)
    table["split"] = np.asarray(side)[used]
    return atomic_write(Path(folder) / SPLIT_FILE, lambda p: table.to_csv(p, index=False, compression="gzip"), ".csv.gz")


def recorded_split(folder: str | os.PathLike) -> pd.DataFrame | None:
    """The split a model directory records (None for a model made before mito recorded it)."""
    path = Path(folder) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, compression="gzip")
    except (OSError, ValueError, pd.errors.ParserError, EOFError) as e:
        raise HeadError(f"{path} cannot be read ({type(e).__name__}); refit the model") from None
    if "split" not in table or len(table.columns) < 2:
        raise HeadError(f"{path} is not a split record (needs identity columns and split); refit the model")
    return table


def side_of(ids: pd.DataFrame, recorded: pd.DataFrame | None) -> np.ndarray:
    """Per row of ``ids``: its side in the recorded split, 'unseen' when the model never saw it, 'unknown' without a record."""
    if recorded is None:
        return np.full(len(ids), UNKNOWN, dtype=object)
    on = [c for c in recorded.columns if c != "split" and c in ids]
    if not on:
        return np.full(len(ids), UNSEEN, dtype=object)
    left = ids[on].astype(object).where(ids[on].notna(), "").astype(str).reset_index(drop=True)
    merged = left.merge(recorded.drop_duplicates(on)[[*on, "split"]], on=on, how="left")
    return merged["split"].fillna(UNSEEN).to_numpy(dtype=object)
