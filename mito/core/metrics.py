"""Classification metrics, all from scikit-learn, shared by heads (metrics.json) and the leaderboard."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("balanced_accuracy", "auroc", "kappa", "weighted_f1", "pr_auc")
# lower is better; summarised per row like the metrics above but never a main metric
CALIBRATION_NAMES = ("ece", "ece_equal_mass", "brier")
ECE_BINS = 15


def positive_index(classes: Sequence[Any], positive: Any = None) -> int:
    """Column of a two-class task's positive class: ``positive`` when given, else the second class (the rule mito
    used before the positive class was chosen and recorded; callers pass the task's positive class)."""
    classes = list(classes)
    if positive is None:
        return 1
    index = {str(c): i for i, c in enumerate(classes)}
    if str(positive) not in index:
        raise ValueError(f"positive class {positive!r} is not among the classes {', '.join(map(str, classes))}")
    return index[str(positive)]


def per_class_scores(yi: np.ndarray, pred: np.ndarray, classes: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Recall, precision and support of each class (scikit-learn's; precision NaN for a class never predicted,
    recall NaN for a class absent from the truth)."""
    labels = list(range(len(classes)))
    prec, rec, _, support = skm.precision_recall_fscore_support(yi, pred, labels=labels, zero_division=np.nan)
    return {str(c): {"recall": float(rec[i]), "precision": float(prec[i]), "support": int(support[i])} for i, c in enumerate(classes)}


def classification_metrics(
    y_true: Sequence[Any] | np.ndarray, proba: np.ndarray, classes: Sequence[Any] | np.ndarray, positive: Any = None
) -> dict[str, Any]:
    """Balanced accuracy, AUROC (one-vs-rest macro when multi-class), Cohen's kappa, weighted F1, PR-AUC, confusion
    matrix, ECE, Brier and each class's recall and precision.

    ``proba`` has one column per entry of ``classes`` (in that order); ``y_true`` holds class labels. Two classes:
    ``positive`` is the class whose probability PR-AUC (average precision), ECE and Brier score (None: the second
    class, mito's rule before the positive class was chosen; callers pass the task's positive class).
    """
    classes = list(classes)
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y_true), len(classes)):
        raise ValueError(f"proba must be (n, {len(classes)}), got {proba.shape}")
    if positive is not None and len(classes) != 2:
        raise ValueError(f"a positive class applies to two-class tasks; these classes are {', '.join(map(str, classes))}")
    pos = positive_index(classes, positive) if len(classes) == 2 else 1
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in y_true if v not in index})
    if unknown:
        raise ValueError(f"labels not among the classes {classes}: {unknown[:5]}")
    yi = np.array([index[v] for v in y_true], dtype=np.int64)
    pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    out: dict[str, Any] = {
        "n": int(len(yi)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yi, pred)),
        "kappa": float(skm.cohen_kappa_score(yi, pred, labels=labels)),
        "weighted_f1": float(skm.f1_score(yi, pred, average="weighted", labels=labels, zero_division=0)),
        "accuracy": float(skm.accuracy_score(yi, pred)),
        "confusion_matrix": skm.confusion_matrix(yi, pred, labels=labels).tolist(),
        "classes": [str(c) for c in classes],
        **({"positive": str(classes[pos])} if len(classes) == 2 else {}),
        "ece": expected_calibration_error(yi, proba, positive=pos),
        "ece_equal_mass": expected_calibration_error_equal_mass(yi, proba, positive=pos),
        "brier": brier_score(yi, proba, positive=pos),
        "per_class": per_class_scores(yi, pred, classes),
    }
    present = np.unique(yi)
    if present.size < 2:
        out["auroc"] = float("nan")
        out["pr_auc"] = float("nan")
    elif len(classes) == 2:
        out["auroc"] = float(skm.roc_auc_score(yi == pos, proba[:, pos]))
        out["pr_auc"] = float(skm.average_precision_score(yi == pos, proba[:, pos]))
    else:
        onehot = np.eye(len(classes))[yi][:, present]
        p = _present_proba(proba, present)
        out["auroc"] = float(skm.roc_auc_score(onehot, p, average="macro", multi_class="ovr"))
        out["pr_auc"] = float(skm.average_precision_score(onehot, p, average="macro"))
    return out


def _present_proba(proba: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Columns of the classes present in y_true, renormalised only when some are absent (rescaling breaks ties)."""
    if present.size == proba.shape[1]:
        return proba
    p = proba[:, present]
    return p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)


