"""One splitter (mito.heads.split): fit-head carves exactly fold 0 of a bench from the same store and seed, old bench
folders keep their fold fingerprints, and every command picks its default task by one rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app

runner = CliRunner()
FEATURE = "efficientnet_lite0:z1:rgb"
LEGACY = Path(__file__).resolve().parent / "assets" / "legacy"


def _fit_head_sides(store: Path, out: Path, *extra: str) -> dict[str, set[str]]:
    """fit-head through the CLI with its defaults (seed 0); the tile ids of each side it recorded in split.csv.gz."""
    r = runner.invoke(app, ["fit-head", "--store", str(store), "--head", "logreg", "--features", FEATURE, "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    rec = pd.read_csv(out / "split.csv.gz", dtype=str, keep_default_na=False)
    return {s: set(rec.loc[rec["split"] == s, "tile_id"]) for s in ("train", "val", "test")}


def _bench_fold0(store: Path, out: Path, *extra: str) -> tuple[dict[str, set[str]], str]:
    """bench through the CLI with its defaults (5 folds, seed 0); fold 0's tile ids per side, from the plan whose
    fingerprint the bench recorded (checked equal), and the bench's cv mode."""
    from mito.bench.leaderboard import task_plan
    from mito.store import open_store

    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--heads",
            "logreg",
            "--features",
            FEATURE,
            "--n-boot",
            "0",
            "--no-umap",
            "--jobs",
            "1",
            "--out",
            str(out),
            *extra,
        ],
    )
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "leaderboard.json").read_text())["meta"]["tasks"]["mitosis"]
    with open_store(store) as s:
        tiles, unreadable = s.tiles, s.unreadable
    cv = "kfold" if "kfold" in extra else "auto"
    _, _, _, plan = task_plan(tiles, "mitosis", 5, cv, 0, unreadable)
    assert plan.fingerprint == meta["fold_fingerprint"] and len(plan.folds) == meta["n_folds"] == 5
    ids = tiles["tile_id"].astype(str).to_numpy()
    f = plan.folds[0]
    return {"train": set(ids[f.train]), "val": set(ids[f.val]), "test": set(ids[f.test])}, meta["cv"]


def test_fit_head_carves_fold_0_of_a_published_split_bench(amibr_store: Path, tmp_path: Path) -> None:
    """On AMi-Br's published split: default fit-head (val_fraction 0.2) = fold 0 of the default bench (5 folds, split mode)."""
    fit = _fit_head_sides(amibr_store, tmp_path / "m")
    bench, cv = _bench_fold0(amibr_store, tmp_path / "b")
    assert cv == "split"
    assert all(fit[s] for s in fit) and not fit["train"] & fit["val"]
    assert fit == bench


def test_fit_head_carves_fold_0_of_a_kfold_bench(amibr_store: Path, tmp_path: Path) -> None:
    """Without a split column: default fit-head (test 0.2, val 0.2 of the rest) = fold 0 of the default bench --cv kfold."""
    fit = _fit_head_sides(amibr_store, tmp_path / "m", "--split-column", "none")
    bench, cv = _bench_fold0(amibr_store, tmp_path / "b", "--cv", "kfold")
    assert cv == "kfold"
    assert all(fit[s] for s in fit) and not fit["train"] & fit["test"]
    assert fit == bench
    # another seed moves fit-head's split (so the equality above is not two empty or fixed sets)
    assert _fit_head_sides(amibr_store, tmp_path / "m1", "--split-column", "none", "--seed", "1") != fit


