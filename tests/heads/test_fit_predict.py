"""fit_head -> model directory -> predict, through the library and the CLI, on a store with the real AMi-Br tile table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.app.predict import predict as predict_tiles
from mito.cli import app
from mito.core.errors import TaskError
from mito.heads import FitConfig, HeadError, fit_head, load_model, make_fit_config, predict
from mito.store import open_store

from .conftest import PROV, amibr_tiles, synthetic_store

RGB, GRAY = "fakenet:z1:rgb", "fakenet:z1:gray"
QUICK = {"epochs": 15, "hidden": 32}
runner = CliRunner()


@pytest.fixture(scope="module")
def model(synth_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("models") / "m"
    cfg = FitConfig(
        store=str(synth_store),
        out=str(out),
        task="mitosis",
        features=[GRAY, RGB],
        metadata_columns=["dataset"],
        standardize=True,
        split_column="split",
        head_params={**QUICK, "noise": 0.3, "noise_mode": "per-dim"},
    )
    return out, fit_head(cfg)


def test_model_directory_describes_itself(model: tuple[Path, dict], synth_store: Path) -> None:
    out, m = model
    files = {"config.json", "metrics.json", "head.json", "model.safetensors", "pipeline.safetensors", "split.csv.gz", "run.yaml"}
    assert {p.name for p in out.iterdir()} == files | {"mito.json"}
    manifest = json.loads((out / "mito.json").read_text())
    assert (manifest["kind"], manifest["level"], manifest["head"], set(manifest["files"])) == ("model", "tile", "mlp", files)
    from mito.app import load_artifact

    assert load_artifact(out).config == json.loads((out / "config.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["features"] == [GRAY, RGB] and cfg["classes"] == ["Atypical", "Normal"]
    assert cfg["variants"][RGB]["weights_sha256"] == PROV["weights_sha256"]
    assert cfg["variants"][GRAY]["preprocessing"]["color"] == "gray"
    assert cfg["metadata_categories"] == {"dataset": ["MIDOG21", "TUPAC16"]}
    assert cfg["head"]["params"]["noise"] == 0.3 and cfg["pipeline"]["standardize"]
    assert cfg["extract"] == [
        {"backbones": ["fakenet"], "zooms": [1.0], "colors": ["gray", "rgb"], "fit": "resize", "pad_mode": "reflect", "input_size": 32}
    ]
    saved = json.loads((out / "metrics.json").read_text())
    for k in ("balanced_accuracy", "auroc", "kappa", "weighted_f1", "confusion_matrix", "train_seconds"):
        assert k in saved
    assert saved["evaluated_on"] == "test" and saved["groups_shared_between_sides"] == 0
    with open_store(synth_store) as s:
        assert saved["n_test"] == int((s.tiles["split"] == "test").sum())
        assert saved["n_train"] + saved["n_val"] == int((s.tiles["split"] == "train").sum())
    assert np.sum(saved["confusion_matrix"]) == saved["n_test"]


def test_predict_store_matches_training_metrics(model: tuple[Path, dict], synth_store: Path, tmp_path: Path) -> None:
    out, m = model
    df = predict(out, store=synth_store, out_csv=tmp_path / "p.csv")
    assert list(df.columns) == ["tile_id", "path", "label", "split", "pred", "p_Atypical", "p_Normal"]  # tile_id first (trial19)
    on_disk = pd.read_csv(tmp_path / "p.csv")
    with open_store(synth_store) as s:
        assert on_disk["tile_id"].astype(str).tolist() == s.tiles["tile_id"].astype(str).tolist()  # joins with the store's tile table
    assert len(on_disk) == len(df) and np.allclose(on_disk["p_Normal"], df["p_Normal"])
    assert all(len(v.split("e")[0].replace(".", "").lstrip("0")) <= 6 for v in (tmp_path / "p.csv").read_text().split()[1].split(",")[-2:])
    with open_store(synth_store) as s:
        test = (s.tiles["split"] == "test").to_numpy()
    assert (df["pred"] == np.where(df["p_Atypical"] > df["p_Normal"], "Atypical", "Normal")).all()
    from mito.core.metrics import classification_metrics

    again = classification_metrics(df["label"][test], df[["p_Atypical", "p_Normal"]][test].to_numpy(), ["Atypical", "Normal"])
    assert again["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    df2 = predict(out, store=synth_store)
    pd.testing.assert_frame_equal(df, df2)  # noise never reaches prediction


def test_predict_refuses_foreign_store(model: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = model
    tiles = amibr_tiles(60, seed=4)
    other = synthetic_store(tmp_path / "other.zarr", tiles, {RGB: 32, GRAY: 32})
    with open_store(other, "a") as s:  # same keys, other weights: rewrite provenance
        s.meta["variants"][RGB]["weights_sha256"] = "c" * 64
        s.record("variants", s.meta["variants"])
    with pytest.raises(HeadError, match="made differently .* fakenet:z1:rgb: weights_sha256"):
        predict(out, store=other)
    with pytest.raises(HeadError, match="exactly one of"):
        predict_tiles(out)
    with pytest.raises(HeadError, match="not a mito model directory"):
        load_model(tmp_path)


def test_fit_head_without_split_column_and_errors(synth_store: Path, tmp_path: Path) -> None:
    m = fit_head(FitConfig(store=str(synth_store), head="logreg", features=[RGB], seed=1))
    assert m["evaluated_on"] == "test" and m["groups_shared_between_sides"] == 0 and "model_dir" not in m
    assert m["n_train"] > m["n_val"] > 0 and m["n_test"] > 0
    with pytest.raises(HeadError, match="head: unknown head 'svm'"):
        make_fit_config(store=str(synth_store), head="svm")
    with pytest.raises(HeadError, match="typo"):
        make_fit_config(store=str(synth_store), typo=1)
    with pytest.raises(TaskError, match="unknown task 'grade'"):
        fit_head(FitConfig(store=str(synth_store), task="grade"))
    with pytest.raises(Exception, match="feature 'fakenet:z9:rgb' is not in"):
        fit_head(FitConfig(store=str(synth_store), features=["fakenet:z9:rgb"]))
    (tmp_path / "exists").mkdir()
    with pytest.raises(HeadError, match="already exists"):
        fit_head(FitConfig(store=str(synth_store), out=str(tmp_path / "exists")))


def test_cli_fit_head_and_predict(synth_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_model"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(synth_store),
            "--task",
            "mitosis",
            "--out",
            str(out),
            "--head",
            "mlp",
            "--noise",
            "0.5",
            "--features",
            f"{RGB},{GRAY}",
            "--split-column",
            "split",
            "--epochs",
            "10",
            "--hidden",
            "16",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["model_dir"] == str(out) and 0 <= m["balanced_accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["head"]["params"]["hidden"] == 16
    r = runner.invoke(app, ["predict", "--model", str(out), "--store", str(synth_store), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert "tiles predicted" in r.output and (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--head", "knn", "--hidden", "8"], "head 'knn' has no option hidden"),
        (["--noise", "-1"], "noise must be a number >= 0"),
        (["--noise-mode", "sideways"], "noise_mode must be one of"),
        (["--features", "fakenet:z3:rgb"], "feature 'fakenet:z3:rgb' is not in"),
        (["--split-column", "dataset"], "split column 'dataset' holds"),
        (["-p", "C"], "--param takes KEY=VALUE"),
        (["--head", "logreg", "-p", "C=auto", "--val-fraction", "1.5"], "val_fraction (1.5) must be in (0, 1)"),
    ],
)
def test_cli_bad_options_one_line(synth_store: Path, tmp_path: Path, args: list[str], msg: str) -> None:
    r = runner.invoke(app, ["fit-head", "--store", str(synth_store), "--out", str(tmp_path / "m"), *args])
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m").exists()


def test_cli_predict_errors(model: tuple[Path, dict], synth_store: Path, tmp_path: Path) -> None:
    out, _ = model
    r = runner.invoke(app, ["predict", "--model", str(out), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = runner.invoke(app, ["predict", "--model", str(tmp_path), "--store", str(synth_store), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "not a mito model directory" in r.output
    shutil.copytree(out, tmp_path / "m2")
    (tmp_path / "m2" / "pipeline.safetensors").unlink()
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "m2"), "--store", str(synth_store), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "lacks pipeline.safetensors" in r.output
