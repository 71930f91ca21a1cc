"""Proxy validity (issue 22, part 1): rank agreement of proxy tasks with a target task across backbones, from the kept
test predictions, with bootstrap intervals that resample the test tiles; the report's table, scatter and warnings."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau
from typer.testing import CliRunner

from mito.bench import BenchError
from mito.bench.proxy import BEST, proxy_validity
from mito.cli import app
from mito.core.metrics import bootstrap_replicates, tile_draw_counts

runner = CliRunner()
N = 400


def _preds(acc: float, rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Two-class predictions on ``rows`` that are right on about ``acc`` of the tiles (balanced classes)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(len(rows)) % 2).astype(np.int64)
    right = rng.random(len(rows)) < acc
    pred = np.where(right, y, 1 - y)
    p1 = np.where(pred == 1, 0.8, 0.2) + rng.uniform(-0.1, 0.1, len(rows))
    return {
        "fold": np.zeros(len(rows), np.int64),
        "row": rows,
        "y": y,
        "proba": np.c_[1 - p1, p1].astype(np.float32),
        "positive": np.array(1),
    }


def _bench(scores: dict[str, dict[str, float]], heads: tuple[str, ...] = ("logreg",)) -> tuple[pd.DataFrame, dict]:
    """Leaderboard rows and predictions: scores[task][backbone] = accuracy of that backbone's predictions on the task."""
    rows, preds = [], {}
    for t, by_bb in scores.items():
        tiles = np.arange(N) if t != "small" else np.arange(0, N, 2)  # a task on a subset of the tiles
        for i, (bb, acc) in enumerate(by_bb.items()):
            for j, h in enumerate(heads):
                rid = f"{t}-{bb}-{h}"
                p = _preds(acc - 0.05 * j, tiles, zlib.crc32(f"{t}|{i}|{j}".encode()) % 1000)  # not hash(): str hashes change per process
                ba = float(np.mean([np.mean((p["proba"].argmax(1) == p["y"])[p["y"] == c]) for c in (0, 1)]))
                rows.append(
                    {
                        "task": t,
                        "backbone": bb,
                        "features": "z1:rgb",
                        "head": h,
                        "kind": "head",
                        "held_out": "",
                        "shots": "all",
                        "main_metric": "balanced_accuracy",
                        "balanced_accuracy": ba,
                        "row_id": rid,
                    }
                )
                preds[rid] = p
    return pd.DataFrame(rows), preds


def test_an_inverted_proxy_is_flagged_and_an_aligned_one_is_not() -> None:
    rows, preds = _bench(
        {
            "target": {"a": 0.90, "b": 0.75, "c": 0.60},
            "good": {"a": 0.85, "b": 0.70, "c": 0.55},
            "bad": {"a": 0.55, "b": 0.70, "c": 0.85},
        }
    )
    got = {(a.proxy, a.head): a for a in proxy_validity(rows, preds, "target", n_boot=300, seed=0)}
    assert set(got) == {("good", BEST), ("good", "logreg"), ("bad", BEST), ("bad", "logreg")}
    good, bad = got[("good", BEST)], got[("bad", BEST)]
    assert good.backbones == ("a", "b", "c")
    assert good.tau == pytest.approx(1.0) and good.rho == pytest.approx(1.0)
    assert good.tau_low <= good.tau <= good.tau_high == pytest.approx(1.0)
    assert not good.disagrees and good.warning() == "" and good.regret == 0
    assert bad.tau == pytest.approx(-1.0) and bad.tau_high < 0
    assert bad.disagrees and bad.proxy_pick == "c" and bad.target_pick == "a"
    assert bad.regret > 0.2 and bad.regret_low > 0
    w = bad.warning()
    assert w.startswith("proxy bad does not predict target: tau-b -1.00") and "ranks c first" in w and "target ranks a first" in w
    assert (bad.tau, bad.rho) == pytest.approx((kendalltau(bad.proxy_scores, bad.target_scores).statistic, -1.0))
    import dataclasses
    import math

    tied = dataclasses.replace(bad, tau=math.nan, tau_low=math.nan, tau_high=math.nan)  # a proxy scoring every backbone alike
    assert "its pick scores" in tied.warning() and "nan" not in tied.warning()  # flagged by its regret, and said so


