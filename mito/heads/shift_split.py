"""Domain-shift splits for fit-head: test on one group of a column (e.g. dataset=TUPAC16), train on the others."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mito.core.tasks import group_ids
from mito.heads.base import HeadError
from mito.heads.split import carve


def parse_test_group(value: str) -> tuple[str, str]:
    """``COL=VALUE`` -> (column, value); anything else is a one-line HeadError."""
    col, sep, val = value.partition("=")
    if not sep or not col.strip() or not val.strip():
        raise HeadError(f"--test-group takes COLUMN=VALUE (e.g. dataset=TUPAC16), got {value!r}")
    return col.strip(), val.strip()


def group_split(
    tiles: pd.DataFrame,
    labels: pd.Series,
    usable: np.ndarray,
    test_group: str,
    train_groups: list[str] | None = None,
    group_column: str | None = "group",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """``train``/``val``/``test`` per tile: test = the tiles of ``COL=VALUE``; train = tiles of ``train_groups`` (default:
    every other value of COL), val carved from them by slide; tiles of neither side (or missing COL) are ''."""
    column, value = parse_test_group(test_group)
    if column not in tiles:
        raise HeadError(f"no column {column!r} in the tile table (it has: {', '.join(map(str, tiles.columns))})")
    values = tiles[column].astype(object).map(lambda v: "" if v is None or v != v else str(v).strip()).to_numpy()
    present = sorted(set(values[usable]) - {""})
    wanted = [value, *(train_groups or [])]
    missing = [v for v in wanted if v not in present]
    if missing:
        raise HeadError(f"{column}={missing[0]!r} has no labelled tile (values: {', '.join(present)})")
    if value in (train_groups or []):
        raise HeadError(f"{column}={value!r} cannot be both the test group and a training group")
    test = usable & (values == value)
    train = usable & (np.isin(values, train_groups) if train_groups else (values != "") & (values != value))
    y = labels.astype(str).to_numpy()
    if len(set(y[test])) < 2:
        raise HeadError(f"the test group {column}={value} has only class {y[test][0]!r}: its scores need two classes")
    if len(set(y[train])) < 2:
        raise HeadError(f"the training groups of {column} have only class {y[train][0]!r}")
    groups = group_ids(tiles, group_column) if group_column is not None else np.arange(len(tiles)).astype(str)
    out = np.full(len(tiles), "", dtype=object)
    out[test] = "test"
    tr = np.flatnonzero(train)
    held = carve(y[tr], groups[tr], val_fraction, seed)
    out[tr[held]] = "val"
    out[tr[~held]] = "train"
    return out.astype(str)


def group_split_description(test_group: str, train_groups: list[str] | None, group_column: str | None, val_fraction: float) -> str:
    """How a --test-group split was made, in words."""
    column, value = parse_test_group(test_group)
    on = f"{column} in {{{', '.join(train_groups)}}}" if train_groups else f"{column} other than {value}"
    by = f"by {group_column!r}" if group_column else "tile by tile"
    return f"domain shift: test on {column} = {value}; train on {on} (val {val_fraction:g} carved {by})"
