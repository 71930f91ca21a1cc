"""Paired comparisons of leaderboard rows: paired bootstrap, DeLong's test, Holm's adjustment, Friedman + Nemenyi.

scipy has the Friedman test and the studentized range; the paired bootstrap reuses the resampling of
:func:`mito.core.metrics.bootstrap_replicates`; DeLong (fast algorithm of Sun & Xu 2014) and Holm are written here
and tested against brute force and published values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from mito.bench.errors import BenchError
from mito.core.metrics import METRIC_NAMES, bootstrap_replicates, metric_score
from mito.core.tasks import POSITIVE_LEGACY


# ------------------------------------------------------------------ paired bootstrap
@dataclass(frozen=True)
class PairedResult:
    """Row a minus row b: the difference on the full data, its percentile bootstrap interval and two-sided p-value."""

    metric: str
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: int
    n_tiles: int
    value_a: float = math.nan  # each row's metric on the compared predictions (mean over their folds)
    value_b: float = math.nan


def fold_mean_metric(yi: np.ndarray, proba: np.ndarray, metric: str, fold: np.ndarray | None = None, positive: int = 1) -> float:
    """``metric`` per fold, averaged over the folds that can be scored (the leaderboard's value of a row); two
    classes: column ``positive`` is the positive class."""
    fold = np.zeros(len(yi), np.int64) if fold is None else np.asarray(fold)
    vals = [metric_score(metric, yi[fold == f], proba[fold == f], positive) for f in np.unique(fold)]
    ok = [v for v in vals if not math.isnan(v)]
    return float(np.mean(ok)) if ok else math.nan


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided p-value of 'no difference' from bootstrap replicates of a difference: twice the smaller tail at 0.

    Counts ties with zero in both tails and adds one to numerator and denominator, so identical rows get p = 1
    and no p-value is 0. It is the smallest alpha whose (1 - alpha) percentile interval excludes zero.
    """
    d = np.asarray(diffs, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan
    lo = (np.count_nonzero(d <= 0) + 1) / (d.size + 1)
    hi = (np.count_nonzero(d >= 0) + 1) / (d.size + 1)
    return float(min(1.0, 2 * min(lo, hi)))


def class_indices(y: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    """Labels as indices into ``classes`` (labels that already are those indices pass through)."""
    y = np.asarray(y)
    index = {c: i for i, c in enumerate(classes)}
    if all(v in index for v in y.tolist()):
        return np.array([index[v] for v in y.tolist()], dtype=np.int64)
    if np.issubdtype(y.dtype, np.integer) and (len(y) == 0 or (y.min() >= 0 and y.max() < len(classes))):
        return y.astype(np.int64)
    raise BenchError(f"labels not among the classes {list(classes)}")


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values, NaN ones left out ((NaN, NaN) when none is left)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap(
    y: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    classes: Sequence[Any],
    metric: str,
    *,
    fold: np.ndarray | None = None,
    tile: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    positive: int = 1,
) -> PairedResult:
    """Paired bootstrap of metric(a) - metric(b): both rows are scored on the SAME resampled tiles in each replicate.

    ``y`` (class labels or indices), ``fold`` and ``tile`` are shared by both rows, row i of ``proba_a`` and of
    ``proba_b`` predicting the same tile in the same fold; folds are handled as by :func:`mito.core.metrics.bootstrap_ci`
    (metric per fold, averaged; a tile in several folds drawn once per replicate). Two classes: column ``positive``
    of the probabilities is the positive class (PR-AUC).
    """
    yi = class_indices(y, classes)
    pa, pb = np.asarray(proba_a, np.float64), np.asarray(proba_b, np.float64)
    if pa.shape != pb.shape or pa.shape != (len(yi), len(classes)):
        raise BenchError(f"both rows need predictions of shape ({len(yi)}, {len(classes)}), got {pa.shape} and {pb.shape}")
    va, vb = fold_mean_metric(yi, pa, metric, fold, positive), fold_mean_metric(yi, pb, metric, fold, positive)
    delta = va - vb
    n_tiles = len(yi) if tile is None else int(np.unique(tile).size)
    if n_boot <= 0:
        return PairedResult(metric, delta, math.nan, math.nan, math.nan, 0, n_tiles, va, vb)
    ra = bootstrap_replicates(yi, pa, metric, fold=fold, tile=tile, n_boot=n_boot, seed=seed, positive=positive)
    rb = bootstrap_replicates(yi, pb, metric, fold=fold, tile=tile, n_boot=n_boot, seed=seed, positive=positive)
    diffs = ra - rb
    ok = diffs[~np.isnan(diffs)]
    if ok.size == 0:
        return PairedResult(metric, delta, math.nan, math.nan, math.nan, n_boot, n_tiles, va, vb)
    lo, hi = percentile_interval(ok, level)
    return PairedResult(metric, float(delta), lo, hi, bootstrap_p_value(ok), n_boot, n_tiles, va, vb)


# ------------------------------------------------------------------ DeLong
@dataclass(frozen=True)
class DelongResult:
    """DeLong's test of two correlated AUCs on the same cases: AUCs, their difference a - b, z and two-sided p."""

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    p_value: float
    n_pos: int
    n_neg: int


def midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of their ranks (scipy's rankdata, 'average')."""
    return sps.rankdata(x, method="average")


def delong_components(y_binary: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong's structural components of several scores (rows of ``scores``) by midranks (Sun & Xu 2014).

    Returns ``auc`` (s,), ``v10`` (s, m positives) and ``v01`` (s, n negatives): v10[i] is the fraction of negatives a
    positive i out-scores (ties count one half), v01[j] the fraction of positives that out-score negative j.
    """
    y = np.asarray(y_binary).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:  # the sample variances of the components divide by m - 1 and n - 1 (pROC: NA)
        raise BenchError(f"DeLong's variance is undefined with fewer than 2 cases in a class ({m} positive, {n} negative)")
    pos, neg = scores[:, y], scores[:, ~y]
    v10 = np.empty((len(scores), m))
    v01 = np.empty((len(scores), n))
    for s in range(len(scores)):
        tz = midrank(np.concatenate([pos[s], neg[s]]))
        tx, ty = midrank(pos[s]), midrank(neg[s])
        v10[s] = (tz[:m] - tx) / n
        v01[s] = 1.0 - (tz[m:] - ty) / m
    return v10.mean(axis=1), v10, v01


def delong_covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong's covariance of the AUC estimates: S10/m + S01/n (sample covariances of the components; m, n >= 2)."""
    m, n = v10.shape[1], v01.shape[1]
    return np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def z_test(delta: float, var: float) -> tuple[float, float, float]:
    """(se, z, two-sided p) of a normal difference; a zero difference with zero variance is p = 1."""
    se = math.sqrt(max(var, 0.0))
    if se == 0:
        return se, (0.0 if delta == 0 else math.copysign(math.inf, delta)), (1.0 if delta == 0 else 0.0)
    z = delta / se
    return se, float(z), float(2 * sps.norm.sf(abs(z)))


def delong_test(y_binary: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DelongResult:
    """DeLong, DeLong & Clarke-Pearson (1988) test of AUC(a) = AUC(b) on the same cases (fast midrank algorithm)."""
    y = np.asarray(y_binary)
    if len(y) != len(score_a) or len(y) != len(score_b):
        raise BenchError("DeLong's test needs one score of each row per case")
    auc, v10, v01 = delong_components(y, np.vstack([score_a, score_b]))
    cov = delong_covariance(v10, v01)
    delta = float(auc[0] - auc[1])
    se, z, p = z_test(delta, cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return DelongResult(float(auc[0]), float(auc[1]), delta, se, z, p, v10.shape[1], v01.shape[1])


def delong_folds(y_binary: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, fold: np.ndarray, tile: np.ndarray) -> DelongResult:
    """DeLong's test of the mean-over-folds AUC difference (folds as in :func:`delong_fold_covariance`)."""
    auc, cov, m, n = delong_fold_covariance(y_binary, np.vstack([score_a, score_b]), fold, tile)
    delta = float(auc[0] - auc[1])
    se, z, p = z_test(delta, cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return DelongResult(float(auc[0]), float(auc[1]), delta, se, z, p, m, n)


def delong_fold_covariance(
    y_binary: np.ndarray, scores: np.ndarray, fold: np.ndarray, tile: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Mean-over-folds AUCs of several scores (rows of ``scores``), DeLong's covariance of them, and the positive and
    negative cases counted.

    Disjoint test folds (k-fold) are independent samples: the fold AUCs are averaged and the variance is the sum of
    the per-fold variances over F^2. Folds that all score the same tiles (a shared test split) give every tile the
    mean of its structural components over the folds (the mean AUC is then one generalised U-statistic). Anything
    in between is refused.
    """
    y, scores = np.asarray(y_binary), np.atleast_2d(np.asarray(scores, np.float64))
    fold, tile = np.asarray(fold), np.asarray(tile)
    folds = np.unique(fold)
    sets = [np.sort(tile[fold == f]) for f in folds]
    if len(folds) == 1 or all(np.array_equal(s, sets[0]) for s in sets[1:]):
        order = [np.flatnonzero(fold == f)[np.argsort(tile[fold == f], kind="stable")] for f in folds]
        yy = y[order[0]]
        if any(not np.array_equal(y[o], yy) for o in order[1:]):
            raise BenchError("a tile has different labels in different folds")
        parts = [delong_components(yy, scores[:, o]) for o in order]
        v10 = np.mean([p[1] for p in parts], axis=0)
        v01 = np.mean([p[2] for p in parts], axis=0)
        auc = v10.mean(axis=1)
        cov = delong_covariance(v10, v01)
        m, n = v10.shape[1], v01.shape[1]
    elif np.unique(tile).size == tile.size:
        aucs, cov = [], np.zeros((len(scores), len(scores)))
        m = n = 0
        for f in folds:
            sel = fold == f
            try:
                a, v10, v01 = delong_components(y[sel], scores[:, sel])
            except BenchError as e:
                raise BenchError(f"test fold {f}: {e}") from None
            aucs.append(a)
            cov += delong_covariance(v10, v01)
            m, n = m + v10.shape[1], n + v01.shape[1]
        auc = np.mean(aucs, axis=0)
        cov /= len(folds) ** 2
    else:
        raise BenchError("the folds share some test tiles but not all; DeLong's test needs disjoint or identical test sets")
    return auc, cov, m, n


def delong_ci(
    y_binary: np.ndarray, score: np.ndarray, fold: np.ndarray | None = None, tile: np.ndarray | None = None, level: float = 0.95
) -> tuple[float, float]:
    """DeLong's confidence interval of the (mean-over-folds) AUROC: AUC -/+ z * se, capped to [0, 1] (pROC's
    ``ci.auc(method = "delong")``); (NaN, NaN) where the variance is undefined (fewer than 2 cases in a class)."""
    score = np.asarray(score, np.float64)
    fold = np.zeros(len(score), np.int64) if fold is None else fold
    tile = np.arange(len(score)) if tile is None else tile
    try:
        auc, cov, _, _ = delong_fold_covariance(y_binary, score[None, :], fold, tile)
    except BenchError:
        return math.nan, math.nan
    half = float(sps.norm.ppf(1 - (1 - level) / 2)) * math.sqrt(max(float(cov[0, 0]), 0.0))
    return float(min(max(auc[0] - half, 0.0), 1.0)), float(min(max(auc[0] + half, 0.0), 1.0))


def row_delong_ci(p: dict[str, np.ndarray], level: float = 0.95) -> tuple[float, float]:
    """DeLong's AUROC interval of a leaderboard row from its kept predictions (two-class rows trained on every tile;
    (NaN, NaN) for multi-class and K-shot rows, whose AUROC averages fits on different draws)."""
    proba = np.asarray(p["proba"], np.float64)
    if proba.ndim != 2 or proba.shape[1] != 2 or "draw" in p or not len(proba):
        return math.nan, math.nan
    pos = prediction_positive(p)
    return delong_ci(np.asarray(p["y"]) == pos, proba[:, pos], np.asarray(p["fold"]), np.asarray(p["row"]), level)


# ------------------------------------------------------------------ multiple comparisons
def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaN entries stay NaN and do not count in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


# ------------------------------------------------------------------ Friedman + Nemenyi
@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test over tasks (blocks) of several methods, their mean ranks (1 = best) and Nemenyi's critical difference."""

    methods: list[str]
    mean_ranks: list[float]
    statistic: float
    p_value: float
    critical_difference: float
    n_tasks: int
    alpha: float


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's q_alpha for k methods: the studentized range quantile (infinite df) over sqrt(2) (Demšar 2006, Table 5)."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def friedman_nemenyi(scores: np.ndarray, methods: Sequence[str], alpha: float = 0.05) -> FriedmanResult:
    """Friedman's test and Nemenyi's critical difference of ``scores`` (tasks x methods, higher is better).

    Ranks are 1 for the best method of a task (ties share their mean rank). scipy's Friedman test needs three or
    more methods; with two its statistic and p are NaN (the ranks and the critical difference are still given).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(methods):
        raise BenchError("scores must be a (tasks, methods) table")
    if s.shape[0] < 2 or s.shape[1] < 2:
        raise BenchError("a critical-difference diagram needs at least 2 tasks and 2 methods")
    if np.isnan(s).any():
        raise BenchError("every method needs a score on every task")
    ranks = np.vstack([sps.rankdata(-row, method="average") for row in s])
    if s.shape[1] >= 3:
        stat, p = sps.friedmanchisquare(*s.T)
    else:
        stat, p = math.nan, math.nan
    k, n = s.shape[1], s.shape[0]
    cd = nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))
    return FriedmanResult(list(methods), ranks.mean(axis=0).tolist(), float(stat), float(p), float(cd), n, alpha)


# ------------------------------------------------------------------ leaderboard rows
PAIRED_COLUMNS = ["delta_vs_best", "p_vs_best", "tied_with_best", "auroc_delta_vs_best", "auroc_p_vs_best", "paired_note"]


@dataclass(frozen=True)
class Comparison:
    """Two leaderboard rows compared on the same test tiles: each metric's paired bootstrap and (binary) DeLong's test."""

    n_tiles: int
    n_folds: int
    n_predictions: int
    paired: dict[str, PairedResult]
    delong: DelongResult | None
    note: str = ""
    positive: int | None = None  # two classes: the column of the positive class (PR-AUC, DeLong's positive cases)
    folds_note: str = ""  # rows that scored different folds: the folds both scored, on which they were compared


# The paired note of rows compared on the folds both scored (a row of a `mito lora --run-folds` run, say).
PARTIAL_FOLDS = "paired on the folds both rows scored"


def prediction_positive(p: dict[str, np.ndarray]) -> int:
    """The column of a two-class row's positive class in its predictions: recorded as ``positive`` by this mito; an
    older folder's rows scored the second class (column 1)."""
    v = p.get("positive")
    if v is None:
        return 1
    a = np.asarray(v)
    if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
        raise BenchError("a row's recorded positive class is not one class index")
    return int(a.reshape(()))


def common_folds(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Two rows' predictions restricted to the folds both scored, and a note saying so when one scored folds the
    other did not (a fine-tuning run on --run-folds of the same folds); refused when they share no fold."""
    for name, p in (("first", a), ("second", b)):
        if "fold" not in p:
            raise BenchError(f"the {name} row kept no test predictions")
    fa, fb = np.unique(a["fold"]), np.unique(b["fold"])
    if np.array_equal(fa, fb):
        return a, b, ""
    common = np.intersect1d(fa, fb)
    if common.size == 0:
        raise BenchError(f"the rows scored no fold in common (folds {', '.join(map(str, fa))} and {', '.join(map(str, fb))})")

    def keep(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sel = np.isin(p["fold"], common)
        return {k: (np.asarray(v)[sel] if np.ndim(v) and len(v) == len(sel) else v) for k, v in p.items()}

    note = (
        f"{PARTIAL_FOLDS} (fold {', '.join(map(str, common))}; the rows scored {fa.size} and {fb.size} folds): "
        "Δ, p and DeLong are on those folds only"
    )
    return keep(a), keep(b), note


def align_predictions(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(y, proba_a, proba_b, fold, tile) of two rows' predictions sorted by (fold, tile); refused unless both rows
    scored exactly the same tiles in the same folds with the same labels. K-shot rows (a ``draw`` array) are paired per
    (draw, fold) fit: the returned ``fold`` numbers those fits, so per-fold metrics average over draws x folds."""
    for name, p in (("first", a), ("second", b)):
        if not all(k in p for k in ("fold", "row", "y", "proba")):
            raise BenchError(f"the {name} row kept no test predictions")
    if ("draw" in a) != ("draw" in b):
        raise BenchError("a K-shot row (several draws per fold) cannot be paired with a row trained on every tile")
    if "draw" in a:  # K-shot rows: each (draw, fold) fit is a unit, as in the row's mean over draws x folds
        n_draws = int(max(np.max(a["draw"], initial=0), np.max(b["draw"], initial=0))) + 1
        a = {**a, "fold": np.asarray(a["fold"], np.int64) * n_draws + np.asarray(a["draw"], np.int64)}
        b = {**b, "fold": np.asarray(b["fold"], np.int64) * n_draws + np.asarray(b["draw"], np.int64)}
    oa = np.lexsort((a["row"], a["fold"]))
    ob = np.lexsort((b["row"], b["fold"]))
    if len(oa) != len(ob) or not (np.array_equal(a["fold"][oa], b["fold"][ob]) and np.array_equal(a["row"][oa], b["row"][ob])):
        raise BenchError("the rows were not scored on the same test tiles in the same folds")
    if not np.array_equal(a["y"][oa], b["y"][ob]):
        raise BenchError("the rows give the same tiles different labels")
    pa, pb = np.asarray(a["proba"], np.float64)[oa], np.asarray(b["proba"], np.float64)[ob]
    if pa.shape != pb.shape:
        raise BenchError(f"the rows predict different numbers of classes ({pa.shape[1]} and {pb.shape[1]})")
    return np.asarray(a["y"])[oa].astype(np.int64), pa, pb, np.asarray(a["fold"])[oa], np.asarray(a["row"])[oa]


def compare_predictions(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], metrics: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> Comparison:
    """Row a minus row b on their shared test tiles (on the folds both scored, said in ``folds_note``): a paired
    bootstrap per metric, DeLong's test when binary, both with the rows' recorded positive class."""
    a, b, folds_note = common_folds(a, b)
    y, pa, pb, fold, tile = align_predictions(a, b)
    classes = list(range(pa.shape[1]))
    pos = None
    if pa.shape[1] == 2:
        pos = prediction_positive(a)
        if prediction_positive(b) != pos:
            raise BenchError("the rows were scored with different positive classes")
    paired = {
        m: paired_bootstrap(y, pa, pb, classes, m, fold=fold, tile=tile, n_boot=n_boot, seed=seed, positive=1 if pos is None else pos)
        for m in metrics
    }
    delong, note = None, ""
    if pos is not None:
        try:  # the positive cases are the positive class's rows, scored by its probability (AUROC is the same either way)
            delong = delong_folds(y == pos, pa[:, pos], pb[:, pos], fold, tile)
        except BenchError as e:
            note = f"no DeLong test: {e}"
    else:
        note = "multi-class: AUROC compared by paired bootstrap only"
    return Comparison(int(np.unique(tile).size), int(np.unique(fold).size), len(y), paired, delong, note, pos, folds_note)


def pair_with_best(
    r: Any, best: Any, predictions: dict[str, dict[str, np.ndarray]], n_boot: int, seed: int
) -> tuple[Comparison | None, str]:
    """Row ``r`` compared with its ranking's ``best`` row on the same test predictions, or None and why it cannot be."""
    fa, fb = r.get("fold_fingerprint"), best.get("fold_fingerprint")
    if isinstance(fa, str) and isinstance(fb, str) and fa != fb:
        return None, "scored on other folds than the best row"
    if r["row_id"] not in predictions or best["row_id"] not in predictions:
        return None, "no test predictions kept"
    try:
        return compare_predictions(predictions[r["row_id"]], predictions[best["row_id"]], [r["main_metric"]], n_boot, seed), ""
    except BenchError as e:
        return None, str(e)


def add_paired_columns(rows: Any, predictions: dict[str, dict[str, np.ndarray]], n_boot: int = 1000, seed: int = 0) -> Any:
    """Every ranked row against its task's best row (rank 1): ``delta_vs_best`` (row - best, main metric, the same
    value the leaderboard shows), ``p_vs_best`` (paired bootstrap, Holm-adjusted within the task), ``tied_with_best``
    (not significantly worse at 0.05), and for binary tasks DeLong's AUROC difference and Holm-adjusted p.

    Rows that cannot be paired with the best row (other folds, other tiles, no predictions) get NaN and the reason
    in ``paired_note``.
    """
    import pandas as pd

    rows = rows.copy()
    if rows.empty:
        for c in PAIRED_COLUMNS:
            rows[c] = pd.Series(dtype=object)
        return rows
    out: dict[str, list[Any]] = {c: [math.nan] * len(rows) for c in PAIRED_COLUMNS}
    out["tied_with_best"] = [None] * len(rows)
    out["paired_note"] = [""] * len(rows)
    pos = {idx: i for i, idx in enumerate(rows.index)}
    # shift rows: against the best row tested on the same group; K-shot rows: against the best row with the same K
    by = ["task", *[c for c in ("held_out", "shots") if c in rows]]
    for _, group in rows.groupby(by, sort=False):
        best = group.sort_values("rank").iloc[0]
        members, raw_p, raw_auc_p = [], [], []
        for idx, r in group.iterrows():
            i = pos[idx]
            if r["row_id"] == best["row_id"]:
                out["delta_vs_best"][i], out["auroc_delta_vs_best"][i] = 0.0, 0.0
                out["tied_with_best"][i], out["paired_note"][i] = True, "best row"
                continue
            cmp, why = pair_with_best(r, best, predictions, n_boot, seed)
            if cmp is None:
                out["paired_note"][i] = why
                continue
            pr = cmp.paired[r["main_metric"]]
            out["delta_vs_best"][i] = pr.delta
            members.append(i)
            raw_p.append(pr.p_value)
            raw_auc_p.append(cmp.delong.p_value if cmp.delong else math.nan)
            if cmp.delong:
                out["auroc_delta_vs_best"][i] = cmp.delong.delta
            out["paired_note"][i] = "; ".join(x for x in (cmp.folds_note, cmp.note if pr.n_boot else "no bootstrap (n_boot 0)") if x)
        for i, p, pa in zip(members, holm(raw_p), holm(raw_auc_p)):
            out["p_vs_best"][i] = float(p)
            out["auroc_p_vs_best"][i] = float(pa)
            out["tied_with_best"][i] = None if math.isnan(p) else bool(p >= 0.05 or out["delta_vs_best"][i] >= 0)
    for c in PAIRED_COLUMNS:
        rows[c] = out[c]
    return rows


# ------------------------------------------------------------------ mito compare
def row_group(row: Any) -> str:
    """Which ranking a leaderboard row is in: '' for the main one, else its held-out group and/or K shots."""
    parts = []
    held = row.get("held_out")
    if isinstance(held, str) and held:
        parts.append(f"tested on {held}")
    shots = row.get("shots")
    if shots is not None and str(shots) not in ("", "all", "nan", "None"):
        parts.append(f"K={shots}")
    return ", ".join(parts)


def find_row(rows: Any, ref: str, task: str | None = None) -> Any:
    """One leaderboard row by rank number (within ``task`` when the leaderboard has several; among the in-domain rows
    trained on every tile when shift or K-shot rows share the rank) or by row id (or its prefix)."""
    ref = ref.strip()
    sel = rows if task is None else rows[rows["task"] == task]
    if task is not None and sel.empty:
        raise BenchError(f"no task {task!r} in this leaderboard (it has: {', '.join(sorted(rows['task'].unique()))})")
    if ref.isdigit():
        hit = sel[sel["rank"] == int(ref)]
        if len(hit) > 1:  # shift and few-shot rows are ranked apart: a rank number means the main (in-domain, all labels) ranking
            main = hit[[row_group(r) == "" for _, r in hit.iterrows()]]
            hit = main if len(main) else hit
        if len(hit) > 1:
            tasks = sorted(set(hit["task"]))
            if len(tasks) > 1:
                raise BenchError(f"rank {ref} exists in several tasks ({', '.join(tasks)}): add --task or use row ids")
            raise BenchError(f"rank {ref} names {len(hit)} rows (held-out groups / shots): give row ids from leaderboard.csv")
    else:
        hit = sel[sel["row_id"].astype(str).str.startswith(ref)] if ref else sel.iloc[:0]
        if len(hit) > 1:
            raise BenchError(f"row id {ref!r} is ambiguous ({len(hit)} rows start with it)")
    if hit.empty:
        raise BenchError(f"no row {ref!r} in this leaderboard (give a rank number or a row id from leaderboard.csv)")
    return hit.iloc[0]


def compare_rows(
    lb: Any, ref_a: str, ref_b: str, task: str | None = None, n_boot: int | None = None, seed: int | None = None
) -> tuple[Any, Any, Comparison]:
    """Two rows of a leaderboard compared in full on every metric (row a minus row b), with the run's n_boot and seed by default."""
    a, b = find_row(lb.rows, ref_a, task), find_row(lb.rows, ref_b, task)
    if a["task"] != b["task"]:
        raise BenchError(f"the rows belong to different tasks ({a['task']} and {b['task']}); compare rows of one task")
    if a["row_id"] == b["row_id"]:
        raise BenchError("that is the same row twice")
    ga, gb = (str(r.get("held_out") or "") for r in (a, b))
    if ga != gb:  # shift rows: each held-out group is its own test set (rows with other K shots share the test tiles)
        raise BenchError(
            f"the rows were scored on different test tiles ({ga or 'in-domain'} vs {gb or 'in-domain'}); compare rows of one held-out group"
        )
    fa, fb = a.get("fold_fingerprint"), b.get("fold_fingerprint")
    if isinstance(fa, str) and isinstance(fb, str) and fa != fb:
        raise BenchError("the rows were scored on different folds; a paired comparison needs the same folds and test tiles")
    for r in (a, b):
        if r["row_id"] not in lb.predictions:
            raise BenchError(f"row {r['rank']} ({r['row_id']}) kept no test predictions in {lb.meta.get('source', 'this leaderboard')}")
    cfg = lb.meta.get("config") or {}
    n_boot = int(cfg.get("n_boot", 1000) or 1000) if n_boot is None else n_boot
    seed = int(cfg.get("seed", 0)) if seed is None else seed
    comp = compare_predictions(lb.predictions[a["row_id"]], lb.predictions[b["row_id"]], list(METRIC_NAMES), n_boot, seed)
    return a, b, comp


def positive_name(row: Any, column: int | None) -> str | None:
    """'positive class: Atypical (...)' for a two-class row: its recorded positive class, or for a row of an older
    folder the class in ``column`` (the second), said so; None when multi-class."""
    if column is None:
        return None
    pos = row.get("positive")
    if isinstance(pos, str) and pos:
        return f"positive class: {pos} (recorded with the rows; PR-AUC and DeLong's positive cases)"
    classes = row.get("classes")
    name = str(classes[column]) if isinstance(classes, list) and len(classes) > column else f"column {column}"
    return f"positive class: {name} ({POSITIVE_LEGACY})"