def test_a_noisy_tie_keeps_a_wide_interval_and_no_warning() -> None:
    """Backbones the target cannot tell apart: the proxy's order is within noise, the regret's CI covers 0."""
    rows, preds = _bench({"target": {"a": 0.70, "b": 0.70, "c": 0.69}, "p": {"a": 0.6, "b": 0.7, "c": 0.8}})
    a = proxy_validity(rows, preds, "target", n_boot=300, seed=0)[0]
    assert a.tau_high - a.tau_low >= 1.0  # three near-equal backbones: the tiles' resampling reorders them
    assert a.regret_low <= 0 <= a.regret_high
    assert a.disagrees == (a.tau <= 0)


def test_the_tile_draws_are_shared_across_tasks_on_different_tiles() -> None:
    """A task scored on half the tiles gets, with a universe, the very draws of those tiles in the full-table bootstrap."""
    universe = np.arange(N)
    sub = np.arange(0, N, 2)
    tpos, counts = tile_draw_counts(sub, 50, np.random.default_rng(3), universe)
    _, full = tile_draw_counts(universe, 50, np.random.default_rng(3))
    assert np.array_equal(counts[:, tpos], full[:, sub])
    p = _preds(0.8, sub, 0)
    shared = bootstrap_replicates(p["y"], p["proba"], "balanced_accuracy", tile=sub, n_boot=50, seed=3, universe=universe)
    alone = bootstrap_replicates(p["y"], p["proba"], "balanced_accuracy", tile=sub, n_boot=50, seed=3)
    assert not np.allclose(shared, alone)  # without the universe a subset draws its own resamples
    with pytest.raises(ValueError, match="universe"):
        tile_draw_counts(np.array([N + 5]), 5, np.random.default_rng(0), universe)
    # the same predictions under two task names, on the same tiles: every replicate ranks identically
    rows, preds = _bench({"target": {"a": 0.9, "b": 0.7, "c": 0.6}, "small": {"a": 0.8, "b": 0.75, "c": 0.6}})
    a = proxy_validity(rows, preds, "target", n_boot=100)[0]
    assert a.n_tiles == N and a.proxy == "small"


def test_unknown_target_or_proxy_is_one_clear_error() -> None:
    rows, preds = _bench({"target": {"a": 0.9, "b": 0.7}, "p": {"a": 0.8, "b": 0.6}})
    with pytest.raises(BenchError, match="target task 'mitosis' is not in the leaderboard"):
        proxy_validity(rows, preds, "mitosis")
    with pytest.raises(BenchError, match="proxy task 'phase'"):
        proxy_validity(rows, preds, "target", proxies=["phase"])


