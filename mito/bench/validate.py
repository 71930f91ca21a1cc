"""Checks of a leaderboard folder's files on load: every defect that would crash, or quietly skew, `compare` and
`report` is refused in one line naming the file, the row and what is wrong.

``leaderboard.json``: each row's rank, shots, classes and confusion matrix have the shapes mito writes, and every task
has rows trained on every tile (K-shot rows come with them). ``predictions.npz``: each row's arrays are all there,
integer fold/row/label/draw numbers of one length, and probabilities a finite (n, classes) table in [0, 1] whose rows
sum to 1, with labels among the classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mito.bench.errors import BenchError

PREDICTION_ARRAYS = ("fold", "row", "y", "proba")  # every row's; K-shot rows add "draw"
INDEX_ARRAYS = ("fold", "row", "y", "draw")
SUM_TOLERANCE = 1e-3  # probabilities are stored as float32


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    """A whole number, also as JSON writes it from a float column (5.0)."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def _shots_ok(v: Any) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v in ("", "all", "nan", "None")):
        return True
    try:
        return int(str(v)) >= 1 and str(int(str(v))) == str(v).strip()
    except ValueError:
        return False


def is_shot_row(r: Mapping[str, Any]) -> bool:
    """True for a K-shot row (shots a number), False for a row trained on every tile."""
    v = r.get("shots")
    return not (v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("", "all", "nan", "None"))


def _classes_defect(v: Any) -> str:
    if not isinstance(v, list) or len(v) < 2:
        return f"classes must be a list of two or more class names, got {str(v)[:40]}"
    if not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in v) or len({str(c) for c in v}) != len(v):
        return "classes must be distinct names"
    return ""


def _cm_defect(v: Any, k: int | None) -> str:
    if not isinstance(v, list) or not v or not all(isinstance(r, list) for r in v):
        return "confusion_matrix must be a list of rows of counts"
    n = len(v)
    if any(len(r) != n for r in v):
        return f"confusion_matrix is ragged or not square (row lengths {[len(r) for r in v][:6]} for {n} rows)"
    if k is not None and n != k:
        return f"confusion_matrix is {n} x {n} for {k} classes"
    if not all(_is_int(c) and c >= 0 for r in v for c in r):
        return "confusion_matrix must hold counts (whole numbers >= 0)"
    return ""


def check_rows(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], path: Path) -> None:
    """Refuse a leaderboard.json whose rows or task metadata have a shape mito does not write (one line, BenchError)."""
    tasks = meta.get("tasks", {})
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise BenchError(f"{path} is not a leaderboard: meta.tasks must map each task to an object")
    for t, info in tasks.items():
        if "classes" in info and (why := _classes_defect(info["classes"])):
            raise BenchError(f"{path}: task {t!r}: {why}")
    normal: dict[str, bool] = {}
    for i, r in enumerate(records):
        if why := _row_defect(r):
            raise BenchError(f"{path}: row {i + 1} ({str(r.get('row_id', '?'))[:12]}): {why}")
        normal[r["task"]] = normal.get(r["task"], False) or not is_shot_row(r)
    lacking = [t for t, ok in normal.items() if not ok]
    if lacking:
        raise BenchError(f"{path}: task {lacking[0]!r} has only K-shot rows; a leaderboard ranks rows trained on every tile (shots 'all')")


def _row_defect(r: Mapping[str, Any]) -> str:
    """What is wrong with one leaderboard.json row ("" when nothing)."""
    rank: Any = r.get("rank")
    if not (_whole(rank) and rank >= 1):
        return f"rank must be a whole number >= 1, got {str(rank)[:20]}"
    if not isinstance(r.get("task"), str) or not r["task"]:
        return "task must be a name"
    if "classes" in r and (why := _classes_defect(r["classes"])):
        return why
    k = len(r["classes"]) if isinstance(r.get("classes"), list) else None
    if "confusion_matrix" in r and (why := _cm_defect(r["confusion_matrix"], k)):
        return why
    if not _shots_ok(r.get("shots")):
        return f"shots must be 'all' or a whole number >= 1, got {str(r.get('shots'))[:20]}"
    if is_shot_row(r) and not (_whole(r.get("draws")) and r["draws"] >= 1):
        return f"a K-shot row (shots {r['shots']}) needs its number of draws"
    return ""


