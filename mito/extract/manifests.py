"""CSV tables a source is made of: a manifest of tile or slide paths, and a points file (x, y per tile centre).

Every column name is checked before any work, and every malformed row is refused in one line naming the file."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.extract.errors import ExtractError
from mito.store import StoreError, check_column_names


def _check_manifest_rows(path: Path) -> None:
    """Every row has as many fields as the header (pandas would silently turn extra fields into an index)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if row and len(row) != len(header):
                    raise ExtractError(
                        f"manifest {path} line {reader.line_num}: {len(row)} fields, the header has {len(header)} "
                        "(a stray comma? quote values that contain commas)"
                    )
    except (UnicodeDecodeError, csv.Error) as e:
        raise ExtractError(f"cannot parse manifest {path}: {str(e).splitlines()[0]}") from None


def check_columns(columns: Any, where: str) -> None:
    """Refuse, before any work, CSV columns that cannot become tile-table columns ('.', '..', zarr.json, '../x' ...)."""
    try:
        check_column_names(list(columns), where)
    except StoreError as e:
        raise ExtractError(str(e)) from None


def read_path_manifest(csv_path: Path, what: str = "manifest", items: str = "tiles") -> tuple[pd.DataFrame, list[str]]:
    """A CSV with a ``path`` column (tiles or slides): rows checked, no empty path, paths made absolute as given
    (relative to the CSV, symlinks not resolved); returns the table and the paths as written."""
    _check_manifest_rows(csv_path)
    try:
        df = pd.read_csv(csv_path, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ExtractError(f"cannot parse {what} {csv_path}: {str(e).splitlines()[0]}") from None
    if "path" not in df:
        raise ExtractError(f"{what} {csv_path} needs a 'path' column (has: {', '.join(map(str, df.columns))})")
    check_columns(df.columns, f"{what} {csv_path}")
    if df.empty:
        raise ExtractError(f"{what} {csv_path} lists no {items}")
    empty = df["path"].isna() | (df["path"].astype(str).str.strip() == "")
    if empty.any():
        raise ExtractError(f"{what} {csv_path} line {int(np.flatnonzero(empty.to_numpy())[0]) + 2}: empty path")
    given = df["path"].astype(str)
    df["path"] = [p if os.path.isabs(p) else os.path.abspath(csv_path.parent / p) for p in given]
    return df, given.tolist()


def read_points(points: Path) -> pd.DataFrame:
    """A points CSV: x, y (level-0 pixel centres, numbers) and any other columns, at least one row."""
    try:
        df = pd.read_csv(points)
    except pd.errors.EmptyDataError:
        raise ExtractError(f"points file {points} is empty: give a CSV with x,y columns (level-0 pixel centres)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ExtractError(f"cannot parse points {points}: {str(e).splitlines()[0]}") from None
    if not {"x", "y"} <= set(df.columns):
        raise ExtractError(f"points file {points} needs x and y columns (has: {', '.join(map(str, df.columns))})")
    if df.empty:
        raise ExtractError(f"points file {points} lists no points")
    check_columns(df.columns, f"points file {points}")
    if not (pd.api.types.is_numeric_dtype(df["x"]) and pd.api.types.is_numeric_dtype(df["y"])):
        raise ExtractError(f"x and y in {points} must be numbers")
    return df
