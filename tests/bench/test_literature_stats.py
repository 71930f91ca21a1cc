"""Issue 23 part 3: ECE as torchmetrics defines it, DeLong's undefined variance and DeLong's AUROC interval (pROC)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchmetrics.functional.classification as tm
from scipy import stats as sps

from mito.bench.errors import BenchError
from mito.bench.stats import compare_predictions, delong_ci, delong_folds, delong_test
from mito.core.metrics import (
    calibrated_ece,
    classification_metrics,
    expected_calibration_error,
    expected_calibration_error_equal_mass,
)


def binary_case(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and miscalibrated two-column probabilities, with saturated (exactly 0 and 1) and tied (0.5) rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    p1[:10], p1[10:20], p1[20:30] = 1.0, 0.0, 0.5
    return y, np.column_stack([1 - p1, p1])


def test_binary_ece_is_torchmetrics_binary_calibration_error() -> None:
    y, proba = binary_case()
    ref = float(tm.binary_calibration_error(torch.tensor(proba[:, 1]), torch.tensor(y), n_bins=15, norm="l1"))
    assert expected_calibration_error(y, proba) == pytest.approx(ref, abs=1e-12)
    assert classification_metrics(y, proba, [0, 1], positive=1)["ece"] == pytest.approx(ref, abs=1e-12)
    # the positive class is column 0: the confidence is that column, the truth y == 0
    ref0 = float(tm.binary_calibration_error(torch.tensor(proba[:, 0]), torch.tensor(1 - y), n_bins=15, norm="l1"))
    assert classification_metrics(y, proba, [0, 1], positive=0)["ece"] == pytest.approx(ref0, abs=1e-12)
    assert ref != pytest.approx(expected_calibration_error_equal_mass(y, proba), abs=1e-3)  # the two binnings differ


def test_multiclass_ece_is_torchmetrics_top_label_calibration_error() -> None:
    rng = np.random.default_rng(3)
    n, k = 500, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 2.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = proba.astype(np.float32)  # torchmetrics bins top-label confidences in float32 (as mito keeps predictions)
    proba[:5] = np.eye(k, dtype=np.float32)[y[:5]]  # confidence exactly 1: a bin of its own in torchmetrics
    ref = float(tm.multiclass_calibration_error(torch.tensor(proba), torch.tensor(y), num_classes=k, n_bins=15, norm="l1"))
    assert expected_calibration_error(y, proba.astype(np.float64)) == pytest.approx(ref, abs=1e-6)
    m = classification_metrics(y, proba / proba.sum(axis=1, keepdims=True, dtype=np.float64), list(range(k)))
    assert m["ece"] == pytest.approx(ref, abs=1e-6)
    assert m["ece_equal_mass"] == pytest.approx(expected_calibration_error_equal_mass(y, proba.astype(np.float64)))


def test_calibrated_ece_is_the_mean_ece_of_labels_drawn_from_the_confidences() -> None:
    rng = np.random.default_rng(5)
    c = rng.random(150)
    proba = np.column_stack([1 - c, c])
    draws = np.random.default_rng(7).random((50, 150)) < c
    brute = np.mean([expected_calibration_error(d.astype(np.int64), proba) for d in draws])
    assert calibrated_ece(proba, 1, n_rep=50, seed=7) == pytest.approx(brute, abs=1e-12)
    # the bias shrinks with the fold size (roughly as 1/sqrt(n)): 0.12 at 100 uniform confidences, 0.04 at 800
    small = calibrated_ece(np.column_stack([1 - rng.random(100), rng.random(100)]), 1)
    big = calibrated_ece(np.column_stack([1 - (u := rng.random(800)), u]), 1)
    assert 0.08 < small < 0.16 and 0.03 < big < 0.06


# ------------------------------------------------------------------ DeLong, literally (DeLong 1988; Sun & Xu 2014 eq. 2-5)
def literal_delong_variance(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance with an O(mn) loop over (positive, negative) pairs."""
    m, n = len(pos), len(neg)
    psi = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            psi[i, j] = 1.0 if pos[i] > neg[j] else (0.5 if pos[i] == neg[j] else 0.0)
    auc = psi.sum() / (m * n)
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


def test_delong_ci_matches_the_literal_formula_and_caps_at_one() -> None:
    y, proba = binary_case(120, seed=2)
    s = np.round(proba[:, 1], 2)  # ties
    auc, var = literal_delong_variance(s[y == 1], s[y == 0])
    z = sps.norm.ppf(0.975)
    lo, hi = delong_ci(y == 1, s)
    assert (lo, hi) == pytest.approx((auc - z * math.sqrt(var), min(1.0, auc + z * math.sqrt(var))), abs=1e-12)
    # k disjoint folds: mean of the fold AUCs, variance = sum of the fold variances / k^2
    fold = np.arange(120) % 3
    parts = [literal_delong_variance(s[(fold == f) & (y == 1)], s[(fold == f) & (y == 0)]) for f in range(3)]
    mean, se = np.mean([a for a, _ in parts]), math.sqrt(sum(v for _, v in parts) / 9)
    assert delong_ci(y == 1, s, fold, np.arange(120)) == pytest.approx((mean - z * se, min(1.0, mean + z * se)), abs=1e-12)
    # a near-perfect score: the upper bound is capped to 1, as pROC's ci.auc
    yy = np.r_[np.ones(8, int), np.zeros(8, int)]
    near = np.r_[np.linspace(0.55, 0.9, 8), np.linspace(0.1, 0.45, 7), 0.6]
    a, v = literal_delong_variance(near[yy == 1], near[yy == 0])
    assert a + z * math.sqrt(v) > 1 and delong_ci(yy == 1, near) == pytest.approx((a - z * math.sqrt(v), 1.0), abs=1e-12)


def test_delong_with_one_case_in_a_class_has_no_variance() -> None:
    rng = np.random.default_rng(4)
    y = np.r_[1, np.zeros(40, int)]
    a, b = rng.random(41), rng.random(41)
    with pytest.raises(BenchError, match="fewer than 2 cases in a class .1 positive, 40 negative"):
        delong_test(y, a, b)
    with pytest.raises(BenchError, match="test fold 1: DeLong's variance is undefined"):  # a fold of k-fold with one positive
        delong_folds(
            np.r_[y, 1, 1, 0, 0],
            np.r_[a, 0.9, 0.8, 0.1, 0.2],
            np.r_[b, 0.9, 0.8, 0.1, 0.2],
            np.r_[np.ones(41, int), np.zeros(4, int)],
            np.arange(45),
        )
    assert all(math.isnan(v) for v in delong_ci(y, a))
    # a leaderboard comparison: no DeLong p-value, the reason in the note (the bootstrap still runs)
    pa, pb = np.column_stack([1 - a, a]), np.column_stack([1 - b, b])
    preds = {"fold": np.zeros(41, np.int64), "row": np.arange(41), "y": y, "positive": np.array(1)}
    c = compare_predictions({**preds, "proba": pa}, {**preds, "proba": pb}, ["balanced_accuracy"], n_boot=50)
    assert c.delong is None and "DeLong's variance is undefined with fewer than 2 cases in a class (1 positive, 40 negative)" in c.note
