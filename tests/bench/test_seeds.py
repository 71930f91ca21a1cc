"""Bench runs of several seeds pooled (mito.bench.seeds) and benchmarks/frozen_ceiling.py, on real runs of a real store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from typer.testing import CliRunner

from mito.bench import BenchError
from mito.bench.seeds import NO_ENSEMBLE, Reference, pool_benches
from mito.bench.stats import align_predictions, paired_bootstrap
from mito.cli import app

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "frozen_ceiling.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
FEATURES = ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z1:gray"]
REF = Reference("efficientnet_lite0:z1:rgb", "logreg")
N_BOOT = 200
runner = CliRunner()


@pytest.fixture(scope="module")
def ceiling(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """frozen_ceiling.py for real: 2 seeds x 2 feature sets, logreg, published split + each dataset held out."""
    out = tmp_path_factory.mktemp("ceiling") / "c"
    cmd = [sys.executable, str(SCRIPT), "--store", str(amibr_store), "--out", str(out), "--seeds", "0,1", "--features", ";".join(FEATURES)]
    cmd += ["--heads", "logreg", "--folds", "3", "--n-boot", "50", "--jobs", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| configuration |" in r.stdout
    return out


@pytest.fixture(scope="module")
def kfold_runs(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two k-fold benches (seeds 0 and 1): their fold models predict disjoint tiles."""
    outs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp("kfold") / f"seed{seed}"
        args = ["bench", "--store", str(amibr_store), "--task", "mitosis", "--out", str(out), "--features", ",".join(FEATURES)]
        args += ["--heads", "logreg", "--cv", "kfold", "--folds", "3", "--seed", str(seed), "--jobs", "1", "--n-boot", "20", "--no-umap"]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        outs.append(out)
    return outs


def _seeds(ceiling: Path) -> list[Path]:
    return [ceiling / "seed0", ceiling / "seed1"]


def _row(folder: Path, r: pd.Series) -> dict:
    doc = json.loads((folder / "leaderboard.json").read_text())
    hit = [x for x in doc["rows"] if x["features"] == r["features"] and x["head"] == r["head"] and (x["held_out"] or "") == r["held_out"]]
    assert len(hit) == 1
    return hit[0]


def test_pooled_mean_and_sd_are_those_of_the_runs(ceiling: Path) -> None:
    t = pool_benches(_seeds(ceiling), REF, n_boot=N_BOOT)
    assert len(t) == 6 and set(t["held_out"]) == {"", "MIDOG21", "TUPAC16"} and (t["n_seeds"] == 2).all()
    assert list(t["held_out"]) == sorted(t["held_out"]) and t["held_out"].iloc[0] == ""  # in-domain first
    for _, g in t.groupby("held_out"):
        assert list(g["balanced_accuracy"]) == sorted(g["balanced_accuracy"], reverse=True)
    sds = []
    for _, r in t.iterrows():
        for m in ("balanced_accuracy", "auroc"):
            vals = [float(_row(f, r)[m]) for f in _seeds(ceiling)]
            assert r[m] == pytest.approx(np.mean(vals), abs=1e-12)
            assert r[f"{m}_sd"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
            sds.append(r[f"{m}_sd"])
        assert r["n_test"] == _row(ceiling / "seed0", r)["n_test"]
    assert max(sds) > 0  # the seeds made different runs


def test_reference_against_itself_is_zero_and_the_rest_is_a_paired_bootstrap(ceiling: Path) -> None:
    t = pool_benches(_seeds(ceiling), REF, n_boot=N_BOOT)
    ref = t[t["reference"]]
    assert len(ref) == 3 and set(ref["features"]) == {"z1:rgb"}
    assert (ref["delta_vs_ref"] == 0).all() and (ref["ci_low"] == 0).all() and (ref["ci_high"] == 0).all() and (ref["p_vs_ref"] == 1).all()
    for _, r in t[~t["reference"]].iterrows():
        rr = ref[ref["held_out"] == r["held_out"]].iloc[0]
        assert r["delta_vs_ref"] == pytest.approx(r["balanced_accuracy"] - rr["balanced_accuracy"], abs=1e-6)
        # by hand: both rows' (seed, fold) models stacked and paired by stats.paired_bootstrap (same tiles, same draws)
        pa, pb = _stacked(ceiling, r), _stacked(ceiling, rr)
        y, a, b, fold, tile = align_predictions(pa, pb)
        pr = paired_bootstrap(
            y, a, b, [0, 1], "balanced_accuracy", fold=fold, tile=tile, n_boot=N_BOOT, seed=0, positive=int(pa["positive"])
        )
        assert r["delta_vs_ref"] == pytest.approx(pr.delta, abs=1e-12)
        assert (r["ci_low"], r["ci_high"], r["p_vs_ref"]) == pytest.approx((pr.ci_low, pr.ci_high, pr.p_value), abs=1e-12)
    assert t["ens_p_vs_ref"].between(0, 1).all()


def _stacked(ceiling: Path, r: pd.Series) -> dict[str, np.ndarray]:
    parts = []
    for i, f in enumerate(_seeds(ceiling)):
        rid = _row(f, r)["row_id"]
        with np.load(f / "predictions.npz") as z:
            parts.append({k: z[f"{rid}.{k}"] for k in ("fold", "row", "y", "proba", "positive")})
            parts[-1]["fold"] = parts[-1]["fold"] + 100 * i
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("fold", "row", "y", "proba")}
    return {**out, "positive": parts[0]["positive"]}


