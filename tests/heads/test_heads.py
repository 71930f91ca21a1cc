"""The shared head contract, run over every registered head: fit, predict_proba, save/load, params, noise, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score

from mito.heads import HEAD_NAMES, HeadError, load_head, make_head, noise_variance
from mito.heads.torch_heads import first_layer_noise, focal_loss

FAST = {
    "mlp": {"epochs": 20, "hidden": 32, "batch_size": 64},
    "linear": {"epochs": 20, "batch_size": 64, "lr": 0.01},
    "lightgbm": {"n_estimators": 30},
}


def blobs(n: int = 240, d: int = 24, seed: int = 0, labels: tuple = ("Atypical", "Normal")) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced, overlapping two-class Gaussian data (1 in 4 minority)."""
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < 0.25, labels[0], labels[1])
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d) + (y == labels[0])[:, None] * np.r_[np.ones(4), np.zeros(d - 4)]
    return X.astype(np.float32), y


def head(name: str, **kw: object):
    return make_head(name, **{**FAST.get(name, {}), **kw})


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_fit_predict_save_load_identical(name: str, tmp_path: Path) -> None:
    X, y = blobs()
    Xv, yv = blobs(80, seed=1)
    h = head(name).fit(X, y, eval_set=(Xv, yv))
    assert list(h.classes_) == ["Atypical", "Normal"]
    p = h.predict_proba(Xv)
    assert p.shape == (80, 2) and np.allclose(p.sum(1), 1) and (p >= 0).all()
    assert set(h.predict(Xv)) <= {"Atypical", "Normal"}
    ba = balanced_accuracy_score(yv, h.predict(Xv))
    assert ba > 0.65, f"{name} did not learn: balanced accuracy {ba:.2f}"
    h.save(tmp_path / name)
    h2 = load_head(tmp_path / name)
    assert type(h2) is type(h) and h2.get_params() == h.get_params()
    np.testing.assert_array_equal(h2.predict_proba(Xv), p)
    np.testing.assert_array_equal(h2.predict(Xv), h.predict(Xv))


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_params_clone_and_int_labels_float16(name: str) -> None:
    h = head(name, seed=3)
    c = clone(h)
    assert c.get_params() == h.get_params() and not hasattr(c, "classes_")
    X, y = blobs(labels=(1, 0))
    c.fit(X.astype(np.float16), y)
    assert c.classes_.tolist() == [0, 1]
    assert c.predict(X[:5].astype(np.float16)).dtype.kind == "i"


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_noise_train_only_and_seeded(name: str) -> None:
    X, y = blobs()
    Xv, yv = blobs(60, seed=2)
    noisy = head(name, noise=0.5, seed=1).fit(X, y, eval_set=(Xv, yv))
    p1, p2 = noisy.predict_proba(Xv), noisy.predict_proba(Xv)
    np.testing.assert_array_equal(p1, p2)  # no noise at prediction time
    again = head(name, noise=0.5, seed=1).fit(X, y, eval_set=(Xv, yv))
    np.testing.assert_array_equal(again.predict_proba(Xv), p1)  # seeded
    clean = head(name, noise=0.0, seed=1).fit(X, y, eval_set=(Xv, yv))
    if name != "knn":  # knn with noisy copies still votes among mostly-clean neighbours; probas may coincide
        assert not np.array_equal(clean.predict_proba(Xv), p1), "noise had no effect on training"


def test_noise_variance_modes() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 3)) * np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(noise_variance(X, 0.5, "per-dim"), 0.25 * np.array([1, 4, 16]), rtol=0.06)
    g = noise_variance(X, 0.5, "global")
    np.testing.assert_allclose(g, 0.25 * 7, rtol=0.06)
    assert np.ptp(g) == 0
    np.testing.assert_array_equal(noise_variance(X, 0.5, "absolute"), 0.25)
    assert not noise_variance(X, 0.0, "per-dim").any()


