"""Metrics against hand-computed cases, fold summaries and the bootstrap interval."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from mito.core.metrics import bootstrap_ci, classification_metrics, confusion_metric, fold_summary, metric_score

# five tiles: truth A A B B B, predicted A B B B A (P(B) = 0.1 0.6 0.7 0.8 0.4)
Y = ["A", "A", "B", "B", "B"]
PB = np.array([0.1, 0.6, 0.7, 0.8, 0.4])
PROBA = np.column_stack([1 - PB, PB])


def test_binary_metrics_match_hand_computation() -> None:
    m = classification_metrics(Y, PROBA, ["A", "B"])
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # recall A 1/2, recall B 2/3
    assert m["kappa"] == pytest.approx((3 / 5 - 13 / 25) / (1 - 13 / 25))  # po 3/5, pe (2*2 + 3*3)/25
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 3 * (2 / 3)) / 5)  # F1 A 1/2, F1 B 2/3
    assert m["auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (B, A) pairs ranked right
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4) / 3)  # precision at each B: 1/1, 2/2, 3/4


def test_multiclass_metrics() -> None:
    y = ["a", "b", "c", "a", "b", "c"]
    perfect = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, perfect, ["a", "b", "c"])
    assert (m["balanced_accuracy"], m["auroc"], m["kappa"], m["weighted_f1"]) == (1.0, 1.0, 1.0, 1.0)
    # every tile predicted "a": balanced accuracy 1/3, kappa 0; AUROC one-vs-rest by hand
    p = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.4, 0.2, 0.4], [0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.5, 0.1, 0.4]])
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["kappa"] == pytest.approx(0.0)
    # a vs rest: a scores 0.5, 0.9 vs 0.6, 0.4, 0.5, 0.5 -> (0.5: >0.4, ties 0.5 x2 -> 1 + 0.5 + 0.5; <0.6) + (0.9: 4) = 6/8
    # b vs rest: b scores 0.3, 0.4 vs 0.3, 0.2, 0.05, 0.1 -> 0.3: 3.5, 0.4: 4 -> 7.5/8
    # c vs rest: c scores 0.4, 0.4 vs 0.2, 0.1, 0.05, 0.1 -> 8/8
    assert m["auroc"] == pytest.approx((6 / 8 + 7.5 / 8 + 1) / 3)


def test_metric_score_agrees_with_classification_metrics() -> None:
    m = classification_metrics(Y, PROBA, ["A", "B"])
    yi = np.array([0, 0, 1, 1, 1])
    for name in ("balanced_accuracy", "auroc", "kappa", "weighted_f1", "pr_auc"):
        assert metric_score(name, yi, PROBA) == pytest.approx(m[name])
    with pytest.raises(ValueError):
        metric_score("accuracy_top5", yi, PROBA)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="proba must be"):
        classification_metrics(Y, PROBA[:, :1], ["A", "B"])
    with pytest.raises(ValueError, match="not among the classes"):
        classification_metrics(["A", "A", "B", "B", "C"], PROBA, ["A", "B"])


def test_confusion_metric_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        for _ in range(30):
            y, p = rng.integers(0, k, 40), rng.integers(0, k, 40)
            cm = skm.confusion_matrix(y, p, labels=range(k))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = [
                    skm.balanced_accuracy_score(y, p),
                    skm.cohen_kappa_score(y, p, labels=list(range(k))),
                    skm.f1_score(y, p, average="weighted", labels=list(range(k)), zero_division=0),
                ]
            got = [confusion_metric(n, cm) for n in ("balanced_accuracy", "kappa", "weighted_f1")]
            np.testing.assert_allclose(got, ref, equal_nan=True)


def test_fold_summary_mean_and_std() -> None:
    s = fold_summary([{"balanced_accuracy": 0.5, "auroc": 0.6}, {"balanced_accuracy": 0.7, "auroc": 0.8}])
    assert s["balanced_accuracy"] == pytest.approx(0.6)
    assert s["balanced_accuracy_std"] == pytest.approx(0.1)
    assert s["auroc"] == pytest.approx(0.7)
    one = fold_summary([{"balanced_accuracy": 0.5}])
    assert one["balanced_accuracy"] == 0.5 and np.isnan(one["balanced_accuracy_std"])


def test_bootstrap_ci() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    classes = [0, 1]
    perfect = np.eye(2)[y]
    assert bootstrap_ci(y, perfect, classes, n_boot=200) == (1.0, 1.0)
    noisy = np.clip(np.eye(2)[y] * 0.3 + rng.random((400, 2)) * 0.7, 0, 1)
    fold = np.repeat(np.arange(4), 100)
    lo, hi = bootstrap_ci(y, noisy, classes, fold=fold, n_boot=500, seed=3)
    point = np.mean([metric_score("balanced_accuracy", y[fold == f], noisy[fold == f]) for f in range(4)])
    assert lo < point < hi and hi - lo < 0.2
    assert bootstrap_ci(y, noisy, classes, fold=fold, n_boot=500, seed=3) == (lo, hi)
    lo_a, hi_a = bootstrap_ci(y, noisy, classes, metric="auroc", fold=fold, n_boot=100)
    assert lo_a < metric_score("auroc", y, noisy) < hi_a
    # half the data -> a wider interval
    lo2, hi2 = bootstrap_ci(y[:100], noisy[:100], classes, n_boot=500, seed=3)
    assert hi2 - lo2 > hi - lo


def test_bootstrap_shared_test_split_draws_tiles_once() -> None:
    """Two folds scoring the same 50 tiles: replicates resample tiles, so identical folds give the one-fold interval."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 50)
    p = np.clip(np.eye(2)[y] * 0.4 + rng.random((50, 2)) * 0.6, 0, 1)
    one = bootstrap_ci(y, p, [0, 1], n_boot=300, seed=0)
    two = bootstrap_ci(
        np.tile(y, 2), np.vstack([p, p]), [0, 1], fold=np.repeat([0, 1], 50), tile=np.tile(np.arange(50), 2), n_boot=300, seed=0
    )
    assert two == pytest.approx(one)


