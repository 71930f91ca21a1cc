"""Re-running extract on a store: a slide's own MPP is kept, a refused run writes nothing, label changes reach the
store, and an --mpp far finer than a slide is refused before any work (issue 19, items 19-21 and 27)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.extract import ExtractConfig, extract, open_source
from mito.extract.errors import ExtractError
from mito.extract.slide_tiles import SlideOptions
from mito.store import StoreError, open_store
from tests.conftest import AMIBR
from tests.extract.slide_data import mosaic, write_ome, write_plain, write_svs

runner = CliRunner()
KEY = "efficientnet_lite0:z1:rgb"
# 1 um/px tiles of 64 px: 256 level-0 px on the 0.25 um/px test slides (a few tiles per slide), in chunks of 5
FAST = {
    "mpp": 1.0,
    "tile_px": 64,
    "input_size": 64,
    "zooms": [1.0],
    "colors": ["rgb"],
    "chunk_rows": 5,
    "batch_size": 8,
    "num_workers": 0,
    "progress": False,
}
CLI = ["--input-size", "64", "--zooms", "1", "--colors", "rgb", "--chunk-rows", "5", "--batch-size", "8", "--workers", "0", "-q"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real 0.25 um/px slides, one that records 0.5 um/px, one without MPP; a store of the first slide alone."""
    r = tmp_path_factory.mktemp("rerun")
    img = mosaic()
    (r / "all").mkdir()
    write_svs(r / "all" / "a.svs", img)
    write_ome(r / "all" / "b.ome.tif", img[:, ::-1].copy())
    write_svs(r / "all" / "half.svs", img, mpp=0.5)
    write_plain(r / "all" / "nompp.tif", img)
    (r / "one").mkdir()
    os.symlink(r / "all" / "a.svs", r / "one" / "a.svs")
    extract(ExtractConfig(source=str(r / "one"), store=str(r / "one.zarr"), **FAST))
    return r


def _folder(root: Path, d: Path, names: list[str]) -> Path:
    d.mkdir()
    for n in names:
        os.symlink(root / "all" / n, d / n)
    return d