def test_ensemble_is_the_mean_of_the_fold_models_scored_by_hand(ceiling: Path) -> None:
    t = pool_benches(_seeds(ceiling), None, n_boot=0)
    assert t["delta_vs_ref"].isna().all() and t["p_vs_ref"].isna().all() and not t["reference"].any()
    for _, r in t.iterrows():
        bal, auc = [], []
        for f in _seeds(ceiling):
            rid = _row(f, r)["row_id"]
            with np.load(f / "predictions.npz") as z:
                fold, row, y, proba, pos = (z[f"{rid}.{k}"] for k in ("fold", "row", "y", "proba", "positive"))
            tiles = np.unique(row)
            mean = sum(proba[fold == k][np.argsort(row[fold == k])] for k in np.unique(fold)) / len(np.unique(fold))
            yt = y[fold == 0][np.argsort(row[fold == 0])]
            assert np.array_equal(np.sort(row[fold == 0]), tiles)
            bal.append(balanced_accuracy_score(yt, mean.argmax(axis=1)))
            auc.append(roc_auc_score(yt == int(pos), mean[:, int(pos)]))
        assert r["ens_balanced_accuracy"] == pytest.approx(np.mean(bal), abs=1e-9)
        assert r["ens_balanced_accuracy_sd"] == pytest.approx(np.std(bal, ddof=1), abs=1e-9)
        assert r["ens_auroc"] == pytest.approx(np.mean(auc), abs=1e-9)
        assert r["note"] == ""


def test_kfold_runs_have_no_ensemble(kfold_runs: list[Path]) -> None:
    t = pool_benches(kfold_runs, REF, n_boot=N_BOOT)
    assert len(t) == 2 and set(t["held_out"]) == {""}
    assert t["ens_balanced_accuracy"].isna().all() and t["ens_auroc"].isna().all() and t["ens_p_vs_ref"].isna().all()
    assert (t["note"] == NO_ENSEMBLE).all()
    assert t["balanced_accuracy"].notna().all() and t["p_vs_ref"].between(0, 1).all()
    assert t[t["reference"]]["p_vs_ref"].iloc[0] == 1