def test_library_fit_head_split_is_fold_0_for_other_fractions() -> None:
    """make_split(test_fraction=1/K, val_fraction=v, seed) = make_folds(K, kfold, val_fraction=v, seed) fold 0, and on a
    published split make_split(val_fraction=1/K) = make_folds(K, split) fold 0; also for --test-group vs shift rows."""
    from mito.bench.cv import make_folds
    from mito.bench.shift import shift_plans
    from mito.heads.split import Fold, group_split, make_split
    from tests.heads.conftest import amibr_tiles

    tiles = amibr_tiles(600)
    y = tiles["mitosis"].astype(object)
    usable = np.ones(len(tiles), bool)

    def sides(f: Fold) -> np.ndarray:
        out = np.full(len(tiles), "", dtype=object)
        out[f.train], out[f.val], out[f.test] = "train", "val", "test"
        return out.astype(str)

    for k, v, seed in ((4, 0.2, 3), (3, 0.25, 1)):
        fit = make_split(tiles, y, usable, None, "group", v, 1 / k, seed)
        assert (fit == sides(make_folds(tiles, y, k, "kfold", seed, val_fraction=v).folds[0])).all()
        fit = make_split(tiles, y, usable, "auto", "group", 1 / k, 0.2, seed)
        assert (fit == sides(make_folds(tiles, y, k, "split", seed).folds[0])).all()
    plans, _ = shift_plans(tiles, y, "dataset", n_folds=5, seed=2)
    fit = group_split(tiles, y, usable, "dataset=TUPAC16", None, "group", 0.2, 2)
    assert (fit == sides(plans["TUPAC16"].folds[0])).all()


def test_an_old_split_bench_folder_keeps_its_fingerprint_and_merges(tmp_path: Path) -> None:
    """The legacy bench (split mode, 2 folds) was made before the one splitter: the same folds, so --with merges it."""
    from mito.bench.leaderboard import task_plan
    from mito.store import open_store

    legacy = tmp_path / "legacy"
    shutil.copytree(LEGACY, legacy)
    old = json.loads((legacy / "bench" / "leaderboard.json").read_text())["meta"]["tasks"]["mitosis"]
    with open_store(legacy / "store.zarr") as s:
        _, _, _, plan = task_plan(s.tiles, "mitosis", 2, "auto", 0, s.unreadable)
    assert old["cv"] == plan.mode == "split" and plan.fingerprint == old["fold_fingerprint"]
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(legacy / "store.zarr"),
            "--task",
            "mitosis",
            "--heads",
            "linear",
            "--folds",
            "2",
            "--n-boot",
            "0",
            "--no-umap",
            "--jobs",
            "1",
            "--with",
            str(legacy / "bench"),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(tmp_path / "b" / "leaderboard.csv")
    assert {"logreg", "knn", "linear"} <= set(rows["head"])


# ------------------------------------------------------------------ one default-task rule


def test_default_task_rule() -> None:
    from mito.core.errors import TaskError
    from mito.core.tasks import default_task

    assert default_task(["mitosis"]) == "mitosis"
    assert default_task(["mitosis", "dataset"], "dataset") == "dataset"
    with pytest.raises(TaskError, match=r"several tasks \(mitosis, dataset\); choose one with --task"):
        default_task(["mitosis", "dataset"])
    with pytest.raises(TaskError, match="no label column; name a task with --color-by"):
        default_task([], None, "--color-by")


@pytest.fixture(scope="module")
def two_task_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.heads.conftest import amibr_tiles, synthetic_store

    return synthetic_store(
        tmp_path_factory.mktemp("tasks") / "s.zarr", amibr_tiles(120), {"fakenet:z1:rgb": 8}, tasks=["dataset", "mitosis"]
    )


@pytest.mark.parametrize("command", ["fit-head", "bench"])
def test_fit_head_and_bench_default_to_the_only_task_and_refuse_to_guess(two_task_store: Path, tmp_path: Path, command: str) -> None:
    args = [command, "--store", str(two_task_store), "--out", str(tmp_path / "o"), "--heads" if command == "bench" else "--head", "logreg"]
    if command == "bench":
        args += ["--folds", "2", "--n-boot", "0", "--no-umap", "--jobs", "1"]
    r = runner.invoke(app, args)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert "several tasks (dataset, mitosis); choose one with --task" in lines[0]
    assert not (tmp_path / "o").exists()
    r = runner.invoke(app, [*args, "--task", "mitosis"])
    assert r.exit_code == 0, r.output