def _digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under the paths (a store folder or file, its .slides folder)."""
    out = {}
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- item 19: --slide-mpp fills in, never overrides


def test_slide_mpp_is_used_only_for_slides_that_record_none(root: Path, tmp_path: Path) -> None:
    d = _folder(root, tmp_path / "s", ["half.svs", "nompp.tif"])
    src = open_source(d, slide_options=SlideOptions(mpp=1.0, tile_px=64, slide_mpp=0.25), progress=False)
    t = src.tiles.groupby("slide").first()
    # half.svs records 0.5 um/px: a 64 px tile at 1 um/px is 128 of its level-0 px (not 256, as 0.25 would make it)
    assert t.at["half.svs", "slide_mpp"] == 0.5 and t.at["half.svs", "x1"] - t.at["half.svs", "x0"] == 128
    assert t.at["nompp.tif", "slide_mpp"] == 0.25 and t.at["nompp.tif", "x1"] - t.at["nompp.tif", "x0"] == 256
    rec = {r["slide"]: r for r in src.slides["info"]["slides"]}
    assert rec["half.svs"]["mpp_from"] == "recorded" and rec["nompp.tif"]["mpp_from"] == "--slide-mpp"
    assert src.slides["info"]["notes"] == [
        "half.svs records 0.5 um/px: kept (--slide-mpp 0.25 is only for slides that record none; "
        "an mpp column in a slide manifest replaces a slide's own)"
    ]
    # a manifest's mpp is explicit, per slide: it replaces the record, and says so
    pd.DataFrame({"path": [str(d / "half.svs")], "mpp": [0.25]}).to_csv(tmp_path / "m.csv", index=False)
    src = open_source(tmp_path / "m.csv", slide_options=SlideOptions(mpp=1.0, tile_px=64), progress=False)
    assert (src.tiles["slide_mpp"] == 0.25).all() and src.slides["info"]["slides"][0]["mpp_from"] == "manifest"
    assert src.slides["info"]["notes"] == ["half.svs records 0.5 um/px; the manifest's mpp 0.25 replaces it"]
    # the CLI prints the note and the store keeps the slide's own MPP
    res = runner.invoke(
        app,
        [
            "extract",
            str(d / "half.svs"),
            "--mpp",
            "1",
            "--tile-px",
            "64",
            "--slide-mpp",
            "0.25",
            "--limit",
            "2",
            "--store",
            str(tmp_path / "h.zarr"),
            *CLI,
        ],
    )
    out = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "note: half.svs records 0.5 um/px: kept (--slide-mpp 0.25 is only for slides that record none" in out
    assert (open_store(tmp_path / "h.zarr").tiles["slide_mpp"] == 0.5).all()


# ---------------------------------------------------------------- item 20: a refused re-run writes nothing


@pytest.mark.parametrize(
    "other",
    [
        ["--mpp", "0.5", "--tile-px", "128"],  # the same level-0 boxes (same tile ids) read at another resolution
        ["--mpp", "0.5", "--tile-px", "128", "--colors", "gray"],  # a variant the store lacks: only the tiling differs
    ],
)
def test_a_refused_rerun_leaves_the_store_byte_identical_and_sound(root: Path, tmp_path: Path, other: list[str]) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(root / "one.zarr", store)
    shutil.copytree(root / "one.zarr.slides", tmp_path / "s.zarr.slides")
    src = _folder(root, tmp_path / "src", ["a.svs", "b.ome.tif"])  # a new slide too: the run would append it
    before = _digest(store, tmp_path / "s.zarr.slides")
    res = runner.invoke(app, ["extract", str(src), "--store", str(store), *CLI, *other])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in out, res.output
    assert "made differently (slide_tiling.mpp: the store has 1.0, this run 0.5" in out or (
        "was tiled with --mpp 1 --tile-px 64, this run --mpp 0.5 --tile-px 128" in out
    ), out
    assert _digest(store, tmp_path / "s.zarr.slides") == before  # every file, byte for byte
    n = open_store(store).n_tiles
    res = runner.invoke(app, ["cache", "verify", str(store)])
    assert res.exit_code == 0 and f"ok: {n} tiles" in res.output, res.output
    # the original settings then add the new slide with true metadata
    res = runner.invoke(app, ["extract", str(src), "--store", str(store), "--mpp", "1", "--tile-px", "64", *CLI])
    assert res.exit_code == 0, res.output
    s = open_store(store)
    assert s.n_tiles > n and s.verify() == [] and set(s.tiles["slide"]) == {"a.svs", "b.ome.tif"}
    assert (s.tiles["level"] == 2).all() and (s.tiles["source_mpp"] == 1.0).all()


def test_rows_whose_geometry_would_change_are_refused_before_anything_is_written(root: Path, tmp_path: Path) -> None:
    """A tile table that says other pixels than were embedded (level, source_mpp ...) is never written."""
    from mito.extract.grow import grow_store

    store = tmp_path / "g.zarr"
    shutil.copytree(root / "one.zarr", store)
    before = _digest(store)
    src = open_source(
        _folder(root, tmp_path / "src", ["a.svs", "b.ome.tif"]), slide_options=SlideOptions(mpp=1.0, tile_px=64), progress=False
    )
    src.tiles["level"] = 1  # as another reader or pyramid would say
    with (
        open_store(store, "a") as s,
        pytest.raises(StoreError, match=r"slide a.svs is now tiled otherwise \(level: the store has 2, this run 1\)"),
    ):
        grow_store(s, src, str(store))
    assert _digest(store) == before


# ---------------------------------------------------------------- item 21: label changes reach the store


def test_label_changes_in_a_slide_manifest_update_the_tile_table(root: Path, tmp_path: Path) -> None:
    man = tmp_path / "slides.csv"
    pd.DataFrame({"path": [str(root / "all" / "a.svs"), str(root / "all" / "b.ome.tif")], "label": ["pos", "neg"]}).to_csv(man, index=False)
    store = tmp_path / "m.zarr"
    args = ["extract", str(man), "--store", str(store), "--mpp", "1", "--tile-px", "64", *CLI]
    assert runner.invoke(app, args).exit_code == 0
    feats = open_store(store).read([KEY], dtype=np.float16)
    paths = [str(root / "all" / "a.svs"), str(root / "all" / "b.ome.tif")]
    pd.DataFrame({"path": paths, "label": ["neg", "neg"]}).to_csv(man, index=False)
    res = runner.invoke(app, args)
    out = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    s = open_store(store)
    n_a = int((s.tiles["slide"] == "a.svs").sum())
    assert "0 tiles embedded" in out and f"updated label of {n_a} tiles in 1 slide(s) (a.svs) as SOURCE now gives them" in out, out
    assert s.verify() == [] and (s.tiles["label"] == "neg").all() and s.tasks == ["label"]
    assert np.array_equal(s.read([KEY], dtype=np.float16).view(np.uint16), feats.view(np.uint16))  # embeddings untouched
    assert s.meta["tile_updates"][-1]["columns"] == ["label"] and s.meta["tile_updates"][-1]["tiles"] == n_a
    assert not (store / "tiles_update").exists()  # nothing left staged
    # a new manifest column reaches every tile (patient becomes the group of grouped splits)
    pd.DataFrame({"path": paths, "label": ["neg", "neg"], "patient": ["p1", "p2"]}).to_csv(man, index=False)
    res = runner.invoke(app, args)
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "updated group of" in out and "added column(s) patient from SOURCE" in out, out
    s = open_store(store)
    assert s.verify() == [] and s.tiles.groupby("slide")["patient"].first().to_dict() == {"a.svs": "p1", "b.ome.tif": "p2"}
    assert (s.tiles["group"] == s.tiles["patient"]).all()
    # a no-op re-run says nothing and writes nothing
    before = _digest(store)
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "updated" not in res.output and _digest(store) == before


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_label_changes_in_a_crop_manifest_update_the_store_and_survive_an_interrupt(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mito.store import store as store_mod

    crops = sorted((AMIBR / "Atypical").glob("*.jpg"))[:2] + sorted((AMIBR / "Normal").glob("*.jpg"))[:2]
    man = tmp_path / "crops.csv"
    pd.DataFrame({"path": [str(c) for c in crops], "label": ["A", "A", "N", "N"]}).to_csv(man, index=False)
    store = tmp_path / f"c.{fmt}"
    cfg = ExtractConfig(source=str(man), store=str(store), **{k: v for k, v in FAST.items() if k not in ("mpp", "tile_px")})
    extract(cfg)
    pd.DataFrame({"path": [str(c) for c in crops], "label": ["A", "N", "N", "N"]}).to_csv(man, index=False)
    real = store_mod._write_array

    def killed(b: object, name: str, *a: object) -> None:
        if name.startswith("tiles/"):  # staged and recorded, then stopped while copying in
            raise KeyboardInterrupt
        real(b, name, *a)

    monkeypatch.setattr(store_mod, "_write_array", killed)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg)
    monkeypatch.setattr(store_mod, "_write_array", real)
    if fmt == "zarr":  # HDF5 dropped the killed run's private copy: the store is as before
        with pytest.raises(StoreError, match="updating its tile table \\(labels\\) was interrupted; re-run the same"):
            open_store(store)
        assert "was interrupted" in open_store(store, lenient=True).verify()[0]
    else:
        assert open_store(store).tiles["label"].tolist() == ["A", "A", "N", "N"]
    summary = extract(cfg)
    s = open_store(store)
    assert s.verify() == [] and s.tiles["label"].tolist() == ["A", "N", "N", "N"] and "tile_update" not in s.meta
    if fmt == "h5":
        assert summary["grown"]["updated_tiles"] == 1 and summary["grown"]["updated_columns"] == ["label"]


# ---------------------------------------------------------------- item 27: an --mpp far finer than the slide


def test_an_mpp_far_finer_than_the_slide_is_refused_naming_both(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    t0 = time.perf_counter()
    res = runner.invoke(app, ["extract", str(root / "all" / "a.svs"), "--mpp", "0.001", "--store", str(tmp_path / "f.zarr"), "-q"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in out and time.perf_counter() - t0 < 30, out
    assert "--mpp 0.001 is 250x finer than a.svs's level 0 (0.25 um/px)" in out and "use --mpp 0.0625 or coarser" in out
    assert not (tmp_path / "f.zarr").exists()
    ok = open_source(root / "all" / "a.svs", slide_options=SlideOptions(mpp=0.0625, tile_px=224), progress=False)  # 4x: allowed
    assert (ok.tiles["level"] == 0).all()
    with pytest.raises(ExtractError, match="is 4.17x finer"):
        open_source(root / "all" / "a.svs", slide_options=SlideOptions(mpp=0.06, tile_px=224), progress=False)
    from mito.extract import slide_tiles

    monkeypatch.setattr(slide_tiles, "MAX_GRID", 100)  # a grid too large to plan is refused up front, with its size
    with pytest.raises(ExtractError, match=r"a.svs: --mpp 0.25 with 64 px steps plans 384 grid tiles on its 1536x1024 px"):
        open_source(root / "all" / "a.svs", slide_options=SlideOptions(mpp=0.25, tile_px=64), progress=False)


# ---------------------------------------------------------------- item 28: slide messages


def test_a_geojson_with_a_byte_order_mark_is_read(root: Path, tmp_path: Path) -> None:
    from mito.extract.slide_tiles import load_regions
    from tests.extract.slide_data import write_geojson

    plain = write_geojson(tmp_path / "a.geojson")
    bom = tmp_path / "bom.geojson"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # as Windows tools write UTF-8
    assert [r.label for r in load_regions(bom)] == [r.label for r in load_regions(plain)] == ["Atypical", "Normal"]
    src = open_source(root / "all" / "a.svs", slide_options=SlideOptions(mpp=1.0, tile_px=64, annotations=str(bom)), progress=False)
    assert set(src.tiles["label"].dropna()) == {"Atypical", "Normal"}


def test_points_that_exist_but_hold_no_csv_are_named_as_such(root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for pts, said in (
        (os.devnull, f"points file {os.devnull} is empty: give a CSV with x,y columns"),
        (str(empty), f"points file {empty} is empty"),
        (str(tmp_path), "is a folder; give a CSV with x,y columns"),
        (str(tmp_path / "nope.csv"), "no such points file"),
    ):
        res = runner.invoke(app, ["extract", str(root / "all" / "a.svs"), "--points", pts, "--store", str(tmp_path / "p.zarr")])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and said in out and "Traceback" not in out, (pts, out)


def test_adding_slides_with_fewer_zooms_names_the_missing_zooms_and_the_command(root: Path, tmp_path: Path) -> None:
    store = tmp_path / "z.zarr"
    extract(ExtractConfig(source=str(_folder(root, tmp_path / "one", ["a.svs"])), store=str(store), **{**FAST, "zooms": [1.0, 0.25]}))
    src = _folder(root, tmp_path / "two", ["a.svs", "b.ome.tif"])
    before = _digest(store)
    res = runner.invoke(app, ["extract", str(src), "--store", str(store), "--mpp", "1", "--tile-px", "64", *CLI])  # CLI: --zooms 1
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in out, out
    assert "they lack the store's columns level_z0.25, outside_z0.25: the store's tiles carry zoom(s) 0.25 that this run lacks" in out, out
    assert f"`mito extract {src.resolve()} --store {store} --zooms 1,0.25 ...`" in out, out
    assert _digest(store) == before