def _one_line(err: pytest.ExceptionInfo[BenchError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_runs_that_cannot_be_pooled_are_refused_in_one_line(ceiling: Path, kfold_runs: list[Path], tmp_path: Path) -> None:
    s0, s1 = _seeds(ceiling)
    with pytest.raises(BenchError) as e:
        pool_benches([s0, kfold_runs[1]])
    assert "different protocol" in _one_line(e) and "cv" in str(e.value)
    other = shutil.copytree(s1, tmp_path / "other_store")
    doc = json.loads((other / "leaderboard.json").read_text())
    doc["meta"]["store"]["tile_list_sha256"] = "0" * 64
    (other / "leaderboard.json").write_text(json.dumps(doc))
    with pytest.raises(BenchError) as e:
        pool_benches([s0, other])
    assert "different stores" in _one_line(e)
    with pytest.raises(BenchError) as e:
        pool_benches([s0, s0])
    assert "twice" in _one_line(e)
    with pytest.raises(BenchError) as e:
        pool_benches([s0, s1], Reference("efficientnet_lite0:z2:rgb", "logreg"))
    assert "no row" in _one_line(e)


def test_runs_of_another_task_or_other_test_tiles_are_refused(ceiling: Path, amibr_store: Path, tmp_path: Path) -> None:
    s0, s1 = _seeds(ceiling)
    other = tmp_path / "dataset_task"
    args = ["bench", "--store", str(amibr_store), "--task", "dataset", "--out", str(other), "--features", FEATURES[0]]
    r = runner.invoke(app, [*args, "--heads", "logreg", "--folds", "3", "--jobs", "1", "--n-boot", "0", "--no-umap"])
    assert r.exit_code == 0, r.output
    with pytest.raises(BenchError) as e:
        pool_benches([s0, other])
    assert "different tasks" in _one_line(e)
    moved = shutil.copytree(s1, tmp_path / "moved")
    rid = json.loads((moved / "leaderboard.json").read_text())["rows"][0]["row_id"]
    with np.load(moved / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    test = set(arrays[f"{rid}.row"].tolist())
    outside = next(i for i in range(10_000) if i not in test)
    arrays[f"{rid}.row"] = np.where(arrays[f"{rid}.row"] == arrays[f"{rid}.row"][0], outside, arrays[f"{rid}.row"])
    np.savez(moved / "predictions.npz", **arrays)
    with pytest.raises(BenchError) as e:
        pool_benches([s0, moved])
    assert "other tiles" in _one_line(e)


def test_frozen_ceiling_writes_tables_naming_both_configurations(ceiling: Path) -> None:
    md = (ceiling / "ceiling.md").read_text()
    assert "efficientnet_lite0 z1:rgb logreg **(ref)**" in md and "efficientnet_lite0 z1:gray logreg" in md
    assert "in-domain" in md and "tested on MIDOG21" in md and "tested on TUPAC16" in md
    csv = pd.read_csv(ceiling / "ceiling.csv", keep_default_na=False)
    assert len(csv) == 6 and set(csv["features"]) == {"z1:rgb", "z1:gray"}
    pooled = pool_benches(_seeds(ceiling), REF, n_boot=50)
    assert csv["balanced_accuracy"].astype(float).to_numpy() == pytest.approx(pooled["balanced_accuracy"].to_numpy(), rel=1e-5)
    doc = json.loads((ceiling / "ceiling.json").read_text())
    assert doc["seeds"] == [0, 1] and len(doc["rows"]) == 6
    for k in (0, 1):  # the seed went to the folds and to the heads
        cfg = json.loads((ceiling / f"seed{k}" / "leaderboard.json").read_text())["meta"]["config"]
        assert cfg["seed"] == k and cfg["head_params"]["logreg"]["seed"] == k


def test_pooled_figure_has_a_panel_per_setting_and_a_label_per_configuration(ceiling: Path) -> None:
    from PIL import Image

    from mito.report.mpl import pyplot
    from mito.report.pooled import pooled_plot, short_label

    assert Image.open(ceiling / "ceiling.png").size[0] > 600  # the script draws it
    assert short_label(["efficientnet_lite0:z2:rgb", "efficientnet_lite0:z2:gray", "efficientnet_lite1:z2:rgb"], "mlp") == (
        "lite0 z2:rgb+gray + lite1 z2:rgb, mlp"
    )
    fig = pooled_plot(pool_benches(_seeds(ceiling), REF, n_boot=50))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["in-domain", "tested on MIDOG21 (trained without it)", "tested on TUPAC16 (trained without it)"]
    assert sorted(t.get_text() for t in fig.axes[0].get_yticklabels()) == ["lite0 z1:gray, logreg", "lite0 z1:rgb, logreg"]
    assert fig.axes[0].lines, "no dots drawn"
    pyplot().close(fig)


def test_frozen_ceiling_resumes_and_dry_run_only_prints(ceiling: Path, amibr_store: Path, tmp_path: Path) -> None:
    before = (ceiling / "seed0" / "leaderboard.json").stat().st_mtime_ns
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--store",
        str(amibr_store),
        "--out",
        str(ceiling),
        "--seeds",
        "0,1",
        "--features",
        ";".join(FEATURES),
    ]
    r = subprocess.run([*cmd, "--heads", "logreg", "--folds", "3", "--n-boot", "50"], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "seed 0:" not in r.stderr and (ceiling / "seed0" / "leaderboard.json").stat().st_mtime_ns == before
    dry = tmp_path / "dry"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--store", str(amibr_store), "--out", str(dry), "--seeds", "3,4", "--dry-run"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and "--seed 3" in lines[0] and "--seed 4" in lines[1] and "--shift-column dataset" in lines[0]
    assert (
        "efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray,efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray+efficientnet_lite0:z2:hema"
        in lines[0]
    )
    assert "--heads mlp,linear" in lines[0] and "--param mlp.seed=3" in lines[0] and not dry.exists()
    assert "--feature-search" not in lines[0]
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--store", str(amibr_store), "--out", str(dry), "--seeds", "0", "--feature-search", "--dry-run"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert r.returncode == 0 and "--feature-search" in r.stdout, r.stderr


def test_reference_is_the_head_row_not_a_few_shot_or_search_row_of_the_same_features() -> None:
    from mito.report.pooled import row_label

    keys = ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z1:gray"]
    base = {"backbone": "efficientnet_lite0", "features": "z1:rgb+gray", "keys": keys, "head": "logreg", "noise": 0.0}
    head, shot = {**base, "kind": "head", "shots": "all"}, {**base, "kind": "few-shot", "shots": "8"}
    search = {**base, "features": "search", "kind": "search", "shots": "all"}
    ref = Reference.parse("efficientnet_lite0:z1:rgb+efficientnet_lite0:z1:gray,logreg")
    assert [ref.matches(r) for r in (head, shot, search)] == [True, False, False]
    labels = [row_label(r) for r in (head, shot, search)]
    assert labels == ["lite0 z1:rgb+gray, logreg", "lite0 z1:rgb+gray, logreg, 8-shot", "search over lite0 z1:rgb+gray, logreg"]


def test_frozen_ceiling_refuses_to_resume_from_a_run_of_other_features(ceiling: Path, amibr_store: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--store", str(amibr_store), "--out", str(ceiling), "--seeds", "0,1"]
    cmd += ["--features", FEATURES[0], "--heads", "logreg", "--folds", "3", "--n-boot", "50"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and "other features" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (ceiling / "ceiling.md").read_text().count("\n| ") >= 2  # the finished run's tables stay