def calibration_pairs(yi: np.ndarray, proba: np.ndarray, positive: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, hit) per row: two classes, the probability of the positive class (column ``positive``) and whether
    it is the truth; more classes, top-label: the highest probability and whether the argmax is right."""
    yi = np.asarray(yi, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] == 2:
        return proba[:, positive], (yi == positive).astype(np.float64)
    return proba.max(axis=1), (proba.argmax(axis=1) == yi).astype(np.float64)


def reliability_bins(
    yi: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS, positive: int = 1, equal_mass: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins of predicted confidence (see :func:`calibration_pairs`): mean confidence, observed frequency and count per
    non-empty bin.

    Equal width (the default, torchmetrics' and Guo et al. 2017's): bin b holds confidences in [b/n_bins, (b+1)/n_bins)
    and a confidence of exactly 1 is a bin of its own, as ``torch.bucketize(..., right=True)`` places it in
    torchmetrics. ``equal_mass``: the bin edges are the confidence quantiles at i/n_bins, so bins hold equally many
    rows (to within one) except that equal confidences always share a bin.
    """
    conf, hit = calibration_pairs(yi, proba, positive)
    if len(conf) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    if equal_mass:
        n = len(conf)
        ranked = np.sort(conf)
        edges = ranked[[round(i * n / n_bins) for i in range(1, n_bins) if 0 < round(i * n / n_bins) < n]]
        which = np.searchsorted(edges, conf, side="right")
    else:
        which = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), conf, side="right") - 1
    parts = [p for p in (np.flatnonzero(which == b) for b in np.unique(which)) if p.size]
    return (
        np.array([conf[p].mean() for p in parts]),
        np.array([hit[p].mean() for p in parts]),
        np.array([p.size for p in parts], dtype=np.int64),
    )


def expected_calibration_error(
    yi: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS, positive: int = 1, equal_mass: bool = False
) -> float:
    """ECE over 15 equal-width bins (torchmetrics' binary/multiclass calibration error, L1): sum over bins of
    count/n * |confidence - frequency|; ``equal_mass`` bins instead (see :func:`reliability_bins`)."""
    conf, freq, count = reliability_bins(yi, proba, n_bins, positive, equal_mass)
    if count.sum() == 0:
        return float("nan")
    return float(np.sum(count * np.abs(conf - freq)) / count.sum())


def expected_calibration_error_equal_mass(yi: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS, positive: int = 1) -> float:
    """ECE over equal-mass bins (what mito called ``ece`` before issue 23; the leaderboard's ``ece_equal_mass``)."""
    return expected_calibration_error(yi, proba, n_bins, positive, equal_mass=True)


def calibrated_ece(proba: np.ndarray, positive: int = 1, n_rep: int = 200, seed: int = 0, n_bins: int = ECE_BINS) -> float:
    """The mean ECE of a perfectly calibrated model with these predictions: labels drawn ``n_rep`` times so that each
    row is a hit with probability its confidence (:func:`calibration_pairs`). ECE's upward bias at this many rows."""
    proba = np.asarray(proba, dtype=np.float64)
    if len(proba) == 0:
        return float("nan")
    conf = proba[:, positive] if proba.shape[1] == 2 else proba.max(axis=1)
    rng = np.random.default_rng(seed)
    which = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), conf, side="right") - 1
    sum_conf = np.bincount(which, weights=conf, minlength=n_bins + 1)
    hits = rng.random((n_rep, len(conf))) < conf
    hit_sums = np.stack([np.bincount(which, weights=h, minlength=n_bins + 1) for h in hits.astype(np.float64)])
    return float(np.mean(np.abs(hit_sums - sum_conf).sum(axis=1)) / len(conf))


