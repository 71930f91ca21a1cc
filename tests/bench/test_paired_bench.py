"""Paired columns of a real two-task bench, mito compare, the critical-difference diagram and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.bench import load_leaderboard
from mito.bench.stats import (
    add_paired_columns,
    align_predictions,
    delong_folds,
    holm,
    paired_bootstrap,
)
from mito.cli import app

runner = CliRunner()
N_BOOT = 120


@pytest.fixture(scope="module")
def bench2(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paired") / "b"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(amibr_store),
            "--proxy",
            "mitosis,dataset",
            "--out",
            str(out),
            "--features",
            "efficientnet_lite0:z1:gray,efficientnet_lite0:z1:rgb",
            "--heads",
            "knn,logreg",
            "--folds",
            "2",
            "--jobs",
            "1",
            "--n-boot",
            str(N_BOOT),
            "--no-umap",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "p vs #1" in r.output or "Δ #1" in r.output
    return out


def test_paired_columns_match_a_recomputation(bench2: Path) -> None:
    df = pd.read_csv(bench2 / "leaderboard.csv")
    for c in ("delta_vs_best", "p_vs_best", "tied_with_best", "auroc_delta_vs_best", "auroc_p_vs_best", "paired_note", "ece", "brier"):
        assert c in df.columns, c
    assert df["ece"].between(0, 1).all() and df["brier"].between(0, 1).all()
    lb = load_leaderboard(bench2)
    for _task, rows in lb.rows.groupby("task"):
        rows = rows.sort_values("rank")
        best = rows.iloc[0]
        assert best["delta_vs_best"] == 0 and bool(best["tied_with_best"]) and math.isnan(best["p_vs_best"])
        others = rows.iloc[1:]
        raw, raw_auc = [], []
        for _, r in others.iterrows():
            y, pa, pb, fold, tile = align_predictions(lb.predictions[r["row_id"]], lb.predictions[best["row_id"]])
            pr = paired_bootstrap(y, pa, pb, [0, 1], r["main_metric"], fold=fold, tile=tile, n_boot=N_BOOT, seed=0)
            assert r["delta_vs_best"] == pytest.approx(pr.delta)
            assert r["delta_vs_best"] == pytest.approx(r[r["main_metric"]] - best[best["main_metric"]])
            raw.append(pr.p_value)
            raw_auc.append(delong_folds(y, pa[:, 1], pb[:, 1], fold, tile).p_value)
        assert others["p_vs_best"].to_numpy() == pytest.approx(holm(raw))
        assert others["auroc_p_vs_best"].to_numpy() == pytest.approx(holm(raw_auc))
        assert (others["tied_with_best"] == (others["p_vs_best"] >= 0.05)).all()
    doc = json.loads((bench2 / "leaderboard.json").read_text())
    assert all("p_vs_best" in r and "ece" in r for r in doc["rows"])


def test_rows_that_cannot_be_paired_get_nan_and_a_reason(bench2: Path) -> None:
    lb = load_leaderboard(bench2)
    rows = lb.rows[lb.rows["task"] == "mitosis"].copy()
    other = rows.iloc[1]["row_id"]
    rows.loc[rows["row_id"] == other, "fold_fingerprint"] = "f" * 64
    gone = rows.iloc[2]["row_id"]
    preds = {k: v for k, v in lb.predictions.items() if k != gone}
    out = add_paired_columns(rows, preds, n_boot=50)
    a = out[out["row_id"] == other].iloc[0]
    assert math.isnan(a["p_vs_best"]) and a["tied_with_best"] is None and "other folds" in a["paired_note"]
    b = out[out["row_id"] == gone].iloc[0]
    assert math.isnan(b["delta_vs_best"]) and "no test predictions" in b["paired_note"]
    assert out.iloc[3]["p_vs_best"] >= 0  # the one comparable row is its own Holm family


def test_multiclass_rows_get_bootstrap_but_no_delong() -> None:
    rng = np.random.default_rng(0)
    n = 90
    y = rng.integers(0, 3, n)
    good = np.eye(3)[y] * 2 + rng.random((n, 3))
    bad = rng.random((n, 3))
    preds = {
        rid: {"fold": np.zeros(n, int), "row": np.arange(n), "y": y, "proba": (p / p.sum(1, keepdims=True)).astype(np.float32)}
        for rid, p in (("a", good), ("b", bad))
    }
    rows = pd.DataFrame({"task": ["t", "t"], "rank": [1, 2], "row_id": ["a", "b"], "main_metric": ["balanced_accuracy"] * 2})
    out = add_paired_columns(rows, preds, n_boot=200)
    r = out.iloc[1]
    assert r["delta_vs_best"] < -0.3 and r["p_vs_best"] < 0.05 and r["tied_with_best"] is not None and not r["tied_with_best"]
    assert math.isnan(r["auroc_p_vs_best"]) and "multi-class" in r["paired_note"]
    from mito.report.leaderboard import paired_cells

    assert paired_cells(r) == {
        "_delta": f"{r['delta_vs_best']:+.3f}",
        "_p": f"{r['p_vs_best']:.3f}" if r["p_vs_best"] >= 0.0005 else "<0.001",
    }
    same = add_paired_columns(rows, {"a": preds["a"], "b": preds["a"]}, n_boot=50).iloc[1]
    assert same["p_vs_best"] == 1.0 and paired_cells(same)["_p"] == "1.000 (tie)"  # not "1 tie" (read as "one tie")


def test_compare_command(bench2: Path) -> None:
    df = pd.read_csv(bench2 / "leaderboard.csv")
    second = df[(df["task"] == "mitosis") & (df["rank"] == 2)].iloc[0]
    r = runner.invoke(app, ["compare", "--bench", str(bench2), "--rows", "2,1", "--task", "mitosis"])
    assert r.exit_code == 0, r.output
    out = r.output
    for text in ("test tiles", "2 folds", "balanced_accuracy", "auroc", "kappa", "weighted_f1", "pr_auc", "DeLong", second["row_id"]):
        assert text in out, text
    assert f"{second['delta_vs_best']:+.4f}" in out
    by_id = runner.invoke(app, ["compare", "--bench", str(bench2), "--rows", f"{second['row_id']},1", "--task", "mitosis"])
    assert by_id.exit_code == 0 and f"{second['delta_vs_best']:+.4f}" in by_id.output
    for args, msg in (
        (["--rows", "1,2"], "several tasks"),
        (["--rows", "1"], "two rows"),
        (["--rows", "1,99", "--task", "mitosis"], "no row '99'"),
        (["--rows", "1,1", "--task", "mitosis"], "same row"),
    ):
        bad = runner.invoke(app, ["compare", "--bench", str(bench2), *args])
        assert bad.exit_code == 2 and msg in bad.output and "Traceback" not in bad.output, bad.output
        assert len([x for x in bad.output.splitlines() if x.strip()]) == 1


def test_report_has_calibration_and_critical_difference(bench2: Path) -> None:
    for name in ("critical_difference.png", "mitosis_reliability.png", "dataset_reliability.png"):
        assert (bench2 / name).stat().st_size > 5000, name
    page = (bench2 / "report.html").read_text()
    assert "critical-difference diagram" in page and "p vs #1" in page and "ECE" in page
    for col in ("AUROC p vs #1", "AUROC", "kappa", "weighted F1", "PR-AUC"):  # DeLong's column next to, not instead of, the metrics
        assert f'<th class="">{col}</th>' in page, col


def test_rows_carry_delong_ci_and_both_eces_and_old_folders_load(bench2: Path, tmp_path: Path) -> None:
    import re
    import shutil

    from mito.bench.stats import delong_ci
    from mito.core.metrics import (
        calibrated_ece,
        expected_calibration_error,
        expected_calibration_error_equal_mass,
    )

    df = pd.read_csv(bench2 / "leaderboard.csv")
    assert {"auroc_delong_low", "auroc_delong_high", "ece", "ece_equal_mass"} <= set(df.columns)
    lb = load_leaderboard(bench2)
    for _, r in lb.rows.iterrows():
        p = lb.predictions[r["row_id"]]
        pos, folds = int(p["positive"]), np.unique(p["fold"])
        lo, hi = delong_ci(p["y"] == pos, p["proba"][:, pos].astype(np.float64), p["fold"], p["row"])
        assert (r["auroc_delong_low"], r["auroc_delong_high"]) == pytest.approx((lo, hi), abs=1e-9)
        assert 0 <= lo <= r["auroc"] <= hi <= 1
        per_fold = [(p["y"][p["fold"] == f], p["proba"][p["fold"] == f].astype(np.float64)) for f in folds]
        assert r["ece"] == pytest.approx(np.mean([expected_calibration_error(y, q, positive=pos) for y, q in per_fold]), abs=1e-6)
        assert r["ece_equal_mass"] == pytest.approx(
            np.mean([expected_calibration_error_equal_mass(y, q, positive=pos) for y, q in per_fold]), abs=1e-6
        )
    page = (bench2 / "report.html").read_text()
    assert '<th class="">AUROC 95% CI (DeLong)</th>' in page and '<th class="">ECE (equal-mass)</th>' in page
    best = lb.rows[(lb.rows["task"] == "mitosis") & (lb.rows["rank"] == 1)].iloc[0]
    p = lb.predictions[best["row_id"]]
    bias = np.mean([calibrated_ece(p["proba"][p["fold"] == f].astype(np.float64), int(p["positive"])) for f in np.unique(p["fold"])])
    said = re.findall(r"would still score ECE (0\.\d{3}) on average at (\d+) test cases per fold", page)
    assert (f"{bias:.3f}", str(round(len(p["fold"]) / 2))) in said and 0 < bias < 0.5  # 12 test tiles per fold here: large
    # a folder written before: 'ece' held the equal-mass value, no ece_equal_mass and no DeLong CI columns
    old = tmp_path / "old"
    shutil.copytree(bench2, old)
    doc = json.loads((old / "leaderboard.json").read_text())
    for r in doc["rows"]:
        r["ece"], r["ece_std"] = r.pop("ece_equal_mass"), r.pop("ece_equal_mass_std")
        r.pop("auroc_delong_low"), r.pop("auroc_delong_high")
    (old / "leaderboard.json").write_text(json.dumps(doc))
    back = load_leaderboard(old).rows.set_index("row_id")
    now = lb.rows.set_index("row_id")
    for c in ("ece", "ece_equal_mass", "auroc_delong_low", "auroc_delong_high"):
        assert back.loc[now.index, c].to_numpy() == pytest.approx(now[c].to_numpy(), abs=1e-6), c
    r = runner.invoke(app, ["report", str(old)])
    assert r.exit_code == 0, r.output
    assert '<th class="">ECE (equal-mass)</th>' in (old / "report.html").read_text()