# ------------------------------------------------------------------ real backbones, real CLI
@pytest.fixture(scope="module")
def three_backbone_store(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 real crops embedded at zoom 1 rgb by efficientnet_lite0, its random-init control and efficientnet_lite1 (64 px)."""
    from mito.extract import ExtractConfig, extract

    path = tmp_path_factory.mktemp("proxy") / "s.zarr"
    extract(
        ExtractConfig(
            source=str(amibr_dir),
            store=str(path),
            task="mitosis",
            zooms=[1.0],
            colors=["rgb"],
            input_size=64,
            chunk_rows=16,
            batch_size=16,
            num_workers=0,
            progress=False,
            backbones=["efficientnet_lite0", "random_efficientnet_lite0", "efficientnet_lite1"],
        )
    )
    return path


def test_bench_proxy_target_reports_rank_agreement(three_backbone_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(three_backbone_store),
            "--proxy",
            "dataset",
            "--target",
            "mitosis",
            "--heads",
            "logreg,knn",
            "--folds",
            "3",
            "--cv",
            "kfold",
            "--jobs",
            "1",
            "--n-boot",
            "200",
            "--no-umap",
            "--out",
            str(out),
        ],
        terminal_width=250,
    )
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "leaderboard.json").read_text())["meta"]
    pv = meta["proxy_validity"]
    assert pv["target"] == "mitosis"
    got = {(a["proxy"], a["head"]): a for a in pv["rows"]}
    assert set(got) == {("dataset", "best"), ("dataset", "logreg"), ("dataset", "knn")}
    best = got[("dataset", "best")]
    assert sorted(best["backbones"]) == ["efficientnet_lite0", "efficientnet_lite1", "random_efficientnet_lite0"]
    rows = pd.DataFrame(json.loads((out / "leaderboard.json").read_text())["rows"])
    for bb, score in zip(best["backbones"], best["target_scores"]):  # each backbone's best mitosis row
        assert score == pytest.approx(rows[(rows.task == "mitosis") & (rows.backbone == bb)]["balanced_accuracy"].max(), abs=1e-6)
    assert best["tau"] == pytest.approx(kendalltau(best["proxy_scores"], best["target_scores"]).statistic)
    assert -1 <= best["tau_low"] <= best["tau_high"] <= 1
    assert "proxy validity: target" in r.output and "tau-b" in r.output
    assert ("does not predict mitosis" in r.output) == any(a["disagrees"] for a in pv["rows"])
    page = (out / "report.html").read_text()
    assert "Proxy validity (target <code>mitosis</code>)" in page and "proxy_validity.png" in page
    assert (out / "proxy_validity.png").stat().st_size > 5000


def test_target_needs_proxy_and_must_be_a_task(three_backbone_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["bench", "--store", str(three_backbone_store), "--target", "mitosis", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "--target goes with --proxy" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(three_backbone_store),
            "--proxy",
            "dataset",
            "--target",
            "nosuch",
            "--jobs",
            "1",
            "--n-boot",
            "0",
            "--no-umap",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert r.exit_code == 2 and "nosuch" in r.output and "Traceback" not in r.output, r.output


# ------------------------------------------------------------------ part 2: feature sets across backbones
def test_fit_head_concatenates_backbones_and_predict_embeds_new_tiles_with_both(
    three_backbone_store: Path, amibr_dir: Path, tmp_path: Path
) -> None:
    """fit-head takes bench's spelling a+b; the model keeps both backbones' features in order, and predicting new
    crops embeds them with both backbones, giving the probabilities of the same tiles in the store."""
    import shutil

    out = tmp_path / "m"
    keys = "efficientnet_lite0:z1:rgb+efficientnet_lite1:z1:rgb"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(three_backbone_store),
            "--task",
            "mitosis",
            "--out",
            str(out),
            "--head",
            "logreg",
            "--features",
            keys,
            "--split-column",
            "none",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["features"] == keys.split("+")
    assert {s["backbones"][0] for s in cfg["extract"]} == {"efficientnet_lite0", "efficientnet_lite1"}
    assert cfg["n_features_in"] == 2 * 1280 and json.loads(r.output)["features"] == keys.split("+")
    src = tmp_path / "new" / "Atypical"
    src.mkdir(parents=True)
    picked = sorted((amibr_dir / "Atypical").glob("*.jpg"))[:3]
    for f in picked:
        shutil.copy(f, src / f.name)
    a = runner.invoke(app, ["predict", "--model", str(out), str(tmp_path / "new"), "--out", str(tmp_path / "a.csv"), "-q"])
    assert a.exit_code == 0, a.output
    b = runner.invoke(app, ["predict", "--model", str(out), "--store", str(three_backbone_store), "--out", str(tmp_path / "b.csv"), "-q"])
    assert b.exit_code == 0, b.output
    pa, pb = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    pcol = [c for c in pa.columns if c.startswith("p_")][0]
    pb = pb[pb["path"].map(lambda p: Path(str(p)).name).isin([f.name for f in picked])]
    assert len(pb) == 3
    assert sorted(pa[pcol].round(3)) == sorted(pb[pcol].round(3))


def test_fit_head_names_a_feature_twice_in_one_line(three_backbone_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(three_backbone_store),
            "--task",
            "mitosis",
            "--out",
            str(tmp_path / "m"),
            "--features",
            "efficientnet_lite0:z1:rgb+efficientnet_lite0:z1:rgb",
        ],
    )
    assert r.exit_code == 2 and "named twice" in r.output and "Traceback" not in r.output, r.output


def test_tau_without_the_random_controls_is_reported_beside_it() -> None:
    # the proxy inverts the three trained backbones; the control, last on both tasks, lifts the overall tau-b
    rows, preds = _bench(
        {
            "target": {"a": 0.90, "b": 0.80, "c": 0.70, "random_a": 0.52},
            "proxy": {"a": 0.66, "b": 0.74, "c": 0.82, "random_a": 0.50},
        }
    )
    got = {a.head: a for a in proxy_validity(rows, preds, "target", n_boot=200, seed=0)}[BEST]
    trained = [i for i, b in enumerate(got.backbones) if not b.startswith("random_")]
    want = kendalltau([got.proxy_scores[i] for i in trained], [got.target_scores[i] for i in trained]).statistic
    assert got.tau_trained == pytest.approx(want) and got.tau_trained < got.tau
    assert got.tau_trained_low <= got.tau_trained <= got.tau_trained_high
    rows2, preds2 = _bench({"target": {"a": 0.9, "b": 0.8, "c": 0.7}, "proxy": {"a": 0.8, "b": 0.7, "c": 0.6}})
    assert np.isnan(proxy_validity(rows2, preds2, "target", n_boot=50, seed=0)[0].tau_trained)  # no control: nothing to leave out
