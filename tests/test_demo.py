"""mito demo: one feature set from fit-head to bench and UMAP, and the numbers' difference explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from mito.app.demo import run_demo


@pytest.mark.slow
def test_demo_benches_and_draws_the_features_it_fitted_on(amibr_dir: Path, tmp_path: Path) -> None:
    from mito.cli import narrator

    console = Console(record=True, width=200)
    result = run_demo(tmp_path / "demo", device="cpu", say=narrator(console), source=amibr_dir)
    text = console.export_text()
    fitted = result["fit_head"]["features"]
    assert fitted == ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z2:rgb"]
    doc = json.loads((tmp_path / "demo" / "report" / "leaderboard.json").read_text())
    assert {r["features"] for r in doc["rows"]} == {"z1+z2:rgb"}  # the bench ranks the set fit-head used
    assert result["umap_features"] == fitted
    assert (tmp_path / "demo" / "report" / "umap_mitosis.png").stat().st_size > 1000
    mlp = next(r for r in doc["rows"] if r["head"] == "mlp")
    assert mlp["n_test"] == result["fit_head"]["n_test"]  # the same test crops
    said = " ".join(text.split())
    assert f"fit-head's single mlp: {result['fit_head']['balanced_accuracy']:.3f}" in said
    assert f"bench's mlp row: {mlp['balanced_accuracy']:.3f}" in said and "same features" in said


@pytest.mark.slow
def test_slide_demo_builds_slides_and_runs_every_slide_step(amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openslide
    import pandas as pd
    from PIL import Image

    from mito.app.demo import GRID, PLANT, run_slide_demo
    from mito.cli import narrator
    from mito.core.io import artifact_kind
    from mito.store import open_store

    console = Console(record=True, width=200)
    monkeypatch.chdir(tmp_path)  # a RELATIVE out, as `mito demo --slides` gives by default (runs/demo-slides)
    r = run_slide_demo(Path("ds"), device="cpu", say=narrator(console), source=amibr_dir, n_slides=8)
    text = " ".join(console.export_text().split())
    slides = sorted((tmp_path / "ds" / "slides").glob("*.svs"))
    assert len(slides) == 8
    s = openslide.OpenSlide(str(slides[0]))
    assert s.properties["openslide.vendor"] == "aperio" and float(s.properties["openslide.mpp-x"]) == 0.25 and s.level_count == 3
    assert len(list((tmp_path / "ds" / "annotations").glob("*.geojson"))) == 8
    with open_store(r["store"]) as st:
        t = st.tiles
    assert t["slide"].nunique() == 8 and len(t) == 8 * GRID[0] * GRID[1]  # one tile per crop, every crop on tissue
    per_slide = t.groupby("slide")["label"].apply(lambda v: int((v == "Atypical").sum()))
    assert sorted(set(per_slide)) == [0, PLANT[0] * PLANT[1]]  # the GeoJSON labels exactly the planted crops
    assert (t.groupby("slide")["diagnosis"].first().str.contains("atyp") == (per_slide > 0)).all()
    assert len(r["qc"]["written"]) == 8 and artifact_kind(r["model"]) == ("model", "slide")
    preds = pd.read_csv(r["predictions"])
    assert len(preds) == 8 and {"slide", "label", "split", "pred"} <= set(preds.columns)
    assert set(preds["label"]) == {"atypical", "normal"} and set(preds["split"]) == {"train", "val", "test"}
    pics = sorted(Path(r["pictures"]).glob("*.png"))
    assert len(pics) == 8
    with Image.open(pics[0]) as im:
        assert im.width > 300
    for where in (
        r["store"],
        r["model"],
        r["predictions"],
        r["pictures"],
        "mito extract",
        "mito slides qc",
        "mito fit-head",
        "--level slide",
        "mito predict",
        "--heatmaps",
        "a toy",
    ):
        assert where in text, where


def test_toy_slide_manifest_paths_resolve_from_the_manifests_folder(
    amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """extract reads a manifest's relative paths from the manifest's folder: the demo's manifest, written to a relative
    folder (the CLI's default runs/demo-slides), must name slides that exist when read that way (trial19's blocker)."""
    from mito.app.demo import build_toy_slides
    from mito.extract.manifests import read_path_manifest

    monkeypatch.chdir(tmp_path)
    built = build_toy_slides(Path("runs") / "demo-slides", amibr_dir, n_slides=2)
    df, given = read_path_manifest(built["manifest"], "slide manifest", "slides")
    assert given == ["slides/toy_00_normal.svs", "slides/toy_01_atypical.svs"]  # portable: the folder can move
    assert all(Path(p).is_file() for p in df["path"]), list(df["path"])
    assert [Path(p).parent.parent.name for p in df["path"]] == ["demo-slides"] * 2


def test_demo_cli_offers_slides_and_checks_its_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mito.cli import app

    r = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--slides" in r.output
    r = CliRunner().invoke(app, ["demo", "--slides", "--device", "tpu", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "--device must be auto, cpu or cuda" in r.output and not (tmp_path / "d").exists()
