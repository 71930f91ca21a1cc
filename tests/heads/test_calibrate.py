"""Temperature scaling: recovers a known temperature, keeps every argmax, round trip through save/load/predict and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from typer.testing import CliRunner

from mito.cli import app
from mito.core.metrics import expected_calibration_error
from mito.heads import (
    FitConfig,
    HeadError,
    fit_head,
    load_model,
    make_fit_config,
    predict,
)
from mito.heads.calibrate import apply_temperature, fit_temperature, nll

RGB = "fakenet:z1:rgb"
runner = CliRunner()


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (20000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])
    overconfident = softmax(3.0 * z, axis=1)  # logits three times too large: T = 3 undoes it
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.05)
    fixed = apply_temperature(overconfident, t)
    assert np.allclose(fixed, softmax(z, axis=1), atol=0.03)
    assert nll(y, overconfident, t) < nll(y, overconfident)
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, overconfident) / 3
    assert (fixed.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    assert np.allclose(fixed.sum(axis=1), 1)


def test_apply_temperature_refuses_bad_values() -> None:
    with pytest.raises(HeadError, match="finite number > 0"):
        apply_temperature(np.array([[0.5, 0.5]]), 0.0)


@pytest.fixture(scope="module")
def pair(synth_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path, dict]:
    d = tmp_path_factory.mktemp("calib")
    common: dict = {"store": str(synth_store), "task": "mitosis", "features": [RGB], "head": "logreg", "split_column": "split", "seed": 3}
    plain = fit_head(FitConfig(out=str(d / "plain"), **common))
    calib = fit_head(FitConfig(out=str(d / "calib"), calibrate="temperature", **common))
    return d / "plain", plain, d / "calib", calib


def test_temperature_leaves_predictions_and_balanced_accuracy(pair: tuple[Path, dict, Path, dict]) -> None:
    _, plain, _, calib = pair
    assert calib["balanced_accuracy"] == plain["balanced_accuracy"]
    assert calib["confusion_matrix"] == plain["confusion_matrix"] and calib["kappa"] == plain["kappa"]
    c = calib["calibration"]
    assert c["method"] == "temperature" and c["temperature"] > 0 and c["temperature"] != pytest.approx(1.0)
    assert c["val_nll_after"] <= c["val_nll_before"]
    assert c["test_ece_before"] == pytest.approx(plain["ece"]) and calib["ece"] != pytest.approx(plain["ece"])
    assert "calibration" not in plain


def test_temperature_round_trip_save_load_predict(pair: tuple[Path, dict, Path, dict], synth_store: Path, tmp_path: Path) -> None:
    plain_dir, _, calib_dir, calib = pair
    t = json.loads((calib_dir / "config.json").read_text())["calibration"]["temperature"]
    assert t == calib["calibration"]["temperature"]
    a = predict(plain_dir, store=synth_store)
    b = predict(calib_dir, store=synth_store, out_csv=tmp_path / "p.csv")
    cols = ["p_Atypical", "p_Normal"]
    assert np.allclose(b[cols].to_numpy(), apply_temperature(a[cols].to_numpy(), t), atol=1e-12)
    assert not np.allclose(b[cols].to_numpy(), a[cols].to_numpy())
    assert (a["pred"] == b["pred"]).all()
    on_disk = pd.read_csv(tmp_path / "p.csv")
    assert np.allclose(on_disk["p_Normal"], b["p_Normal"])
    m = load_model(calib_dir)
    from mito.store import open_store

    with open_store(synth_store) as s:
        X = np.concatenate([blk for _, blk in s.iter_chunks([RGB], np.arange(20))])
    assert np.allclose(m.predict_proba(X), b[cols].to_numpy()[:20])


def test_cli_calibrate(synth_store: Path, tmp_path: Path) -> None:
    args = ["fit-head", "--store", str(synth_store), "--task", "mitosis", "--features", RGB, "--head", "logreg", "--split-column", "split"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--calibrate", "temperature"])
    assert r.exit_code == 0, r.output
    assert "temperature scaling: T = " in r.output and "test ECE" in r.output
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "n"), "--calibrate", "platt"])
    assert bad.exit_code == 2 and "calibrate" in bad.output and "Traceback" not in bad.output
    assert len([x for x in bad.output.splitlines() if x.strip()]) == 1
    with pytest.raises(HeadError):
        make_fit_config(store="x", calibrate="isotonic")


def test_ensemble_temperature_is_applied_once_to_the_averaged_probabilities(synth_store: Path, tmp_path: Path) -> None:
    from mito.heads import load_head

    common: dict = {
        "store": str(synth_store),
        "task": "mitosis",
        "features": [RGB],
        "head": "mlp",
        "split_column": "split",
        "seed": 3,
        "head_params": {"hidden": 8, "epochs": 3},
        "ensemble": "2",
    }
    m = fit_head(FitConfig(out=str(tmp_path / "e"), calibrate="temperature", **common))
    t = json.loads((tmp_path / "e" / "config.json").read_text())["calibration"]["temperature"]
    assert t == m["calibration"]["temperature"] and t != pytest.approx(1.0)
    model = load_model(tmp_path / "e")
    from mito.store import open_store

    with open_store(synth_store) as s:
        X = s.read([RGB]).astype(np.float32)
    Z = model.pipeline.transform(X.copy())
    mean = np.mean([load_head(tmp_path / "e" / f"member{i}").predict_proba(Z) for i in range(2)], axis=0)
    np.testing.assert_allclose(model.predict_proba(X), apply_temperature(mean, t), atol=1e-9)
    got = predict(tmp_path / "e", store=synth_store)
    np.testing.assert_allclose(got[["p_Atypical", "p_Normal"]].to_numpy(), apply_temperature(mean, t), atol=1e-6)
    with pytest.raises(ValueError, match="--ensemble folds has none"):
        FitConfig(out=str(tmp_path / "f"), calibrate="temperature", **{**common, "ensemble": "folds:3"})


# ------------------------------------------------------------------ issue 19, item 24: a temperature on its search bound
def test_a_temperature_on_its_search_bound_is_not_applied() -> None:
    from mito.heads.calibrate import LOG_T_BOUNDS, at_search_bound, calibrate_scored

    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b"], 200)
    right = rng.random(200) < 0.45  # sure of itself, and wrong more often than right
    sure = rng.uniform(0.7, 0.99, 200)
    p_a = np.where((y == "a") == right, sure, 1 - sure)
    confident = np.stack([p_a, 1 - p_a], axis=1)
    assert at_search_bound(fit_temperature((y == "b").astype(int), confident))
    scored = {"val": (y, confident), "test": (y[:50], confident[:50])}
    out, info = calibrate_scored(scored, ["a", "b"], "a")
    assert info["method"] == "none" and info["requested"] == "temperature" and info["n_val"] == 200
    assert info["temperature_at_bound"] == pytest.approx(np.exp(LOG_T_BOUNDS[1]), rel=1e-3)
    assert "search bound" in info["skipped"] and "no information" in info["skipped"] and "saved uncalibrated" in info["skipped"]
    assert all(out[k][1] is scored[k][1] for k in scored)  # nothing rescaled
    separable = np.where((y == "a")[:, None], [0.9, 0.1], [0.1, 0.9])  # every row right: T -> 0
    sep = calibrate_scored({"val": (y, separable)}, ["a", "b"])[1]
    assert sep["method"] == "none" and "separates them perfectly" in sep["skipped"]
    assert not at_search_bound(3.0) and not at_search_bound(100.0)


def test_fit_head_never_saves_a_bound_hitting_temperature(synth_store: Path, tmp_path: Path) -> None:
    # the synthetic features carry no 'dataset' signal: the validation NLL falls all the way to T = e^5 (148.4)
    args = ["fit-head", "--store", str(synth_store), "--task", "dataset", "--features", RGB, "--head", "logreg", "--split-column", "none"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--calibrate", "temperature"])
    assert r.exit_code == 0, r.output
    assert "temperature scaling skipped: the fitted T (148.4) runs to its search bound" in r.output and "T = 148" not in r.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "calibration" not in config and metrics["calibration"]["method"] == "none"
    plain = fit_head(FitConfig(store=str(synth_store), task="dataset", features=[RGB], head="logreg", split_column=None))
    assert metrics["ece"] == pytest.approx(plain["ece"]) and metrics["brier"] == pytest.approx(plain["brier"])


def test_a_tiny_validation_split_is_refused_before_training(synth_store: Path, tmp_path: Path) -> None:
    args = [
        "fit-head",
        "--store",
        str(synth_store),
        "--task",
        "mitosis",
        "--features",
        RGB,
        "--head",
        "knn",
        "--split-column",
        "none",
        "--group-column",
        "none",
    ]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--calibrate", "temperature", "--val-fraction", "0.03"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "needs at least 30 validation rows" in lines[0] and "--val-fraction" in lines[0], r.output
    assert not (tmp_path / "m").exists()
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "n"), "--val-fraction", "0.03"])  # without --calibrate it trains
    assert ok.exit_code == 0, ok.output
