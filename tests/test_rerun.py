"""Every output records how it was made (run.yaml; a store's runs), `mito rerun` makes it again with the same numbers,
and `mito fit-head --from-bench` trains a leaderboard row's recipe (issue 21 parts 3 and 4). Real crops, the real
default backbone, real stores and CLI invocations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mito.cli import app
from mito.core.runrecord import RUN_FILE, read_run_record
from mito.store import open_store

runner = CliRunner()
TIMING = ("train_seconds", "predict_seconds", "total_seconds")


def _run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def _fit(store: Path, out: Path, *extra: str) -> dict:
    code, text = _run("fit-head", "--store", store, "--out", out, "--head", "mlp", "--epochs", "8", "--seed", "3", "--json", *extra)
    assert code == 0, text
    return json.loads(text)


def _strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in (*TIMING, "model_dir")}


def test_fit_head_records_and_rerun_reproduces(amibr_store: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    m = _fit(amibr_store, a, "--features", "efficientnet_lite0:z1:rgb,efficientnet_lite0:z2:gray")
    rec = read_run_record(a)
    assert rec["job"] == "fit-head" and rec["spec"]["head"] == "mlp" and rec["spec"]["seed"] == 3
    assert rec["spec"]["head_params"]["epochs"] == 8 and rec["spec"]["out"] == str(a)
    with open_store(amibr_store) as s:
        assert rec["store_tiles_sha256"] == s.meta["tile_list_sha256"]
    assert rec["versions"]["mito"] and rec["versions"]["python"] and "torch" in rec["versions"]
    assert RUN_FILE in json.loads((a / "mito.json").read_text())["files"]
    code, text = _run("rerun", a, "--out", b)
    assert code == 0, text
    assert "re-ran fit-head" in text and "balanced acc" in text
    again = json.loads((b / "metrics.json").read_text())
    assert _strip(again) == _strip(m)
    for f in sorted(a.glob("*.safetensors")):
        assert (b / f.name).read_bytes() == f.read_bytes(), f.name
    assert read_run_record(b)["spec"]["out"] == str(b)
    # --overwrite replaces a model folder; without it the existing one is refused in one line
    code, text = _run("rerun", a, "--out", b)
    assert code == 2 and "already exists" in text and len(text.strip().splitlines()) == 1
    code, text = _run("rerun", a, "--out", b, "--overwrite")
    assert code == 0, text


def test_rerun_without_or_with_damaged_record_is_one_line(amibr_store: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    _fit(amibr_store, a, "--features", "efficientnet_lite0:z1:rgb")
    (a / RUN_FILE).unlink()
    code, text = _run("rerun", a, "--out", tmp_path / "b")
    assert code == 2 and f"has no {RUN_FILE}" in text and len(text.strip().splitlines()) == 1
    (a / RUN_FILE).write_text("job: [unclosed\n")
    code, text = _run("rerun", a, "--out", tmp_path / "b")
    assert code == 2 and "cannot be read" in text and len(text.strip().splitlines()) == 1
    (a / RUN_FILE).write_text("job: fit-head\nspec: {store: x, heads: [mlp]}\n")  # a key FitConfig does not have
    code, text = _run("rerun", a, "--out", tmp_path / "b")
    assert code == 2 and "heads" in text and len(text.strip().splitlines()) == 1
    (a / RUN_FILE).write_text("job: dance\nspec: {}\n")
    code, text = _run("rerun", a, "--out", tmp_path / "b")
    assert code == 2 and "unknown job 'dance'" in text
    (a / RUN_FILE).write_text("job: export\nspec: {format: trident}\n")
    code, text = _run("rerun", a, "--out", tmp_path / "b")
    assert code == 2 and "has no 'store' entry" in text
    code, text = _run("rerun", tmp_path / "nothing", "--out", tmp_path / "b")
    assert code == 2 and "does not exist" in text
    assert not (tmp_path / "b").exists()


def _bench(store: Path, out: Path) -> None:
    code, text = _run(
        "bench",
        "--store",
        store,
        "--task",
        "mitosis",
        "--features",
        "efficientnet_lite0:z1:rgb,efficientnet_lite0:z2:rgb",
        "--heads",
        "logreg,knn",
        "--noise",
        "0",
        "--folds",
        "3",
        "--n-boot",
        "50",
        "--jobs",
        "1",
        "--out",
        out,
    )
    assert code == 0, text


def test_bench_rerun_and_fit_from_bench(amibr_store: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "bench", tmp_path / "again"
    _bench(amibr_store, a)
    rec = read_run_record(a)
    assert rec["job"] == "bench" and rec["spec"]["heads"] == ["logreg", "knn"] and rec["spec"]["n_folds"] == 3
    rows = pd.read_csv(a / "leaderboard.csv")
    assert len(rows) == 4  # 2 feature sets x 2 heads
    recipes = {p.stem: yaml.safe_load(p.read_text()) for p in (a / "rows").glob("*.yaml")}
    assert set(recipes) == set(rows["row_id"])
    code, text = _run("rerun", a, "--out", b)
    assert code == 0, text
    again = pd.read_csv(b / "leaderboard.csv")
    keep = [c for c in rows.columns if c not in TIMING]
    pd.testing.assert_frame_equal(rows[keep], again[keep])
    assert (b / "report.html").is_file() and read_run_record(b)["job"] == "bench"
    files = json.loads((a / "mito.json").read_text())["files"]
    assert RUN_FILE in files and "rows" in files

    top = rows.iloc[0]
    recipe = recipes[top["row_id"]]
    assert recipe["head"] == top["head"] and recipe["task"] == "mitosis" and recipe["store"] == str(amibr_store)
    assert recipe["features"] == [f"{top['backbone']}:{k}" for k in top["features"].split("+")]
    model = tmp_path / "model"
    code, text = _run("fit-head", "--from-bench", a, "--row", top["row_id"], "--out", model)
    assert code == 0, text
    assert f"bench row {top['row_id']}" in text and "trained on " in text and "balanced acc" in text
    mrec = read_run_record(model)
    assert mrec["job"] == "fit-head" and mrec["from_bench"]["row"] == top["row_id"] and mrec["from_bench"]["dir"] == str(a)
    assert mrec["spec"]["head"] == top["head"] and mrec["spec"]["features"] == recipe["features"]
    metrics = json.loads((model / "metrics.json").read_text())
    config = json.loads((model / "config.json").read_text())
    assert config["head"]["name"] == top["head"] and metrics["features"] == recipe["features"]
    # the store's published split decides which rows are training rows, as in the bench
    cv = json.loads((a / "leaderboard.json").read_text())["meta"]["tasks"]["mitosis"]["cv"]
    assert ("the store's train split" in text) == (cv == "split") and ("all labelled rows" in text) == (cv == "kfold")
    code, text = _run("fit-head", "--from-bench", a, "--row", "nope", "--out", tmp_path / "m2")
    assert code == 2 and "no head row 'nope'" in text and len(text.strip().splitlines()) == 1
    code, text = _run("fit-head", "--from-bench", a, "--row", top["row_id"], "--out", tmp_path / "m2", "--head", "knn")
    assert code == 2 and "--head does not apply to --from-bench" in text and not (tmp_path / "m2").exists()
    code, text = _run("fit-head", "--from-bench", a, "--row", top["row_id"], "--out", tmp_path / "m2", "-s", amibr_store)
    assert code == 2 and "--store does not apply" in text
    code, text = _run("fit-head", "--from-bench", a, "--out", tmp_path / "m2")
    assert code == 2 and "go together" in text
    code, text = _run("fit-head", "--out", tmp_path / "m2")
    assert code == 2 and "needs --store" in text


def _features(store: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with open_store(store) as s:
        return s.tiles["tile_id"].astype(str).tolist(), {k: s.read([k]) for k in s.variants}


def test_extract_rerun_replays_every_run(amibr_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    common = ("--task", "mitosis", "--input-size", "64", "--limit", "10", "--chunk-rows", "4", "--workers", "0", "-q")
    code, text = _run("extract", amibr_dir, "--store", a, "--zooms", "1", "--colors", "rgb", *common)
    assert code == 0, text
    code, text = _run("extract", amibr_dir, "--store", a, "--zooms", "2", "--colors", "gray", *common)
    assert code == 0, text
    with open_store(a) as s:
        runs = s.runs
    assert [r["job"] for r in runs] == ["extract", "extract"] and runs[1]["spec"]["zooms"] == [2.0]
    assert runs[0]["store_tiles_sha256"] == runs[1]["store_tiles_sha256"]
    code, text = _run("rerun", a, "--out", b)
    assert code == 0, text
    assert "2 runs" in text
    ids_a, fa = _features(a)
    ids_b, fb = _features(b)
    assert ids_a == ids_b and set(fa) == set(fb) == {"efficientnet_lite0:z1:rgb", "efficientnet_lite0:z2:gray"}
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
    with open_store(b) as s:
        assert [r["spec"]["store"] for r in s.runs] == [str(b), str(b)]
    code, text = _run("rerun", a, "--out", b)
    assert code == 2 and "already holds a store" in text


def test_predict_settings_come_from_the_recorded_spec(amibr_store: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    _fit(amibr_store, a, "--features", "efficientnet_lite0:z2:gray,efficientnet_lite0:z1:rgb")
    config = json.loads((a / "config.json").read_text())
    assert config["extract_from"] == "the store's recorded extract runs"
    (ex,) = config["extract"]
    assert ex["backbones"] == ["efficientnet_lite0"] and ex["zooms"] == [2.0, 1.0] and ex["colors"] == ["gray", "rgb"]
    assert ex["input_size"] == 128 and ex["fit"] == "resize"
    # a store without run records (made by an earlier mito): the variants' provenance, as before
    old = tmp_path / "old.zarr"
    import shutil

    shutil.copytree(amibr_store, old)
    with open_store(old, "a") as s:
        s._update_meta(lambda m: m.pop("runs", None))
    b = tmp_path / "b"
    _fit(old, b, "--features", "efficientnet_lite0:z2:gray,efficientnet_lite0:z1:rgb")
    cb = json.loads((b / "config.json").read_text())
    assert cb["extract_from"] == "the variants' provenance"
    assert cb["extract"][0]["zooms"] == ex["zooms"] and cb["extract"][0]["colors"] == ex["colors"] and cb["extract"][0]["input_size"] == 128
    code, text = _run("rerun", old, "--out", tmp_path / "c.zarr")
    assert code == 2 and "records no runs" in text


def test_row_recipe_kfold_and_shift_rows(amibr_store: Path, tmp_path: Path) -> None:
    from mito.bench.recipes import row_recipe, trained_on
    from mito.heads import fit_head, make_fit_config

    row = pd.Series(
        {"kind": "head", "shots": "all", "task": "mitosis", "head": "logreg", "keys": ["efficientnet_lite0:z1:rgb"], "held_out": ""}
    )
    row["params"] = json.dumps({"C": 0.5, "noise": 0.0})
    meta = {"config": {"store": str(amibr_store), "seed": 2, "shift_column": "dataset"}, "tasks": {"mitosis": {"cv": "kfold"}}}
    recipe = row_recipe(row, meta)
    assert recipe is not None and recipe["test_fraction"] == 0.0 and recipe["split_column"] is None and recipe["seed"] == 2
    assert "all labelled rows" in trained_on(recipe)
    m = fit_head(make_fit_config(**recipe, out=str(tmp_path / "m")))
    with open_store(amibr_store) as s:
        labelled = int(s.tiles["mitosis"].notna().sum())
    assert m["evaluated_on"] == "val" and m["n_test"] == 0 and m["n_train"] + m["n_val"] == labelled
    shift = row_recipe(pd.Series({**row.to_dict(), "held_out": "TUPAC"}), meta)
    assert shift is not None and shift["test_group"] == "dataset=TUPAC" and "outside dataset=TUPAC" in trained_on(shift)
    assert row_recipe(pd.Series({**row.to_dict(), "kind": "zero-shot"}), meta) is None
    assert row_recipe(pd.Series({**row.to_dict(), "shots": "8"}), meta) is None


def test_lora_run_records_and_reruns(amibr_dir: Path, tmp_path: Path) -> None:
    from mito.bench import FinetuneConfig, run_finetune

    a, b = tmp_path / "lora", tmp_path / "again"
    cfg = FinetuneConfig(
        source=str(amibr_dir), out=str(a), n_folds=3, folds=1, max_epochs=2, epoch_samples=4, batch_size=2, val_samples=4, n_boot=50
    )
    lb = run_finetune(cfg, progress=False)
    rec = read_run_record(a)
    assert rec["job"] == "lora" and rec["spec"]["max_epochs"] == 2 and "config_hash" not in rec["spec"]
    code, text = _run("rerun", a, "--out", b)
    assert code == 0, text
    with np.load(a / "fold0" / "result.npz") as x, np.load(b / "fold0" / "result.npz") as y:
        np.testing.assert_array_equal(x["proba"], y["proba"])
    again = pd.read_csv(b / "leaderboard.csv")
    assert again["balanced_accuracy"].iloc[0] == pytest.approx(lb.rows["balanced_accuracy"].iloc[0], abs=1e-4)
    code, text = _run("rerun", a, "--out", b)
    assert code == 2 and "resumes into an existing run folder" in text


def test_fit_from_bench_of_a_relative_store_from_another_folder(amibr_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bench run with --store given relative to its folder: --from-bench (and --config DIR/rows/ID.yaml) from any
    other folder still finds the store (was: 'no store at amibr.zarr')."""
    monkeypatch.chdir(amibr_store.parent)
    bench = tmp_path / "bench"
    code, text = _run(
        "bench", "--store", amibr_store.name, "--heads", "logreg", "--features", "efficientnet_lite0:z1:rgb", "--folds", "2",
        "--out", bench,
    )  # fmt: skip
    assert code == 0, text
    row = pd.read_csv(bench / "leaderboard.csv").iloc[0]["row_id"]
    monkeypatch.chdir(tmp_path)
    code, text = _run("fit-head", "--from-bench", bench, "--row", row, "--out", tmp_path / "m")
    assert code == 0, text
    code, text = _run("fit-head", "--config", bench / "rows" / f"{row}.yaml", "--out", tmp_path / "m2")
    assert code == 0, text