def test_ece_and_brier_by_hand() -> None:
    from mito.core.metrics import brier_score, expected_calibration_error, reliability_bins

    # binary, 4 bins of 2 rows over the positive-class probability (sorted: .1 .2 | .3 .4 | .6 .7 | .8 .9)
    p1 = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    proba = np.column_stack([1 - p1, p1])
    conf, freq, count = reliability_bins(y, proba, n_bins=4)
    assert np.allclose(conf, [0.15, 0.35, 0.65, 0.85]) and np.allclose(freq, [0.5, 0.0, 0.5, 1.0]) and count.tolist() == [2, 2, 2, 2]
    assert expected_calibration_error(y, proba, n_bins=4) == pytest.approx((0.35 + 0.35 + 0.15 + 0.15) / 4)
    assert brier_score(y, proba) == pytest.approx(np.mean((p1 - y) ** 2))
    # multi-class: top-label confidence .7 .8 .4 .5 against argmax right/wrong 1 1 1 0; one bin of all four
    pm = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    ym = np.array([0, 1, 2, 1])
    assert expected_calibration_error(ym, pm, n_bins=1) == pytest.approx(abs(0.6 - 0.75))
    # equal mass: .4 .5 | .7 .8; equal width: [0, .5) holds .4, [.5, 1) holds .5 .7 .8
    assert expected_calibration_error(ym, pm, n_bins=2, equal_mass=True) == pytest.approx(0.5 * abs(0.45 - 0.5) + 0.5 * abs(0.75 - 1.0))
    assert expected_calibration_error(ym, pm, n_bins=2) == pytest.approx(0.25 * abs(0.4 - 1.0) + 0.75 * abs(2.0 / 3 - 2.0 / 3))
    assert brier_score(ym, pm) == pytest.approx((0.14 + 0.06 + 0.54 + 0.62) / 4)
    m = classification_metrics(ym, pm, [0, 1, 2])
    assert m["ece"] == pytest.approx(expected_calibration_error(ym, pm)) and m["brier"] == pytest.approx(0.34)
    s = fold_summary([m, m])
    assert s["ece"] == pytest.approx(m["ece"]) and s["brier_std"] == 0


def test_ece_keeps_equal_confidences_in_one_bin() -> None:
    from mito.core.metrics import expected_calibration_error, reliability_bins

    y = np.array([0, 1] * 10)
    flat = np.full((20, 2), 0.5)
    assert expected_calibration_error(y, flat) == 0.0  # perfectly calibrated, whatever the bins
    conf, freq, count = reliability_bins(y, flat, equal_mass=True)
    assert count.tolist() == [20]
    p1 = np.linspace(0.01, 0.99, 45)
    _, _, count = reliability_bins(np.zeros(45, int), np.column_stack([1 - p1, p1]), equal_mass=True)
    assert count.tolist() == [3] * 15


def test_weighted_binary_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from mito.core.metrics import weighted_binary_auc

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.3 * y, 1)  # many ties
    w = rng.integers(0, 3, (150, 60))
    got = weighted_binary_auc(y == 1, s, w, block=16)
    for b in range(150):
        rows = np.repeat(np.arange(60), w[b])
        want = roc_auc_score(y[rows], s[rows]) if len(np.unique(y[rows])) == 2 else np.nan
        assert got[b] == pytest.approx(want, abs=1e-12, nan_ok=True)
    assert np.isnan(weighted_binary_auc(np.ones(3, bool), np.arange(3.0), np.ones((1, 3))))[0]