def check_predictions(preds: Mapping[str, Mapping[str, np.ndarray]], records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Refuse a predictions.npz whose arrays cannot be test predictions of the leaderboard's rows (one line, BenchError)."""
    rows = {str(r.get("row_id")): r for r in records}
    for rid, a in preds.items():
        where = f"{path}: row {rid}"
        r = rows.get(rid, {})
        n, why = _index_arrays(a, r)
        k = len(r["classes"]) if isinstance(r.get("classes"), list) else None
        why = why or _proba_defect(a["proba"], n, k) or _labels_defect(a)
        if why:
            raise BenchError(f"{where}{why}")


def _index_arrays(a: Mapping[str, np.ndarray], r: Mapping[str, Any]) -> tuple[int | None, str]:
    """The number of test predictions of a row's arrays, and what is wrong with its array names and index arrays
    ("" when nothing; the text follows the row's name)."""
    extra = sorted(set(a) - set(PREDICTION_ARRAYS) - {"draw", "positive"})
    if extra:
        return None, f": unexpected array {extra[0]!r}"
    missing = [k for k in PREDICTION_ARRAYS if k not in a]
    if missing:
        return None, f" lacks its {missing[0]!r} array"
    if is_shot_row(r) and "draw" not in a:
        return None, " lacks its 'draw' array (a K-shot row)"
    n = None
    for name in (x for x in INDEX_ARRAYS if x in a):
        v = a[name]
        if v.ndim != 1 or v.dtype.kind not in "iu":
            return n, f": {name!r} must be a 1-D array of whole numbers, got {v.dtype} of shape {v.shape}"
        if n is not None and len(v) != n:
            return n, f": arrays of different lengths ({name!r} has {len(v)}, 'fold' {n})"
        n = len(v)
        if len(v) and v.min() < 0:
            return n, f": {name!r} holds negative numbers"
    return n, ""


def _proba_defect(p: np.ndarray, n: int | None, k: int | None) -> str:
    """What is wrong with a row's probabilities for ``n`` test predictions of ``k`` classes ("" when nothing)."""
    if p.ndim != 2 or p.dtype.kind != "f":
        return f": 'proba' must be a 2-D array of probabilities, got {p.dtype} of shape {p.shape}"
    if len(p) != n:
        return f": 'proba' has {len(p)} rows for {n} test predictions"
    if p.shape[1] < 2 or (k is not None and p.shape[1] != k):
        return f": 'proba' has {p.shape[1]} columns for {k if k is not None else 'two or more'} classes"
    if not np.isfinite(p).all():
        return ": 'proba' holds NaN or infinite values"
    if len(p) and (p.min() < 0 or p.max() > 1 or np.abs(p.sum(axis=1) - 1).max() > SUM_TOLERANCE):
        return ": 'proba' is not probabilities (each must be in [0, 1], each row summing to 1)"
    return ""


def _labels_defect(a: Mapping[str, np.ndarray]) -> str:
    """What is wrong with a row's positive-class index (two-class rows) and label indices ("" when nothing)."""
    width = a["proba"].shape[1]
    if "positive" in a:  # the positive class's column (two-class rows)
        pos = a["positive"]
        if pos.ndim != 0 or pos.dtype.kind not in "iu" or not 0 <= int(pos) < width:
            return f": 'positive' must be one class index in [0, {width}), got {pos!r}"
    if len(a["y"]) and a["y"].max() >= width:
        return f": label {int(a['y'].max())} is not among the {width} classes"
    return ""
