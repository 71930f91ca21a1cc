"""Whole slides: real H&E crops mosaicked into an Aperio .svs, an OME-TIFF, an MPP-less TIFF and a corrupt file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.extract import ExtractConfig, extract, open_source
from mito.extract.slide_tiles import SlideOptions, read_views
from mito.store import StoreError, open_store
from mito.wsi.reader import (
    SlideReadError,
    check_mpp,
    close_slide,
    open_slide,
    read_box,
    read_region,
)
from tests.extract.slide_data import REGIONS, slide_folder, write_geojson

runner = CliRunner()
SMALL = {
    "mpp": 0.5,
    "tile_px": 64,
    "input_size": 64,
    "colors": ["rgb"],
    "chunk_rows": 16,
    "batch_size": 16,
    "num_workers": 0,
    "progress": False,
}


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wsi")
    slide_folder(root / "slides")
    write_geojson(root / "a.geojson")
    return root


def _in_regions(boxes: np.ndarray, mirrored: bool = False) -> np.ndarray:
    ok = np.zeros(len(boxes), bool)
    for x0, y0, x1, y1 in REGIONS.values():
        if mirrored:
            x0, x1 = 1536 - x1, 1536 - x0
        ok |= (boxes[:, 0] >= x0) & (boxes[:, 2] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 3] <= y1)
    return ok


def test_readers_see_the_pyramid_and_the_mpp(slides: Path) -> None:
    svs = open_slide(slides / "slides" / "a.svs")
    assert svs.reader == "openslide" and svs.handle.properties["openslide.vendor"] == "aperio"
    assert svs.level_dimensions == [(1536, 1024), (768, 512), (384, 256)] and svs.level_downsamples == [1.0, 2.0, 4.0]
    assert svs.mpp == pytest.approx(0.25)
    same = open_slide(slides / "slides" / "a.svs", reader="tifffile")
    assert same.reader == "tifffile" and same.level_dimensions == svs.level_dimensions and same.mpp == pytest.approx(0.25)
    a, b = read_region(svs, 1, 100, 50, 64, 48), read_region(same, 1, 100, 50, 64, 48)
    assert a.shape == (48, 64, 3) and np.abs(a.astype(int) - b.astype(int)).mean() < 2  # two JPEG decoders
    edge = read_region(svs, 0, 1500, 1000, 64, 64)  # beyond the slide: white glass
    assert (edge[30:, 40:] == 255).all()
    ome = open_slide(slides / "slides" / "b.ome.tif")
    assert ome.reader == "tifffile" and len(ome.level_dimensions) == 3 and ome.mpp == pytest.approx(0.25)
    nompp = open_slide(slides / "slides" / "nompp.tif")
    with pytest.raises(SlideReadError, match="nompp.tif records no microns per pixel"):
        check_mpp(nompp, None)
    with pytest.raises(SlideReadError, match="nompp.tif.*1000"):
        check_mpp(nompp, 1000.0)
    assert check_mpp(nompp, 0.25) == 0.25
    with pytest.raises(SlideReadError, match="broken.svs"):
        open_slide(slides / "slides" / "broken.svs")
    for s in (svs, same, ome, nompp):
        close_slide(s)


def test_tile_at_half_mpp_equals_the_level0_area_resampled(slides: Path) -> None:
    svs = open_slide(slides / "slides" / "a.svs")
    box = (256.0, 256.0, 384.0, 384.0)  # 128 level-0 px = 64 px at 0.5 um/px
    tile, level = read_box(svs, box, 64)
    assert level == 1  # the nearest level at least as fine as 0.5 um/px
    lvl0 = read_region(svs, 0, 256, 256, 128, 128).astype(np.float64)
    independent = lvl0.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))  # 2x2 area average of level 0
    err = np.abs(tile.astype(np.float64) - independent)
    assert err.mean() < 6.0, err.mean()  # two JPEG encodings (level 0, level 1) apart
    shifted = read_region(svs, 0, 264, 256, 128, 128).astype(np.float64).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(tile - shifted).mean() > 2 * err.mean()  # 8 level-0 px off is clearly worse
    # lossless (zlib) OME-TIFF: exactly the 2x2 mean, up to rounding
    ome = open_slide(slides / "slides" / "b.ome.tif")
    tile, level = read_box(ome, box, 64)
    lvl0 = read_region(ome, 0, 256, 256, 128, 128).astype(np.float64).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert level == 1 and np.abs(tile - lvl0).max() <= 0.5
    close_slide(ome)
    # a fractional box (0.3 um/px tile) is resampled exactly, from level 0
    frac, level = read_box(svs, (256.0, 256.0, 256 + 64 * 1.2, 256 + 64 * 1.2), 64)
    assert level == 0 and frac.shape == (64, 64, 3)
    close_slide(svs)


def test_zoom_quarter_is_centred_on_the_tile_and_counts_the_margin(slides: Path) -> None:
    opts = SlideOptions(mpp=0.5, tile_px=64, zooms=(1.0, 0.25))
    src = open_source(slides / "slides" / "a.svs", slide_options=opts, progress=False)
    t = src.tiles
    assert {"level_z0.25", "outside_z0.25", "outside_z1"} <= set(t.columns)
    assert (t["level"] == 1).all() and (t["level_z0.25"] == 2).all() and (t["source_mpp"] == 0.5).all()
    for i in range(0, len(t), 7):
        z1, z4 = read_views(src, i, [1.0, 0.25])
        assert z1.shape == z4.shape == (64, 64, 3)
        centre = z4[24:40, 24:40].astype(np.float64)  # the central quarter of the wide view
        small = z1.astype(np.float64).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
        off = z4[24:40, 28:44].astype(np.float64)
        assert np.abs(centre - small).mean() < 10 and np.abs(centre - small).mean() < np.abs(off - small).mean()
    # the top-left tile (box 128..256): a 4x wider field reaches 64 px past the slide edge on two sides
    r = t.index[(t["x0"] == 128) & (t["y0"] == 128)][0]
    assert t.at[r, "outside_z0.25"] == pytest.approx(1 - (512 - 64) ** 2 / 512**2)
    assert t.at[r, "outside_z1"] == 0


def test_grid_tiles_lie_on_tissue_only_and_take_labels_from_geojson(slides: Path) -> None:
    opts = SlideOptions(mpp=0.5, tile_px=64, annotations=str(slides / "a.geojson"))
    t = open_source(slides / "slides", slide_options=opts, progress=False).tiles
    assert set(t["slide"]) == {"a.svs", "b.ome.tif"}
    for name, mirrored in (("a.svs", False), ("b.ome.tif", True)):
        s = t[t["slide"] == name]
        boxes = s[["x0", "y0", "x1", "y1"]].to_numpy()
        assert _in_regions(boxes, mirrored).all()  # the white margins give no tile
        assert 44 <= len(s) <= 48  # the 2 x 24 grid cells on crops (a few mostly-white crops may fall short)
        assert (s["tissue"] >= 0.5).all() and (s["slide_mpp"] == 0.25).all()
    a = t[t["slide"] == "a.svs"]
    expect = np.where(a["x1"] <= 640, "Atypical", "Normal")
    assert (a["label"].to_numpy() == expect).all() and (a["label_cover"] == 1).all()
    assert t[t["slide"] == "b.ome.tif"]["label"].isna().all()  # no b.geojson: no labels
    # regions shifted by a quarter tile: left edge tiles are 3/4 covered, and --label-overlap drops them
    (slides / "shift").mkdir()
    write_geojson(slides / "shift" / "a.geojson", shift=(32, 0))
    t2 = open_source(
        slides / "slides" / "a.svs", slide_options=SlideOptions(mpp=0.5, tile_px=64, annotations=str(slides / "shift")), progress=False
    ).tiles
    assert sorted(set(np.round(t2["label_cover"].dropna(), 2))) == [0.75, 1.0] and t2["label"].notna().all()
    t3 = open_source(
        slides / "slides" / "a.svs",
        slide_options=SlideOptions(mpp=0.5, tile_px=64, annotations=str(slides / "shift"), label_overlap=0.8),
        progress=False,
    ).tiles
    assert (
        len(t3) == len(t2) - int(((t2["label_cover"] == 0.75) & t2["label"].notna()).sum())
        and (t3["label"].isna() | (t3["label_cover"] == 1)).all()
    )


def test_manifest_columns_flow_and_bad_slides_are_listed_not_fatal(slides: Path, tmp_path: Path) -> None:
    d = slides / "slides"
    pd.DataFrame(
        {
            "path": ["a.svs", "nompp.tif", "broken.svs", "b.ome.tif"],
            "label": ["tumour", "normal", "x", "normal"],
            "patient": ["p1", "p2", "p3", "p1"],
            "mpp": [None, 0.25, None, 1000.0],
        }
    ).to_csv(d / "manifest.csv", index=False)
    res = runner.invoke(
        app,
        [
            "extract",
            str(d / "manifest.csv"),
            "--mpp",
            "0.5",
            "--tile-px",
            "64",
            "--input-size",
            "64",
            "--zooms",
            "1",
            "--colors",
            "rgb",
            "--store",
            str(tmp_path / "m.zarr"),
            "--limit",
            "8",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "slide skipped: tifffile cannot read broken.svs" in out and "b.ome.tif: given microns per pixel 1000" in out
    s = open_store(tmp_path / "m.zarr")
    assert {x["slide"] for x in s.meta["slides"]["skipped"]} == {"broken.svs", "b.ome.tif"}
    full = open_source(d / "manifest.csv", slide_options=SlideOptions(mpp=0.5, tile_px=64), progress=False).tiles
    assert set(full["slide"]) == {"a.svs", "nompp.tif"}  # nompp.tif got its mpp from the manifest
    by = full.groupby("slide").first()
    assert by.at["a.svs", "label"] == "tumour" and by.at["nompp.tif", "group"] == "p2" and by.at["a.svs", "patient"] == "p1"
    # one slide without MPP and nothing else: one line naming it, exit 2
    res = runner.invoke(app, ["extract", str(d / "nompp.tif"), "--mpp", "0.5", "--store", str(tmp_path / "n.zarr")])
    assert res.exit_code == 2 and "nompp.tif records no microns per pixel" in res.output and "Traceback" not in res.output


def test_points_on_an_svs_at_a_given_mpp(slides: Path, tmp_path: Path) -> None:
    pts = tmp_path / "points.csv"
    pd.DataFrame({"x": [300, 1000, 5], "y": [300, 500, 5], "label": ["a", "b", "a"]}).to_csv(pts, index=False)
    summary = extract(
        ExtractConfig(
            source=str(slides / "slides" / "a.svs"),
            points=str(pts),
            store=str(tmp_path / "p.zarr"),
            zooms=[1.0, 0.5],
            **{**SMALL, "mpp": 0.25, "tile_px": 32},
        )
    )
    s = open_store(tmp_path / "p.zarr")
    t = s.tiles
    assert summary["n_tiles"] == 3 and t["label"].tolist() == ["a", "b", "a"] and (t["level"] == 0).all()
    assert t["x"].tolist() == [300, 1000, 5] and t.at[2, "outside_z1"] > 0  # a point near the corner reads white beyond it
    x = s.read(["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z0.5:rgb"])
    assert np.isfinite(x).all() and not np.allclose(x[:, :1280], x[:, 1280:], atol=1e-2)


def _done(store: Path) -> int:
    try:
        s = open_store(store)
        # chunks done in every variant: a kill may land between two variants' writes of one chunk
        return int(np.logical_and.reduce([s.done_chunks(v) for v in s.variants]).sum()) if s.variants else 0
    except (StoreError, IndexError, KeyError, FileNotFoundError, ValueError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_a_clean_run(slides: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed.zarr"
    src = tmp_path / "src"  # one slide (6 chunks of 8 tiles) and the corrupt one: small enough for 2 shared cores
    src.mkdir()
    for name in ("a.svs", "broken.svs"):
        os.symlink(slides / "slides" / name, src / name)
    args = [
        sys.executable,
        "-m",
        "mito",
        "extract",
        str(src),
        "--mpp",
        "0.5",
        "--tile-px",
        "64",
        "--input-size",
        "64",
        "--zooms",
        "1,0.25",
        "--colors",
        "rgb",
        "--store",
        str(killed),
        "--chunk-rows",
        "8",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--annotations",
        str(slides / "a.geojson"),
        "--quiet",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 600  # generous: the 2 cores are shared
    while _done(killed) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = _done(killed)
    assert 1 <= n_before < 6, "the run should have been killed part-way (6 chunks of 8 tiles)"
    cfg = dict(SMALL, chunk_rows=8, batch_size=8, zooms=[1.0, 0.25], annotations=str(slides / "a.geojson"))
    resumed = extract(ExtractConfig(source=str(src), store=str(killed), **cfg))
    assert resumed["backbones"]["efficientnet_lite0"]["skipped_chunks"] >= n_before
    assert [x["slide"] for x in resumed["skipped_slides"]] == ["broken.svs"]
    extract(ExtractConfig(source=str(src), store=str(tmp_path / "full.zarr"), **cfg))
    a, b = open_store(killed), open_store(tmp_path / "full.zarr")
    assert a.verify() == [] and a.tiles.equals(b.tiles) and len(a.tiles) == 48
    assert [dict(r, mask_geojson=None) for r in a.meta["slides"]["slides"]] == [
        dict(r, mask_geojson=None) for r in b.meta["slides"]["slides"]
    ]
    keys = ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z0.25:rgb"]
    xa, xb = a.read(keys), b.read(keys)
    for i in range(len(xa)):
        np.testing.assert_allclose(xa[i], xb[i], rtol=2e-3, atol=2e-3, err_msg=f"row {i}")
    geo = json.loads(Path(str(killed) + ".slides", "a.svs.tissue.geojson").read_text())
    assert geo["features"][0]["geometry"]["type"] == "MultiPolygon" and geo["features"][0]["geometry"]["coordinates"]


def test_slide_options_need_mpp(slides: Path, tmp_path: Path) -> None:
    d = slides / "slides"
    res = runner.invoke(app, ["extract", str(d / "a.svs"), "--tile-px", "64", "--min-tissue", "0.3", "--store", str(tmp_path / "x.zarr")])
    assert res.exit_code == 2 and "--tile-px, --min-tissue tile whole slides: also give --mpp" in " ".join(res.output.split())
    res = runner.invoke(app, ["extract", str(d / "a.svs"), "--mpp", "0.5", "--label-overlap", "0.5", "--store", str(tmp_path / "x.zarr")])
    assert res.exit_code == 2 and "--label-overlap needs --annotations" in res.output
    res = runner.invoke(
        app, ["extract", str(d / "a.svs"), "--mpp", "0.5", "--annotations", str(tmp_path / "nope"), "--store", str(tmp_path / "x.zarr")]
    )
    assert res.exit_code == 2 and "no such annotations" in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_tile_size_in_microns() -> None:
    from mito.extract import ExtractError
    from mito.extract.slide_tiles import options_from

    assert options_from(None, None, None, [1.0]) is None
    o = options_from(None, 64, 32.0, [1.0])
    assert (o.mpp, o.tile_px) == (0.5, 64)
    o = options_from(0.25, None, 56.0, [1.0, 0.25])
    assert (o.mpp, o.tile_px, o.zooms) == (0.25, 224, (1.0, 0.25))
    assert options_from(0.5, None, None, [1.0]).tile_px == 224
    with pytest.raises(ExtractError, match="not all three"):
        options_from(0.5, 64, 32.0, [1.0])


def test_a_corrupt_tile_marks_only_the_tiles_that_touch_it(slides: Path, tmp_path: Path) -> None:
    import shutil

    import tifffile

    bad = tmp_path / "bad.svs"
    shutil.copy(slides / "slides" / "a.svs", bad)
    with tifffile.TiffFile(bad) as t:  # level 1, file tile 5 = level-1 x 512..768, y 256..512
        page = t.pages[1]
        off, n = page.dataoffsets[5], page.databytecounts[5]
    with open(bad, "r+b") as f:
        f.seek(off + 2)
        f.write(b"\xff\xd9" * ((n - 4) // 2))
    src = open_source(bad, slide_options=SlideOptions(mpp=0.5, tile_px=64), progress=False)
    failed = []
    for i in range(len(src)):
        try:
            read_views(src, i, [1.0])
        except OSError as e:
            assert "bad.svs" in str(e)
            failed.append(i)
    t = src.tiles
    touches = (t["x1"] / 2 + 4 > 512) & (t["y1"] / 2 + 4 > 256) & (t["y0"] / 2 - 4 < 512)  # with the filter margin
    assert failed and set(failed) == set(np.flatnonzero(touches))
    assert any(i not in failed for i in range(min(failed), len(t)))  # reads after a failure succeed (handle reopened)
    assert len(failed) < len(t) // 2


def test_tile_size_is_bounded_and_the_widest_view_must_fit_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from mito.extract import ExtractError
    from mito.extract.slide_tiles import options_from

    with pytest.raises(ExtractError, match="more than 16384 px"):
        options_from(0.001, None, 500.0, [1.0])
    with pytest.raises(ValidationError, match="16384"):
        ExtractConfig(source="x", store="y.zarr", mpp=0.5, tile_px=20000)
    monkeypatch.setattr("mito.extract.slide_tiles.available_memory", lambda: 64 << 20)
    assert options_from(0.5, 1024, None, [1.0]).tile_px == 1024  # 3 MiB
    with pytest.raises(ExtractError, match=r"4096 x 4096 px view .* x 3 worker"):
        options_from(0.5, 1024, None, [1.0, 0.25], workers=3)  # 48 MiB x 3


def test_one_slide_stem_for_annotations_and_export() -> None:
    from mito.extract import slide_tiles
    from mito.interop import trident as export
    from mito.wsi import reader as slides

    assert slide_tiles.stem is slides.stem and not hasattr(export, "stem")
    assert [slides.stem(n) for n in ("a.svs", "b.ome.tif", "C.OME.TIFF", "d.x.tiff")] == ["a", "b", "C", "d.x"]


def test_a_rerun_reads_only_the_zooms_still_missing(slides: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mito.extract.sources import TileSource

    store = tmp_path / "z.zarr"
    cfg = dict(SMALL, source=str(slides / "slides" / "a.svs"), store=str(store), limit=8)
    extract(ExtractConfig(zooms=[1.0], **cfg))
    asked: list[list[float]] = []
    real = TileSource.read_views
    monkeypatch.setattr(TileSource, "read_views", lambda self, i, zooms: asked.append(list(zooms)) or real(self, i, zooms))
    extract(ExtractConfig(zooms=[1.0, 0.5], **cfg))
    assert len(asked) == 8 and all(z == [0.5] for z in asked)
    s = open_store(store)
    assert s.is_complete("efficientnet_lite0:z0.5:rgb") and not s.unreadable.any()


def test_only_the_main_rank_draws_the_slide_progress(slides: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mito.extract import distributed, extractor

    seen: list[bool] = []

    def fake_open_source(*args: object) -> None:
        seen.append(bool(args[-1]))
        raise SlideReadError("stop here")

    monkeypatch.setattr(extractor, "open_source", fake_open_source)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "setup", lambda rank=rank: distributed.Dist(rank=rank, world=1))
        with pytest.raises(SlideReadError, match="stop here"):
            extract(ExtractConfig(**dict(SMALL, progress=True), source=str(slides / "slides"), store=str(tmp_path / "r.zarr"), zooms=[1.0]))
    assert seen == [True, False]


def test_same_named_slides_in_two_subfolders_are_refused_naming_both(slides: Path, tmp_path: Path) -> None:
    src = tmp_path / "two"
    for sub in ("x", "y"):
        (src / sub).mkdir(parents=True)
        shutil.copy(slides / "slides" / "a.svs", src / sub / "a.svs")
    res = runner.invoke(app, ["extract", str(src), "--mpp", "0.5", "--tile-px", "64", "--store", str(tmp_path / "t.zarr"), "-q"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "two slides are named a.svs" in out and "Traceback" not in out, res.output
    assert "two/x/a.svs" in out.replace(" ", "") and "two/y/a.svs" in out.replace(" ", "")
    assert not (tmp_path / "t.zarr").exists()


def _open_fds(target: Path) -> int:
    fds = Path("/proc/self/fd")
    n = 0
    for fd in fds.iterdir():
        try:
            n += os.readlink(fd) == str(target.resolve())
        except OSError:
            pass
    return n


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to see open files")
def test_no_slide_stays_open_after_an_extract_without_workers(slides: Path, tmp_path: Path) -> None:
    a = tmp_path / "c.ome.tif"  # tifffile keeps its file open while the handle lives
    shutil.copy(slides / "slides" / "b.ome.tif", a)
    extract(ExtractConfig(**dict(SMALL, source=str(a), store=str(tmp_path / "h.zarr"), zooms=[1.0], limit=4)))
    assert open_store(tmp_path / "h.zarr").is_complete("efficientnet_lite0:z1:rgb")
    assert _open_fds(a) == 0


def test_a_no_op_rerun_does_not_rewrite_the_slide_record(slides: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mito.store.store import Store

    written: list[str] = []
    real = Store.record
    monkeypatch.setattr(Store, "record", lambda self, name, value: written.append(name) or real(self, name, value))
    cfg = ExtractConfig(**dict(SMALL, source=str(slides / "slides" / "a.svs"), store=str(tmp_path / "n.h5"), zooms=[1.0], limit=4))
    extract(cfg)
    assert written.count("slides") == 1
    extract(cfg)
    assert written.count("slides") == 1
    assert open_store(tmp_path / "n.h5").meta["slides"]["slides"][0]["slide"] == "a.svs"


def test_points_with_and_without_mpp_go_through_the_one_slide_reader(slides: Path, tmp_path: Path) -> None:
    from mito.extract import sources

    svs = slides / "slides" / "a.svs"
    pts = tmp_path / "points.csv"
    pd.DataFrame({"x": [300, 1000], "y": [300, 500], "label": ["a", "b"]}).to_csv(pts, index=False)
    common = ["--input-size", "64", "--zooms", "1", "--colors", "rgb", "--workers", "0", "-q"]
    res = runner.invoke(app, ["extract", str(svs), "--points", str(pts), "--tile-size", "64", "--store", str(tmp_path / "n.zarr"), *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["extract", str(svs), "--points", str(pts), "--mpp", "0.25", "--tile-px", "64", "--store", str(tmp_path / "m.zarr"), *common]
    )
    assert res.exit_code == 0, res.output
    n, m = open_store(tmp_path / "n.zarr"), open_store(tmp_path / "m.zarr")
    assert n.meta["source"]["kind"] == m.meta["source"]["kind"] == "slides" and not hasattr(sources, "_open_slide")
    assert n.tiles["tile_id"].tolist() == m.tiles["tile_id"].tolist() == ["a.svs:300:300", "a.svs:1000:500"]
    assert (n.tiles["level"] == 0).all() and n.tiles[["x0", "y0"]].to_numpy().tolist() == [[268, 268], [968, 468]]
    # at the slide's own 0.25 um/px both forms read the same 64 level-0 pixels, so they embed alike
    np.testing.assert_allclose(n.read(["efficientnet_lite0:z1:rgb"]), m.read(["efficientnet_lite0:z1:rgb"]), atol=2e-3)
    src = open_source(svs, points=pts, tile_size=64)
    s = open_slide(svs)
    np.testing.assert_array_equal(src.read(0), read_region(s, 0, 268, 268, 64, 64))  # level 0 as it is, no resampling
    close_slide(s)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"x": ["left"], "y": [1]}).to_csv(bad, index=False)
    for extra in ([], ["--mpp", "0.25"]):  # one parser for both forms
        res = runner.invoke(app, ["extract", str(svs), "--points", str(bad), *extra, "--store", str(tmp_path / "b.zarr")])
        assert res.exit_code == 2 and "x and y in" in res.output and "must be numbers" in res.output, res.output
