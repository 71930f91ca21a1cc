"""Paired statistics against brute force and published values: paired bootstrap, DeLong, Holm, Friedman + Nemenyi."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from mito.bench.stats import (
    bootstrap_p_value,
    delong_folds,
    delong_test,
    friedman_nemenyi,
    holm,
    nemenyi_q,
    paired_bootstrap,
)
from mito.core.metrics import metric_score


def two_rows(n: int = 300, seed: int = 0, gap: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary labels, a good row's and a weak row's probabilities (two columns)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = 1 / (1 + np.exp(-(gap * (2 * y - 1) + rng.normal(0, 1, n))))
    weak = 1 / (1 + np.exp(-(0.3 * (2 * y - 1) + rng.normal(0, 1, n))))
    return y, np.column_stack([1 - good, good]), np.column_stack([1 - weak, weak])


def brute_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """DeLong et al. (1988) literally: psi kernel over all (positive, negative) pairs, components, covariance, z."""
    pos, neg = y == 1, y == 0

    def comps(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, yy = s[pos][:, None], s[neg][None, :]
        psi = (x > yy) + 0.5 * (x == yy)
        return psi.mean(axis=1), psi.mean(axis=0)

    (a10, a01), (b10, b01) = comps(a), comps(b)
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (a10.mean() - b10.mean()) / math.sqrt(var)
    return a10.mean(), b10.mean(), z, 2 * (1 - sps.norm.cdf(abs(z)))


def test_delong_matches_brute_force_and_sklearn() -> None:
    y, pa, pb = two_rows(120, seed=1)
    a = np.round(pa[:, 1], 2)  # rounded: ties, which the midranks must count one half
    b = np.round(pb[:, 1], 1)
    r = delong_test(y, a, b)
    auc_a, auc_b, z, p = brute_delong(y, a, b)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert (r.auc_a, r.auc_b) == pytest.approx((auc_a, auc_b), abs=1e-12)
    assert r.z == pytest.approx(z, rel=1e-9)
    assert r.p_value == pytest.approx(p, rel=1e-6)
    assert r.delta == pytest.approx(auc_a - auc_b)
    assert r.p_value < 0.01


def test_delong_identical_scores_and_symmetry() -> None:
    y, pa, pb = two_rows(80, seed=2)
    same = delong_test(y, pa[:, 1], pa[:, 1])
    assert same.delta == 0 and same.p_value == 1.0
    ab, ba = delong_test(y, pa[:, 1], pb[:, 1]), delong_test(y, pb[:, 1], pa[:, 1])
    assert ab.z == pytest.approx(-ba.z) and ab.p_value == pytest.approx(ba.p_value)


def test_delong_folds() -> None:
    y, pa, pb = two_rows(200, seed=3)
    tile = np.arange(200)
    # disjoint folds: mean of the fold AUCs, variance = sum of fold variances / F^2
    fold = np.arange(200) % 2
    r = delong_folds(y, pa[:, 1], pb[:, 1], fold, tile)
    parts = [delong_test(y[fold == f], pa[fold == f, 1], pb[fold == f, 1]) for f in (0, 1)]
    assert r.auc_a == pytest.approx(np.mean([p.auc_a for p in parts]))
    assert r.se == pytest.approx(math.sqrt(sum(p.se**2 for p in parts)) / 2)
    # one fold: plain DeLong
    one = delong_folds(y, pa[:, 1], pb[:, 1], np.zeros(200), tile)
    assert one.p_value == pytest.approx(delong_test(y, pa[:, 1], pb[:, 1]).p_value)
    # the same tiles scored twice by identical models: the same as once
    twice = delong_folds(
        np.r_[y, y], np.r_[pa[:, 1], pa[:, 1]], np.r_[pb[:, 1], pb[:, 1]], np.r_[np.zeros(200), np.ones(200)], np.r_[tile, tile]
    )
    assert twice.z == pytest.approx(one.z)


def test_paired_bootstrap_identical_rows() -> None:
    y, pa, _ = two_rows(100)
    r = paired_bootstrap(y, pa, pa, [0, 1], "balanced_accuracy", n_boot=200)
    assert r.delta == 0 and r.ci_low == 0 and r.ci_high == 0 and r.p_value == 1.0


def test_paired_bootstrap_better_row() -> None:
    y, pa, pb = two_rows(300)
    r = paired_bootstrap(y, pa, pb, [0, 1], "balanced_accuracy", n_boot=500, seed=1)
    assert r.delta == pytest.approx(metric_score("balanced_accuracy", y, pa) - metric_score("balanced_accuracy", y, pb))
    assert r.delta > 0.1 and 0 < r.ci_low < r.delta < r.ci_high
    assert r.p_value == pytest.approx(2 / 501)
    rev = paired_bootstrap(y, pb, pa, [0, 1], "balanced_accuracy", n_boot=500, seed=1)
    assert rev.delta == pytest.approx(-r.delta) and rev.ci_high == pytest.approx(-r.ci_low)


def test_paired_bootstrap_same_resamples_as_brute_force() -> None:
    """Replicate b draws the same tiles for both rows: a literal loop over the seeded draws gives the same interval."""
    y, pa, pb = two_rows(60, seed=4, gap=0.4)
    fold = np.r_[np.zeros(60), np.ones(60)].astype(int)  # a shared test split scored by two models
    tile = np.r_[np.arange(60), np.arange(60)]
    yy, qa, qb = np.r_[y, y], np.vstack([pa, pa[::-1]]), np.vstack([pb, pb])
    for metric in ("balanced_accuracy", "auroc"):
        r = paired_bootstrap(yy, qa, qb, [0, 1], metric, fold=fold, tile=tile, n_boot=150, seed=7)
        rng = np.random.default_rng(7)
        draws = rng.integers(0, 60, (150, 60))
        diffs = []
        for d in draws:
            per = []
            for f in (0, 1):
                rows = np.flatnonzero(fold == f)[d]  # tile t of fold f sits at row f * 60 + t
                per.append(metric_score(metric, yy[rows], qa[rows]) - metric_score(metric, yy[rows], qb[rows]))
            diffs.append(np.mean(per))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi), abs=1e-12)
        assert r.p_value == pytest.approx(bootstrap_p_value(np.array(diffs)))


def test_bootstrap_p_value_by_hand() -> None:
    # 3 of 9 replicates <= 0, 7 >= 0 (one tie): p = 2 * (3 + 1) / 10
    assert bootstrap_p_value(np.array([-2, -1, 0, 1, 2, 3, 4, 5, 6.0])) == pytest.approx(0.8)
    assert bootstrap_p_value(np.arange(1, 100.0)) == pytest.approx(2 / 100)


def test_holm_hand_example() -> None:
    # p sorted: 0.01, 0.02, 0.03, 0.04 -> 4*0.01, 3*0.02, max(2*0.03, .06), max(.04, .06); NaN stays out
    p = [0.03, 0.01, np.nan, 0.04, 0.02]
    assert np.allclose(holm(p), [0.06, 0.04, np.nan, 0.06, 0.06], equal_nan=True)
    assert np.allclose(holm([0.5, 0.9, 0.6]), [1.0, 1.0, 1.0])
    assert np.allclose(holm([0.001, 0.3]), [0.002, 0.3])


def test_nemenyi_q_matches_demsar_table() -> None:
    # Demšar (2006), Table 5(a), alpha = 0.05
    table = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in table.items():
        assert nemenyi_q(k) == pytest.approx(q, abs=1e-3)


def test_friedman_nemenyi() -> None:
    scores = np.array([[0.9, 0.8, 0.7], [0.85, 0.86, 0.6], [0.7, 0.6, 0.5], [0.95, 0.9, 0.9]])
    r = friedman_nemenyi(scores, ["a", "b", "c"])
    assert r.mean_ranks == pytest.approx([1.25, 1.875, 2.875])
    stat, p = sps.friedmanchisquare(*scores.T)
    assert (r.statistic, r.p_value) == pytest.approx((stat, p))
    assert r.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), abs=1e-3)
    two = friedman_nemenyi(scores[:, :2], ["a", "b"])
    assert math.isnan(two.statistic) and two.mean_ranks == pytest.approx([1.25, 1.75])


def test_delong_standard_error_agrees_with_the_bootstrap() -> None:
    """An independent check of DeLong's variance: the spread of the paired-bootstrap AUROC difference (seeded)."""
    from mito.core.metrics import bootstrap_replicates

    y, pa, pb = two_rows(400, seed=5, gap=0.8)
    d = delong_test(y, pa[:, 1], pb[:, 1])
    diffs = bootstrap_replicates(y, pa, "auroc", n_boot=400, seed=1) - bootstrap_replicates(y, pb, "auroc", n_boot=400, seed=1)
    assert d.se == pytest.approx(np.std(diffs), rel=0.15)
