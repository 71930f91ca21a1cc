"""predict checks every option before it writes anything: a refused run leaves no CSV behind, so the re-run is not refused."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mito.cli import app
from mito.heads import FitConfig, fit_head

from .test_mil import planted_store

runner = CliRunner()


def test_heatmaps_of_a_tile_store_are_refused_before_the_csv_is_written(synth_store: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    fit_head(FitConfig(store=str(synth_store), out=str(model), task="mitosis", features=["fakenet:z1:rgb"], head="logreg"))
    out = tmp_path / "p.csv"
    r = runner.invoke(
        app, ["predict", "--model", str(model), "--store", str(synth_store), "--out", str(out), "--heatmaps", str(tmp_path / "heat")]
    )
    assert r.exit_code == 2 and "extracted from whole slides" in r.output and "Traceback" not in r.output
    assert not out.exists() and not (tmp_path / "heat").exists()
    r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(synth_store), "--out", str(out)])
    assert r.exit_code == 0, r.output  # the same command without the bad option is not refused by a leftover CSV


def test_slide_model_pictures_that_cannot_be_drawn_are_refused_before_any_csv(tmp_path: Path) -> None:
    store, _ = planted_store(tmp_path / "planted.zarr", slides=20, tiles=6)  # neither slide boxes nor tile paths
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
            "2",
            "--out",
            str(model),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["level"] == "slide"
    out = tmp_path / "slides.csv"
    r = runner.invoke(
        app, ["predict", "--model", str(model), "--store", str(store), "--out", str(out), "--heatmaps", str(tmp_path / "pics")]
    )
    assert r.exit_code == 2 and "pictures need tile images" in r.output and "Traceback" not in r.output
    assert not out.exists() and not (tmp_path / "slides.tiles.csv").exists() and not (tmp_path / "pics").exists()
