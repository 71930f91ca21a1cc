"""predict says which tiles (bags) the model was fitted on: a split column, and agreement on held-out rows only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from mito.cli import app
from mito.core.metrics import classification_metrics
from mito.heads import FitConfig, fit_head, predict
from mito.heads.predict import agreement
from mito.heads.split import SPLIT_FILE

from .conftest import amibr_tiles, synthetic_store
from .test_mil import planted_store

RGB = "fakenet:z1:rgb"
runner = CliRunner()


@pytest.fixture(scope="module")
def fitted(synth_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("split_models") / "m"
    m = fit_head(FitConfig(store=str(synth_store), out=str(out), task="mitosis", features=[RGB], head="logreg"))
    return out, m


def test_predict_marks_each_tile_with_its_side_of_the_fitted_split(fitted: tuple[Path, dict], synth_store: Path) -> None:
    model, m = fitted
    assert (model / SPLIT_FILE).is_file()
    df = predict(model, store=synth_store)
    assert list(df.columns[:4]) == ["tile_id", "path", "label", "split"]
    counts = df["split"].value_counts().to_dict()
    assert counts == {"train": m["n_train"], "val": m["n_val"], "test": m["n_test"]}
    test = (df["split"] == "test").to_numpy()
    again = classification_metrics(df["label"][test], df[["p_Atypical", "p_Normal"]][test].to_numpy(), ["Atypical", "Normal"])
    assert again["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    a = agreement(df)
    assert a["test"]["n"] == m["n_test"] and a["test"]["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    assert a["seen"] == m["n_train"] + m["n_val"] and "unseen" not in a


def test_tiles_the_model_never_saw_are_unseen_and_scored_apart(fitted: tuple[Path, dict], synth_store: Path, tmp_path: Path) -> None:
    model, m = fitted
    bigger = synthetic_store(tmp_path / "more.zarr", amibr_tiles(), {RGB: 32, "fakenet:z1:gray": 32})  # a superset of the tiles
    r = runner.invoke(
        app, ["predict", "--model", str(model), "--store", str(bigger), "--out", str(tmp_path / "p.csv")], env={"COLUMNS": "300"}
    )
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "p.csv")
    n_unseen = len(df) - m["n_train"] - m["n_val"] - m["n_test"]
    assert n_unseen > 0 and (df["split"] == "unseen").sum() == n_unseen
    text = " ".join(r.output.split())
    assert f"{m['n_test']} test tiles of the model's split" in text and f"{n_unseen} labelled tiles it never saw" in text
    assert f"{m['n_train'] + m['n_val']} training and validation tiles not scored" in text
    shown = float(re.search(r"test tiles of the model's split: balanced accuracy ([0-9.]+)", text).group(1))
    test = df[df["split"] == "test"]
    assert shown == pytest.approx(balanced_accuracy_score(test["label"], test["pred"]), abs=5e-4)  # (other features than the fit's)
    unseen = df[df["split"] == "unseen"]
    assert f"agreement {(unseen['pred'] == unseen['label']).mean():.3f}" in text.split("never saw")[1]


def test_a_model_without_a_recorded_split_says_so(fitted: tuple[Path, dict], synth_store: Path, tmp_path: Path) -> None:
    import shutil

    model, _ = fitted
    old = tmp_path / "old"
    shutil.copytree(model, old)
    (old / SPLIT_FILE).unlink()
    r = runner.invoke(
        app, ["predict", "--model", str(old), "--store", str(synth_store), "--out", str(tmp_path / "p.csv")], env={"COLUMNS": "300"}
    )
    assert r.exit_code == 0, r.output
    assert set(pd.read_csv(tmp_path / "p.csv")["split"]) == {"unknown"}
    assert "records no split" in " ".join(r.output.split()) and "training tiles included" in " ".join(r.output.split())


def test_slide_predict_marks_bags_with_their_side(tmp_path: Path) -> None:
    store, _ = planted_store(tmp_path / "planted.zarr", slides=40, tiles=8)
    model = tmp_path / "m"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(store),
            "--level",
            "slide",
            "--task",
            "label",
            "--head",
            "mean-linear",
            "--epochs",
            "3",
            "--out",
            str(model),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    r = runner.invoke(
        app, ["predict", "--model", str(model), "--store", str(store), "--out", str(tmp_path / "s.csv")], env={"COLUMNS": "300"}
    )
    assert r.exit_code == 0, r.output
    slides = pd.read_csv(tmp_path / "s.csv")
    assert slides["split"].value_counts().to_dict() == {"train": m["n_train"], "val": m["n_val"], "test": m["n_test"]}
    test = slides[slides["split"] == "test"]
    assert f"{len(test)} test bags of the model's split" in " ".join(r.output.split())
    assert f"agreement {(test['pred'] == test['label']).mean():.3f}" in r.output
    assert np.isin(slides["split"], ["train", "val", "test"]).all()
