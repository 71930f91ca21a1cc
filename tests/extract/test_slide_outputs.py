"""What comes out of a slide store: QC pictures, TRIDENT/CLAM HDF5 export, predicted-probability heatmaps."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from mito.cli import app
from mito.extract import ExtractConfig, extract
from mito.store import open_store
from tests.extract.slide_data import slide_folder, write_geojson

runner = CliRunner()
KEY = "efficientnet_lite0:z1:rgb"


@pytest.fixture(scope="module")
def slide_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wsi-out")
    slide_folder(root / "slides")
    write_geojson(root / "a.geojson")
    store = root / "s.zarr"
    extract(
        ExtractConfig(
            source=str(root / "slides"),
            store=str(store),
            mpp=0.5,
            tile_px=64,
            input_size=64,
            zooms=[1.0],
            colors=["rgb"],
            annotations=str(root / "a.geojson"),
            chunk_rows=32,
            batch_size=32,
            num_workers=0,
            progress=False,
        )
    )
    return store


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_qc_draws_each_slide_and_lists_the_skipped(slide_store: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["slides", "qc", str(slide_store), "--out", str(tmp_path / "qc")])
    assert res.exit_code == 0, res.output
    a = _png(tmp_path / "qc" / "a.svs.png")
    assert a.shape[0] > 300 and a.shape[1] > 400
    yellow = (a[..., 0] > 200) & (a[..., 1] > 200) & (a[..., 2] < 80)  # the kept tiles' boxes
    cyan = (a[..., 0] < 80) & (a[..., 1] > 200) & (a[..., 2] > 200)  # the tissue outline
    assert yellow.sum() > 500 and cyan.sum() > 500
    assert (tmp_path / "qc" / "b.ome.tif.png").is_file()
    skipped = pd.read_csv(tmp_path / "qc" / "skipped.csv")
    assert set(skipped["slide"]) == {"broken.svs", "nompp.tif"}
    plain = open_store(slide_store)
    res = runner.invoke(app, ["slides", "qc", str(Path(plain.path).parent / "nope.zarr"), "--out", str(tmp_path / "q2")])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_trident_export_round_trips(slide_store: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["export", "--store", str(slide_store), "--format", "trident", "--out", str(tmp_path / "feats"), "--features", KEY]
    )
    assert res.exit_code == 0, res.output
    s = open_store(slide_store)
    t, x = s.tiles, s.read([KEY])
    for name, stem in (("a.svs", "a"), ("b.ome.tif", "b")):
        with h5py.File(tmp_path / "feats" / f"{stem}.h5", "r") as f:
            feats, coords = f["features"][:], f["coords"][:]
            assert f["coords"].attrs["patch_size"] == 64 and f["coords"].attrs["patch_size_level0"] == 128
            assert f["coords"].attrs["level0_mpp"] == 0.25 and f["coords"].attrs["target_mpp"] == 0.5
            assert f["features"].attrs["variant"] == KEY
        rows = np.flatnonzero(t["slide"] == name)
        assert feats.shape == (len(rows), 1280) and feats.dtype == np.float32
        np.testing.assert_array_equal(feats, x[rows])
        np.testing.assert_array_equal(coords, t[["x0", "y0"]].to_numpy()[rows].astype(np.int64))
    res = runner.invoke(app, ["export", "--store", str(slide_store), "--format", "clam2", "--out", str(tmp_path / "f2")])
    assert res.exit_code == 2 and "--format must be one of trident" in res.output


def test_predict_writes_a_heatmap_per_slide(slide_store: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(slide_store),
            "--out",
            str(tmp_path / "m"),
            "--head",
            "logreg",
            "--group-column",
            "none",
            "--features",
            KEY,
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tmp_path / "m"),
            "--store",
            str(slide_store),
            "--out",
            str(tmp_path / "p.csv"),
            "--heatmaps",
            str(tmp_path / "heat"),
        ],
    )
    assert res.exit_code == 0, res.output
    preds = pd.read_csv(tmp_path / "p.csv")
    assert {"slide", "x", "y", "pred", "p_Atypical", "p_Normal"} <= set(preds.columns)
    for name in ("a.svs", "b.ome.tif"):
        img = _png(tmp_path / "heat" / f"{name}.heatmap.png")
        assert img.shape[0] > 200 and img.std() > 10
    # new slides are embedded the model's way (0.5 um/px, 64 px tiles): the same predictions as from the store
    res = runner.invoke(
        app,
        [
            "predict",
            str(slide_store.parent / "slides" / "a.svs"),
            "--model",
            str(tmp_path / "m"),
            "--out",
            str(tmp_path / "p2.csv"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    again = pd.read_csv(tmp_path / "p2.csv")
    mine = preds[preds["slide"] == "a.svs"].reset_index(drop=True)
    assert again[["slide", "x", "y", "pred"]].equals(mine[["slide", "x", "y", "pred"]])
    # a store tiled at another mpp is refused
    other = tmp_path / "other.zarr"
    extract(
        ExtractConfig(
            source=str(slide_store.parent / "slides" / "a.svs"),
            store=str(other),
            mpp=0.25,
            tile_px=64,
            input_size=64,
            zooms=[1.0],
            colors=["rgb"],
            limit=4,
            num_workers=0,
            progress=False,
        )
    )
    res = runner.invoke(app, ["predict", "--model", str(tmp_path / "m"), "--store", str(other), "--out", str(tmp_path / "p3.csv")])
    assert res.exit_code == 2 and "slide_tiling" in res.output


def test_heatmaps_without_a_store_are_refused_before_any_work(slide_store: Path, tmp_path: Path) -> None:
    a = slide_store.parent / "slides" / "a.svs"
    res = runner.invoke(
        app,
        ["predict", str(a), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "p.csv"), "--heatmaps", str(tmp_path / "heat")],
    )
    assert res.exit_code == 2 and "--heatmaps needs --store" in res.output
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "heat").exists()


def test_outputs_refuse_stores_and_earlier_outputs_without_overwrite(slide_store: Path, tmp_path: Path) -> None:
    for cmd in (["export", "--store", str(slide_store)], ["slides", "qc", str(slide_store)]):
        res = runner.invoke(app, [*cmd, "--out", str(slide_store / "inside")])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert not (slide_store / "inside").exists()
        out = tmp_path / cmd[0]
        assert runner.invoke(app, [*cmd, "--out", str(out)]).exit_code == 0
        before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
        res = runner.invoke(app, [*cmd, "--out", str(out)])
        assert res.exit_code == 2 and "--overwrite" in res.output
        assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before
        res = runner.invoke(app, [*cmd, "--out", str(out), "--overwrite"])
        assert res.exit_code == 0 and sorted(f.name for f in out.iterdir()) == sorted(before)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    res = runner.invoke(app, ["export", "--store", str(slide_store), "--out", str(tmp_path / "mine"), "--overwrite"])
    assert res.exit_code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_predict_heatmaps_refuse_a_folder_inside_the_store_before_any_work(slide_store: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(slide_store),
            "--out",
            str(tmp_path / "m"),
            "--head",
            "logreg",
            "--group-column",
            "none",
            "--features",
            KEY,
        ],
    )
    assert res.exit_code == 0, res.output
    for heat in (slide_store / "heat", tmp_path / "m" / "heat"):
        res = runner.invoke(
            app,
            [
                "predict",
                "--model",
                str(tmp_path / "m"),
                "--store",
                str(slide_store),
                "--out",
                str(tmp_path / "p.csv"),
                "--heatmaps",
                str(heat),
            ],
        )
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert not heat.exists() and not (tmp_path / "p.csv").exists()


def test_qc_names_a_damaged_mask_file_and_refuses_an_unknown_reader(slide_store: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["slides", "qc", str(slide_store), "--out", str(tmp_path / "q0"), "--reader", "foo"])
    assert res.exit_code == 2 and "--reader must be one of auto, openslide, tifffile" in res.output
    mask = Path(f"{slide_store}.slides") / "a.svs.tissue.geojson"
    text = mask.read_text()
    try:
        for bad in (text[: len(text) // 2], '{"features": [{"geometry": {}}]}'):
            mask.write_text(bad)
            res = runner.invoke(app, ["slides", "qc", str(slide_store), "--out", str(tmp_path / "q1")])
            assert res.exit_code == 2 and "a.svs.tissue.geojson" in res.output and "Traceback" not in res.output, res.output
            assert not (tmp_path / "q1").exists()
    finally:
        mask.write_text(text)