def brier_score(yi: np.ndarray, proba: np.ndarray, positive: int = 1) -> float:
    """Brier score (scikit-learn's): mean squared error of the positive-class probability (column ``positive``) with
    two classes, of the whole probability vector against the one-hot truth (summed over classes) with more."""
    yi = np.asarray(yi, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if len(yi) == 0:
        return float("nan")
    if proba.shape[1] == 2:
        return float(skm.brier_score_loss(yi == positive, proba[:, positive], pos_label=True))
    return float(skm.brier_score_loss(yi, proba, labels=list(range(proba.shape[1]))))


def metric_score(name: str, yi: np.ndarray, proba: np.ndarray, positive: int = 1) -> float:
    """One metric of :data:`METRIC_NAMES` from class indices ``yi`` and probabilities (columns = classes); two
    classes: PR-AUC of column ``positive``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; use one of {', '.join(METRIC_NAMES)}")
    k = proba.shape[1]
    if name in ("auroc", "pr_auc"):
        present = np.unique(yi)
        if present.size < 2:
            return float("nan")
        if k == 2:
            fn = skm.roc_auc_score if name == "auroc" else skm.average_precision_score
            return float(fn(yi == positive, proba[:, positive]))
        onehot = np.eye(k)[yi][:, present]
        p = _present_proba(proba, present)
        if name == "auroc":
            return float(skm.roc_auc_score(onehot, p, average="macro", multi_class="ovr"))
        return float(skm.average_precision_score(onehot, p, average="macro"))
    pred = proba.argmax(axis=1)
    if name == "balanced_accuracy":
        return float(skm.balanced_accuracy_score(yi, pred))
    if name == "kappa":
        return float(skm.cohen_kappa_score(yi, pred, labels=list(range(k))))
    return float(skm.f1_score(yi, pred, average="weighted", labels=list(range(k)), zero_division=0))


def fold_summary(per_fold: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean and standard deviation (numpy's, ddof=0; NaN for a single fold) over folds of every metric in :data:`METRIC_NAMES` and :data:`CALIBRATION_NAMES`."""
    out: dict[str, float] = {}
    for name in (*METRIC_NAMES, *CALIBRATION_NAMES):
        vals = np.array([m.get(name, np.nan) for m in per_fold], dtype=np.float64)
        ok = vals[~np.isnan(vals)]
        out[name] = float(ok.mean()) if ok.size else float("nan")
        out[f"{name}_std"] = float(ok.std()) if ok.size > 1 else float("nan")
    return out


def per_class_summary(per_fold: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each class's recall and precision, mean over the folds where they are defined (NaN where none is)."""
    out: dict[str, dict[str, float]] = {}
    for c in map(str, classes):
        out[c] = {}
        for k in ("recall", "precision"):
            vals = np.array([float(m.get("per_class", {}).get(c, {}).get(k, float("nan"))) for m in per_fold], dtype=np.float64)
            ok = vals[~np.isnan(vals)]
            out[c][k] = float(ok.mean()) if ok.size else float("nan")
    return out


def per_class_line(per_class: dict[str, dict[str, float]]) -> str:
    """'recall / precision per class: a 0.71 / 0.55, b ...' ('–' where undefined: a class never predicted or absent)."""

    def f(v: Any) -> str:
        return "–" if v is None or v != v else f"{v:.2f}"

    return "recall / precision per class: " + ", ".join(f"{c} {f(d.get('recall'))} / {f(d.get('precision'))}" for c, d in per_class.items())


def confusion_metric(name: str, cm: np.ndarray) -> np.ndarray:
    """Balanced accuracy, kappa or weighted F1 of a stack of confusion matrices (..., K, K; rows = truth).

    The same formulas as scikit-learn's scorers (tested against them); used to score thousands of
    bootstrap replicates at once.
    """
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    total = support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN replicate (no class present) stays NaN
        if name == "balanced_accuracy":
            recall = np.where(support > 0, diag / support, np.nan)
            return np.nanmean(recall, axis=-1)
        if name == "kappa":
            po = diag.sum(axis=-1) / total
            pe = (support * predicted).sum(axis=-1) / total**2
            return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)
        if name == "weighted_f1":
            denom = support + predicted
            f1 = np.where(denom > 0, 2 * diag / denom, 0.0)
            return (f1 * support).sum(axis=-1) / total
    raise ValueError(f"{name!r} is not a confusion-matrix metric")


def bootstrap_replicates(
    yi: np.ndarray,
    proba: np.ndarray,
    metric: str,
    fold: np.ndarray | None = None,
    tile: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    positive: int = 1,
    universe: np.ndarray | None = None,
) -> np.ndarray:
    """The mean-over-folds ``metric`` of ``n_boot`` bootstrap replicates (NaN where a replicate cannot be scored).

    ``yi`` holds class indices (columns of ``proba``). Each prediction row belongs to a ``fold`` and a ``tile``; a
    tile scored by several folds (a shared test split) is drawn once per replicate and counts in every fold that
    scored it. Without ``fold``/``tile`` every row is its own tile in a single fold. The draws depend only on the
    sorted distinct tiles, ``n_boot`` and ``seed``: two prediction sets on the same tiles get the same resamples.
    ``universe`` (a superset of ``tile``): draw over its distinct tiles instead, so prediction sets on different
    subsets of one tile table (e.g. two tasks) share each replicate's draws.
    """
    yi = np.asarray(yi, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n = len(yi)
    fold = np.zeros(n, np.int64) if fold is None else np.asarray(fold)
    tile = np.arange(n) if tile is None else np.asarray(tile)
    tpos, counts = tile_draw_counts(tile, n_boot, np.random.default_rng(seed), universe)
    per_fold = []
    for f in np.unique(fold):
        sel = np.flatnonzero(fold == f)
        per_fold.append(weighted_metric(metric, yi[sel], proba[sel], counts[:, tpos[sel]], positive))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.vstack(per_fold), axis=0) if per_fold else np.full(n_boot, np.nan)


def tile_draw_counts(
    tile: np.ndarray, n_boot: int, rng: np.random.Generator, universe: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's index among the sorted distinct tiles, and how often each tile is drawn in each of ``n_boot``
    replicates (tiles drawn with replacement); ``universe``: the tiles to draw from (a superset of ``tile``)."""
    if universe is None:
        tiles, tpos = np.unique(tile, return_inverse=True)
    else:
        tiles = np.unique(universe)
        tpos = np.searchsorted(tiles, tile)
        if tile.size and (tpos.max() >= tiles.size or not np.array_equal(tiles[tpos], tile)):
            raise ValueError("universe must hold every tile")
    draws = rng.integers(0, tiles.size, (n_boot, tiles.size))
    counts = np.zeros((n_boot, tiles.size), np.int32)
    np.add.at(counts, (np.repeat(np.arange(n_boot), tiles.size), draws.ravel()), 1)
    return tpos, counts


def weighted_metric(metric: str, yi: np.ndarray, proba: np.ndarray, weights: np.ndarray, positive: int = 1) -> np.ndarray:
    """``metric`` of each row of ``weights`` (replicates x samples: how often each sample counts); NaN where a
    replicate cannot be scored; two classes: column ``positive`` is the positive class. Confusion-matrix metrics and binary AUROC are computed for all replicates at once."""
    n_boot, k = len(weights), proba.shape[1]
    if metric in ("balanced_accuracy", "kappa", "weighted_f1"):
        cell = yi * k + proba.argmax(axis=1)
        cm = np.zeros((n_boot, k * k))
        for c in np.unique(cell):
            cm[:, c] = weights[:, cell == c].sum(axis=1)
        return confusion_metric(metric, cm.reshape(n_boot, k, k))
    if metric == "auroc" and k == 2:
        return weighted_binary_auc(yi == positive, proba[:, positive], weights)
    vals = np.empty(n_boot)
    rows_all = np.arange(len(yi))
    for b in range(n_boot):
        rows = np.repeat(rows_all, weights[b])
        vals[b] = metric_score(metric, yi[rows], proba[rows], positive) if rows.size else np.nan
    return vals


def weighted_binary_auc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray, block: int = 64) -> np.ndarray:
    """Binary AUROC (Mann-Whitney, ties count one half: scikit-learn's value) of each row of ``weights`` (replicates x
    samples: how often each sample counts), all replicates at once; NaN where a replicate lacks a class."""
    positive = np.asarray(positive, bool)
    order = np.argsort(score, kind="stable")
    _, start = np.unique(np.asarray(score)[order], return_index=True)
    pos_sorted = positive[order]
    out = np.empty(len(weights))
    for b in range(0, len(weights), block):  # memory grows with the block, not with the number of replicates
        w = np.asarray(weights[b : b + block], dtype=np.float64)[:, order]
        neg = np.add.reduceat(np.where(pos_sorted, 0.0, w), start, axis=1)
        pos = np.add.reduceat(np.where(pos_sorted, w, 0.0), start, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        num = (pos * (below + 0.5 * neg)).sum(axis=1)
        denom = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[b : b + block] = np.where(denom > 0, num / np.where(denom > 0, denom, 1), np.nan)
    return out


def bootstrap_ci(
    y_true: Sequence[Any],
    proba: np.ndarray,
    classes: Sequence[Any],
    metric: str = "balanced_accuracy",
    fold: np.ndarray | None = None,
    tile: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    positive: Any = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean-over-folds ``metric``, resampling tiles with replacement (two
    classes: ``positive`` is the positive class label, as in :func:`classification_metrics`).

    Each prediction row belongs to a ``fold`` and a ``tile``; a tile scored by several folds (a shared test
    split) is drawn once per replicate and counts in every fold that scored it. Without ``fold``/``tile``
    every row is its own tile in a single fold (see :func:`bootstrap_replicates`).
    """
    index = {c: i for i, c in enumerate(classes)}
    yi = np.array([index[v] for v in np.asarray(y_true)], dtype=np.int64)
    pos = positive_index(classes, positive) if len(classes) == 2 else 1
    stats = bootstrap_replicates(yi, proba, metric, fold=fold, tile=tile, n_boot=n_boot, seed=seed, positive=pos)
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap_delta(
    yi: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    metric: str = "balanced_accuracy",
    n_boot: int = 1000,
    seed: int = 0,
    positive: int = 1,
) -> dict[str, float]:
    """metric(a) - metric(b) on the same rows, with a paired bootstrap (both scored on the same resampled rows per
    replicate): the two values, the difference, its 95% percentile interval and a two-sided p-value (twice the
    smaller tail at 0, one added to numerator and denominator, so identical predictions get p = 1)."""
    yi = np.asarray(yi, dtype=np.int64)
    a, b = metric_score(metric, yi, proba_a, positive), metric_score(metric, yi, proba_b, positive)
    diffs = bootstrap_replicates(yi, proba_a, metric, n_boot=n_boot, seed=seed, positive=positive) - bootstrap_replicates(
        yi, proba_b, metric, n_boot=n_boot, seed=seed, positive=positive
    )
    d = diffs[~np.isnan(diffs)]
    if d.size == 0:
        return {"metric_a": a, "metric_b": b, "delta": a - b, "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    tails = [(np.count_nonzero(d <= 0) + 1) / (d.size + 1), (np.count_nonzero(d >= 0) + 1) / (d.size + 1)]
    lo, hi = np.percentile(d, [2.5, 97.5])
    return {
        "metric_a": a,
        "metric_b": b,
        "delta": a - b,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(min(1.0, 2 * min(tails))),
    }