def test_first_layer_noise_matches_input_noise() -> None:
    """L z in the first layer's output space has the covariance of W e for e ~ N(0, diag(var)) on the embeddings."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 40, generator=g)
    var = torch.rand(40, generator=g) + 0.1
    draws = first_layer_noise(W, var, 200_000, g)
    want = (W * var) @ W.T
    np.testing.assert_allclose(torch.cov(draws.T).numpy(), want.numpy(), atol=0.05 * want.diagonal().max().item())
    # and gradients reach W through the Cholesky factor
    Wp = W.clone().requires_grad_(True)
    first_layer_noise(Wp, var, 10, g).pow(2).sum().backward()
    assert Wp.grad is not None and Wp.grad.abs().sum() > 0


def test_focal_gamma0_is_weighted_ce() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 3, generator=g), torch.randint(0, 3, (50,), generator=g)
    w = torch.tensor([3.0, 1.0, 0.5])
    torch.testing.assert_close(focal_loss(logits, y, 0.0, w), torch.nn.functional.cross_entropy(logits, y, weight=w))
    assert focal_loss(logits, y, 2.0, None) < focal_loss(logits, y, 0.0, None)


def test_early_stopping_restores_best_epoch() -> None:
    X, y = blobs()
    Xv, yv = blobs(80, seed=1)
    h = make_head("mlp", hidden=16, epochs=200, patience=3, lr=0.01).fit(X, y, eval_set=(Xv, yv))
    assert h.epochs_run_ < 200 and h.epochs_run_ - h.best_epoch_ == 3
    best = max(r["val_balanced_accuracy"] for r in h.history_)
    assert h.history_[h.best_epoch_ - 1]["val_balanced_accuracy"] == best


def test_balanced_sampler_and_ce_train() -> None:
    X, y = blobs()
    h = make_head("mlp", hidden=16, epochs=5, balance="sampler", loss="ce").fit(X, y)
    assert h.epochs_run_ == 5 and h.predict_proba(X).shape == (len(X), 2)


@pytest.mark.parametrize(
    ("name", "kw", "msg"),
    [
        ("tree", {}, "unknown head 'tree'"),
        ("mlp", {"n_neighbors": 3}, "no option n_neighbors"),
        ("mlp", {"noise": -1.0}, "noise must be a number >= 0"),
        ("mlp", {"noise_mode": "radial"}, "noise_mode must be one of"),
        ("mlp", {"loss": "hinge"}, "loss must be one of"),
        ("mlp", {"hidden": 0}, "hidden must be"),
        ("mlp", {"dropout": 1.0}, "dropout must be a number in"),
        ("linear", {"balance": "smote"}, "balance must be one of"),
        ("logreg", {"C": -1}, "C must be"),
        ("knn", {"n_neighbors": 0}, "n_neighbors must be"),
        ("lightgbm", {"subsample": 0.0}, "subsample must be"),
        ("knn", {"noise_copies": -2}, "noise_copies must be"),
    ],
)
def test_bad_options(name: str, kw: dict, msg: str) -> None:
    with pytest.raises(HeadError, match=msg):
        make_head(name, **kw)


def test_bad_inputs() -> None:
    X, y = blobs(60)
    h = head("mlp")
    with pytest.raises(HeadError, match="two classes"):
        h.fit(X, np.full(60, "Normal"))
    with pytest.raises(HeadError, match="one label per row"):
        h.fit(X, y[:-1])
    bad = X.copy()
    bad[3, 3] = np.nan
    with pytest.raises(HeadError, match="NaN"):
        h.fit(bad, y)
    with pytest.raises(HeadError, match="not fitted"):
        h.predict(X)
    with pytest.raises(HeadError, match=r"eval_set must be a pair \(X_val, y_val\)"):
        h.fit(X, y, eval_set=(X, None))
    with pytest.raises(HeadError, match="which no training row has"):
        h.fit(X, y, eval_set=(X, np.full(60, "Mitosis-like")))
    h.fit(X, y)
    with pytest.raises(HeadError, match="trained on 24"):
        h.predict_proba(X[:, :10])
    with pytest.raises(HeadError, match="needs a validation set"):
        make_head("logreg", C="auto").fit(X, y)
    with pytest.raises(HeadError, match="no saved head"):
        load_head("/nonexistent/head")


def test_thread_and_precision_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from mito.heads import base
    from mito.heads.torch_heads import resolve_precision

    assert base.default_threads(1000, 8) == 1
    idle = base.idle_cores(0.05)
    assert idle is not None and 0 <= idle <= len(os.sched_getaffinity(0)) + 1e-9
    monkeypatch.setattr(base, "idle_cores", lambda: 2.6)
    assert base.default_threads(10**9, 8) == 3 and base.default_threads(10**9, 2) == 2
    monkeypatch.setattr(base, "idle_cores", lambda: 0.2)
    assert base.default_threads(10**9, 8) == 1
    monkeypatch.setattr(base, "idle_cores", lambda: None)  # no /proc/stat: the load average decides
    monkeypatch.setattr(base.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(base.os, "getloadavg", lambda: (5.2, 0.0, 0.0))
    assert base.default_threads(10**9, 8) == 3  # three cores idle
    monkeypatch.setattr(base.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert base.default_threads(10**9, 8) == 1
    assert resolve_precision("auto", 1000) == "fp32" and resolve_precision("bf16", 1000) == "bf16"
    with pytest.raises(HeadError, match="n_threads must be"):
        make_head("logreg", n_threads=0)
    with pytest.raises(HeadError, match="precision must be one of"):
        make_head("mlp", precision="fp8")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_is_exact_whatever_the_batch_threads_or_reload(metric: str, tmp_path: Path) -> None:
    from threadpoolctl import threadpool_limits

    X, y = blobs(300, 64, seed=3)
    X = X.astype(np.float16).astype(np.float32)  # store values
    head = make_head("knn", metric=metric).fit(X, y)
    full = head.predict_proba(X)
    # a training row is its own neighbour at distance exactly 0: all its weight goes to its own class
    assert (full.max(axis=1) == 1.0).all() and (head.classes_[full.argmax(axis=1)] == y).all()
    Q = X[::7] + np.float32(0.01)
    ref = head.predict_proba(Q)
    one_by_one = np.concatenate([head.predict_proba(Q[i : i + 1]) for i in range(len(Q))])
    rev = head.predict_proba(Q[::-1])[::-1]
    with threadpool_limits(1):
        single = head.predict_proba(Q)
    head.save(tmp_path / "knn")
    again = load_head(tmp_path / "knn").predict_proba(Q)
    for other in (one_by_one, rev, single, again, make_head("knn", metric=metric, n_threads=2).fit(X, y).predict_proba(Q)):
        np.testing.assert_array_equal(other, ref)
