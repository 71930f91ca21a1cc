"""Train/val/test assignment: from a split column, or stratified and grouped by slide so no slide spans two sides."""

from __future__ import annotations

import os
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


def _normalized(values: pd.Series) -> pd.Series:
    return values.astype(object).map(lambda v: "" if v is None or v != v else str(v).strip().lower())


def published_split(tiles: pd.DataFrame, usable: np.ndarray, column: str = PUBLISHED_SPLIT) -> bool:
    """True when ``column`` is a published split: only train/val/test values, with train and test among the usable tiles."""
    if column not in tiles:
        return False
    norm = _normalized(tiles[column])
    if not norm[(norm != "")].isin(list(SPLIT_NAMES)).all():
        return False
    sides = set(norm[usable].map(lambda v: SPLIT_NAMES.get(v, "")))
    return {"train", "test"} <= sides


def carve(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of about ``fraction`` of the rows, stratified by y, taking whole groups only."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise HeadError("cannot split: all rows come from one slide/group; give a split column or more slides")
    largest = int(np.unique(y, return_counts=True)[1].max())  # sklearn refuses more parts than the largest class has rows
    k = int(min(max(2, round(1 / fraction)), n_groups, largest))
    if k < 2:
        raise HeadError("cannot split: every class has a single labelled row; give a split column or more data")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    _, held = next(folds.split(np.zeros(len(y)), y, groups))
    mask = np.zeros(len(y), bool)
    mask[held] = True
    return mask


def make_split(
    tiles: pd.DataFrame,
    labels: pd.Series,
    usable: np.ndarray,
    split_column: str | None = None,
    group_column: str | None = "group",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """``train``/``val``/``test`` per tile ('' for tiles not used).

    With ``split_column``: its train/val/test values (val also as valid/validation) are used; when it has no val
    rows, val is carved from train by slide. Without it: test and val are carved from all usable rows by slide.
    ``group_column=None`` splits tiles independently (only safe when each slide gives one tile).
    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise HeadError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) and sum below 1")
    n = len(tiles)
    if group_column is not None and group_column not in tiles:
        raise HeadError(
            f"no group column {group_column!r} in the tile table (it has: {', '.join(tiles.columns)}); "
            "pass --group-column COL, or --group-column none to split tiles independently"
        )
    groups = (
        group_ids(tiles, group_column) if group_column is not None else np.arange(n).astype(str)
    )
    y = labels.astype(str).to_numpy()
    out = np.full(n, "", dtype=object)
    if split_column == AUTO:
        split_column = PUBLISHED_SPLIT if published_split(tiles, usable) else None
    if split_column is not None:
        if split_column not in tiles:
            raise HeadError(f"no split column {split_column!r} in the tile table (it has: {', '.join(tiles.columns)})")
        norm = _normalized(tiles[split_column])
        bad = sorted(set(norm[(norm != "") & ~norm.isin(list(SPLIT_NAMES))]))
        if bad:
            raise HeadError(
                f"split column {split_column!r} holds {', '.join(map(repr, bad[:5]))}; expected train, val (or valid) and test"
            )
        out[:] = norm.map(lambda v: SPLIT_NAMES.get(v, "")).to_numpy()
        out[~usable] = ""
        if not (out == "train").any():
            raise HeadError(f"split column {split_column!r} marks no labelled tile as train")
        if not (out == "val").any():
            tr = np.flatnonzero(out == "train")
            held = carve(y[tr], groups[tr], val_fraction, seed)
            out[tr[held]] = "val"
        return out.astype(str)
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        raise HeadError("no labelled tiles to train on")
    rest = idx
    if test_fraction > 0:
        held = carve(y[idx], groups[idx], test_fraction, seed)
        out[idx[held]] = "test"
        rest = idx[~held]
    held = carve(y[rest], groups[rest], val_fraction / (1 - test_fraction), seed + 1)
    out[rest[held]] = "val"
    out[rest[~held]] = "train"
    return out.astype(str)


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