def test_rerun_of_a_model_made_with_a_relative_store_from_another_folder(
    amibr_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model folder sent to a colleague re-runs from wherever they stand: input paths are recorded absolute."""
    monkeypatch.chdir(amibr_store.parent)
    m = _fit(Path(amibr_store.name), tmp_path / "m", "--features", "efficientnet_lite0:z1:rgb")
    assert read_run_record(tmp_path / "m")["spec"]["store"] == str(amibr_store.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, text = _run("rerun", tmp_path / "m", "--out", "again")
    assert code == 0, text
    assert _strip(json.loads((elsewhere / "again" / "metrics.json").read_text())) == _strip(m)


def test_rerun_reads_a_moved_store_and_refuses_other_tiles(amibr_store: Path, amibr_dir: Path, tmp_path: Path) -> None:
    """A colleague's copy of the store is named with --store; a store holding other tiles is one line, nothing written."""
    import shutil

    from mito.extract import ExtractConfig, extract

    m = _fit(amibr_store, tmp_path / "m", "--features", "efficientnet_lite0:z1:rgb")
    copy = tmp_path / "colleague" / "same.zarr"
    shutil.copytree(amibr_store, copy)
    code, text = _run("rerun", tmp_path / "m", "--out", tmp_path / "again", "--store", copy)
    assert code == 0, text
    assert _strip(json.loads((tmp_path / "again" / "metrics.json").read_text())) == _strip(m)
    assert read_run_record(tmp_path / "again")["spec"]["store"] == str(copy)
    other = tmp_path / "other.zarr"
    extract(
        ExtractConfig(
            source=str(amibr_dir),
            store=str(other),
            task="mitosis",
            zooms=[1.0],
            colors=["rgb"],
            input_size=128,
            limit=20,
            chunk_rows=16,
            batch_size=16,
            num_workers=0,
            progress=False,
        )
    )
    code, text = _run("rerun", tmp_path / "m", "--out", tmp_path / "wrong", "--store", other)
    assert code == 2 and "holds other tiles than the recorded run read" in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "wrong").exists()
