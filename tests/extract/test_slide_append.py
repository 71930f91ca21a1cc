"""Adding slides (or crops) to an existing store: only the new tiles are embedded, old rows stay bit for bit,
a kill -9 during the append or its embedding resumes to the uninterrupted result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.extract import ExtractConfig, extract
from mito.store import StoreError, open_store
from tests.conftest import AMIBR, amibr_subset
from tests.extract.slide_data import mosaic, write_ome, write_svs

runner = CliRunner()
KEY = "efficientnet_lite0:z1:rgb"
# 48 tiles per slide in chunks of 20: the second slide's first 12 tiles land in the old last chunk (8 old rows)
SMALL = {
    "mpp": 0.5,
    "tile_px": 64,
    "input_size": 64,
    "zooms": [1.0],
    "colors": ["rgb"],
    "chunk_rows": 20,
    "batch_size": 16,
    "num_workers": 0,
    "progress": False,
}
CLI = [
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
    "--chunk-rows",
    "20",
    "--batch-size",
    "16",
    "--workers",
    "0",
    "-q",
]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real slides; a store of the first alone (kept pristine) and a store made from both at once."""
    root = tmp_path_factory.mktemp("append")
    (root / "both").mkdir()
    img = mosaic()
    write_svs(root / "both" / "a.svs", img)
    write_ome(root / "both" / "b.ome.tif", img[:, ::-1].copy())
    (root / "one").mkdir()
    os.symlink(root / "both" / "a.svs", root / "one" / "a.svs")
    extract(ExtractConfig(source=str(root / "one"), store=str(root / "one.zarr"), **SMALL))
    extract(ExtractConfig(source=str(root / "both"), store=str(root / "both.zarr"), **SMALL))
    return {"root": root, "one": root / "one.zarr", "both": root / "both.zarr"}


def _by_id(store: Path) -> dict[str, np.ndarray]:
    s = open_store(store)
    return dict(zip(s.tiles["tile_id"], s.read([KEY], dtype=np.float16)))


def _source(two: dict[str, Path], d: Path, slides: list[str]) -> Path:
    d.mkdir()
    for s in slides:
        os.symlink(two["root"] / "both" / s, d / s)
    return d


def test_adding_a_slide_embeds_only_its_tiles_and_keeps_old_rows_bit_for_bit(
    two: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mito.core.progress import GroupProgress

    seen: list[tuple[str, int, int]] = []  # the per-slide line under the overall bar: slide, done, total
    real = GroupProgress.advance

    def spy(self: GroupProgress, items: np.ndarray) -> None:
        real(self, items)
        seen.append((self.names[self.current], int(self.done[self.current]), int(self.totals[self.current])))

    monkeypatch.setattr(GroupProgress, "advance", spy)
    root = two["root"]
    src = _source(two, tmp_path / "src", ["a.svs"])
    store = tmp_path / "s.zarr"
    shutil.copytree(two["one"], store)
    before = open_store(store).read([KEY], dtype=np.float16)
    os.symlink(root / "both" / "b.ome.tif", src / "b.ome.tif")
    res = runner.invoke(app, ["extract", str(src), "--store", str(store), *CLI[:-1]])  # with progress
    out = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert seen[-1] == ("b.ome.tif", 48, 48) and {x[0] for x in seen} == {"b.ome.tif"}  # only the new slide was read
    assert "efficientnet_lite0: 48 tiles embedded" in out and "added 48 tiles from 1 new slide (b.ome.tif)" in out
    s = open_store(store)
    assert s.n_tiles == 96 and s.verify() == [] and s.is_complete(KEY)
    assert s.meta["last_run"]["backbones"]["efficientnet_lite0"]["rows"] == 48  # the new slide's tiles, nothing else
    assert [a["rows"] for a in s.meta["appends"]] == [[48, 96]] and s.meta["appends"][0]["slides"] == ["b.ome.tif"]
    after = s.read([KEY], dtype=np.float16)
    assert np.array_equal(after[:48].view(np.uint16), before.view(np.uint16))  # old rows, bit for bit
    assert s.tiles["tile_id"].iloc[:48].tolist() == open_store(two["one"]).tiles["tile_id"].tolist()
    assert {r["slide"] for r in s.meta["slides"]["slides"]} == {"a.svs", "b.ome.tif"}
    got, want = _by_id(store), _by_id(two["both"])
    assert got.keys() == want.keys()
    for t in want:  # the same tiles, embedded as a store made from both slides at once
        np.testing.assert_allclose(got[t].astype(np.float32), want[t].astype(np.float32), rtol=2e-3, atol=2e-3, err_msg=t)
    cols = open_store(two["both"]).tiles.set_index("tile_id").drop(columns="slide_path")  # the same files through two folders
    assert s.tiles.set_index("tile_id").loc[cols.index, cols.columns].equals(cols)
    # a slide gone from SOURCE keeps its rows (nothing embedded, nothing dropped) and the run says so
    os.unlink(src / "a.svs")
    res = runner.invoke(app, ["extract", str(src), "--store", str(store), *CLI])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "0 tiles embedded" in out and "kept 48 tiles of 1 slide no longer in SOURCE (a.svs)" in out, res.output
    s = open_store(store)
    assert s.n_tiles == 96 and np.array_equal(s.read([KEY], dtype=np.float16).view(np.uint16), after.view(np.uint16))
    assert {(r["slide"], r.get("in_source", True)) for r in s.meta["slides"]["slides"]} == {("a.svs", False), ("b.ome.tif", True)}
    # an existing slide tiled otherwise is refused in one line, the store untouched
    os.symlink(root / "both" / "a.svs", src / "a.svs")
    res = runner.invoke(app, ["extract", str(src), "--store", str(store), *CLI, "--min-tissue", "0.95"])
    assert (
        res.exit_code == 2
        and "was tiled with --min-tissue 0.5, this run --min-tissue 0.95" in " ".join(res.output.split())
        and "Traceback" not in res.output
    )
    assert open_store(store).n_tiles == 96


KILLER = """
import os, signal, sys
from mito.store import backend, store
where, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def hook(real):
    def call(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return call
if where == "resize":
    backend.ZarrBackend.resize = hook(backend.ZarrBackend.resize)
else:
    store.Store.write_chunk = hook(store.Store.write_chunk)
from mito.cli import app
sys.argv = ["mito", *sys.argv[3:]]
app()
"""


@pytest.mark.slow
def test_kill_9_during_an_append_then_resume_equals_the_uninterrupted_append(two: dict[str, Path], tmp_path: Path) -> None:
    src = _source(two, tmp_path / "src", ["a.svs", "b.ome.tif"])
    store = tmp_path / "k.zarr"
    shutil.copytree(two["one"], store)
    before = open_store(store).read([KEY], dtype=np.float16)
    args = ["extract", str(src), "--store", str(store), *CLI]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    # 1) killed while the arrays grow: the intent is written, some tile columns are longer, nothing committed
    p = subprocess.run([sys.executable, "-c", KILLER, "resize", "5", *args], env=env, capture_output=True, timeout=600)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    with pytest.raises(StoreError, match="adding tiles to it was interrupted; re-run the same"):
        open_store(store)
    assert "was interrupted" in open_store(store, lenient=True).verify()[0]
    # 2) the re-run finishes the append and is killed again after writing the first chunk of new rows
    p = subprocess.run([sys.executable, "-c", KILLER, "write_chunk", "2", *args], env=env, capture_output=True, timeout=600)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    s = open_store(store)
    assert s.n_tiles == 96 and "append" not in s.meta and s.done_chunks(KEY).tolist() == [True, True, True, False, False]
    # 3) the last re-run embeds only the two chunks still missing
    summary = extract(ExtractConfig(source=str(src), store=str(store), **SMALL))
    assert summary["backbones"]["efficientnet_lite0"]["rows"] == 36 and summary["backbones"]["efficientnet_lite0"]["skipped_chunks"] == 3
    s = open_store(store)
    assert s.verify() == [] and [a["rows"] for a in s.meta["appends"]] == [[48, 96]]
    assert np.array_equal(s.read([KEY], dtype=np.float16)[:48].view(np.uint16), before.view(np.uint16))
    clean = tmp_path / "clean.zarr"  # the same append, never interrupted
    shutil.copytree(two["one"], clean)
    extract(ExtractConfig(source=str(src), store=str(clean), **SMALL))
    c = open_store(clean)
    assert s.tiles.equals(c.tiles) and s.meta["tile_list_sha256"] == c.meta["tile_list_sha256"]
    np.testing.assert_allclose(s.read([KEY]), c.read([KEY]), rtol=2e-3, atol=2e-3)  # other process, other thread count


def test_new_crops_in_a_tile_folder_are_appended_to_an_hdf5_store(tmp_path: Path) -> None:
    crops = amibr_subset(tmp_path / "crops", 4)
    cfg = {**SMALL, "chunk_rows": 3, "batch_size": 4}
    for k in ("mpp", "tile_px"):
        cfg.pop(k)
    store = tmp_path / "f.h5"
    extract(ExtractConfig(source=str(crops), store=str(store), **cfg))
    before = open_store(store).read([KEY], dtype=np.float16)
    have = {f.name for f in crops.rglob("*.jpg")}
    extra = [f for f in sorted((AMIBR / "Normal").glob("*.jpg")) if f.name not in have][:2]
    for f in extra:
        shutil.copy(f, crops / "Normal" / f.name)
    summary = extract(ExtractConfig(source=str(crops), store=str(store), **cfg))
    assert summary["backbones"]["efficientnet_lite0"]["rows"] == 2 and summary["grown"]["added_tiles"] == 2
    s = open_store(store)
    assert s.n_tiles == 10 and s.verify() == [] and s.tiles["tile_id"].iloc[8:].tolist() == [f"Normal/{f.name}" for f in extra]
    assert np.array_equal(s.read([KEY], dtype=np.float16)[:8].view(np.uint16), before.view(np.uint16))
    extract(ExtractConfig(source=str(crops), store=str(tmp_path / "fresh.h5"), **cfg))
    got, want = _by_id(store), _by_id(tmp_path / "fresh.h5")
    assert got.keys() == want.keys()
    for t in want:
        np.testing.assert_allclose(got[t].astype(np.float32), want[t].astype(np.float32), rtol=2e-3, atol=2e-3, err_msg=t)


def test_the_per_slide_line_follows_the_slide_being_embedded() -> None:
    from mito.core.progress import group_progress, progress_bar

    with progress_bar("tiles", enabled=False) as bar:
        g = group_progress(bar, np.arange(2, 7), np.array(["a.svs"] * 4 + ["b.svs"] * 3), "slides")
        assert g.totals.tolist() == [2, 3]  # rows 2..6: two of a.svs, three of b.svs
        g.advance(np.array([2, 3]))
        t = bar.tasks[g.task]
        assert (t.description.strip(), t.completed, t.total) == ("a.svs", 2, 2)
        g.advance(np.array([4]))
        t = bar.tasks[g.task]
        assert (t.description.strip(), t.completed, t.total) == ("b.svs", 1, 3)


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_an_interrupted_append_no_longer_wanted_is_undone(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from mito.store import create_store
    from mito.store.backend import H5Backend, ZarrBackend

    path = tmp_path / f"u.{fmt}"
    s = create_store(path, pd.DataFrame({"tile_id": [f"t{i}" for i in range(5)], "slide": "a"}), {}, chunk_rows=2)
    s.ensure_variant("bb:z1:rgb", 4, {})
    x = np.arange(20, dtype=np.float16).reshape(5, 4)
    for c in range(3):
        s.write_chunk("bb:z1:rgb", c, x[2 * c : 2 * c + 2])
    s.close()
    backend = ZarrBackend if fmt == "zarr" else H5Backend
    real, calls = backend.resize, []

    def failing(self: object, *a: object, **k: object) -> None:
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would stop it: between two arrays
        real(self, *a, **k)

    monkeypatch.setattr(backend, "resize", failing)
    with open_store(path, "a") as s, pytest.raises(KeyboardInterrupt):
        s.append_tiles(pd.DataFrame({"tile_id": ["t5", "t6"], "slide": "b"}))
    monkeypatch.setattr(backend, "resize", real)
    if fmt == "zarr":  # HDF5 wrote into its private copy, which the failure dropped
        with pytest.raises(StoreError, match="interrupted"):
            open_store(path)
        with open_store(path, "a") as s:
            s.cancel_append()
    s = open_store(path)
    assert s.n_tiles == 5 and s.verify() == [] and s.done_chunks("bb:z1:rgb").all() and "append" not in s.meta
    np.testing.assert_array_equal(s.read(["bb:z1:rgb"], dtype=np.float16), x)


def test_views_left_behind_by_added_tiles_are_named_and_finished_by_a_rerun_with_augment(tmp_path: Path) -> None:
    crops = amibr_subset(tmp_path / "crops", 2)
    cfg = {**SMALL, "chunk_rows": 3, "batch_size": 4}
    for k in ("mpp", "tile_px"):
        cfg.pop(k)
    store = tmp_path / "v.zarr"
    extract(ExtractConfig(source=str(crops), store=str(store), augment="flip", **cfg))
    have = {f.name for f in crops.rglob("*.jpg")}
    extra = [f for f in sorted((AMIBR / "Normal").glob("*.jpg")) if f.name not in have][:2]
    for f in extra:
        shutil.copy(f, crops / "Normal" / f.name)
    args = [
        "extract",
        str(crops),
        "--store",
        str(store),
        "--zooms",
        "1",
        "--colors",
        "rgb",
        "--input-size",
        "64",
        "--chunk-rows",
        "3",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "-q",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"{KEY}:flip lacks the new tiles" in text  # named once, by the append summary
    assert open_store(store).is_complete(KEY) and not open_store(store).is_complete(f"{KEY}:flip")
    from mito.heads import HeadError
    from mito.heads.views import read_views

    with pytest.raises(HeadError, match="lack some tiles"):  # training on views says why, not 'add them'
        read_views(open_store(store), [KEY], np.arange(4))
    summary = extract(ExtractConfig(source=str(crops), store=str(store), augment="flip", **cfg))
    assert summary["incomplete"] == [] and open_store(store).verify() == []


def test_an_append_run_names_the_variants_it_left_without_the_new_tiles(tmp_path: Path) -> None:
    """Appending with fewer --colors than the store has used to say only 'added N tiles'; gray then silently lacked them."""
    from mito.extract import growth_lines

    crops = amibr_subset(tmp_path / "crops", 2)
    cfg = {**SMALL, "chunk_rows": 3, "batch_size": 4, "colors": ["rgb", "gray"]}
    for k in ("mpp", "tile_px"):
        cfg.pop(k)
    store = tmp_path / "g.zarr"
    extract(ExtractConfig(source=str(crops), store=str(store), **cfg))
    have = {f.name for f in crops.rglob("*.jpg")}
    extra = [f for f in sorted((AMIBR / "Normal").glob("*.jpg")) if f.name not in have][:1]
    shutil.copy(extra[0], crops / "Normal" / extra[0].name)
    summary = extract(ExtractConfig(source=str(crops), store=str(store), **{**cfg, "colors": ["rgb"]}))
    assert summary["grown"]["incomplete"] == ["efficientnet_lite0:z1:gray"]
    text = " ".join(growth_lines(summary["grown"]))
    assert "efficientnet_lite0:z1:gray lacks the new tiles" in text and "--colors" in text
    done = extract(ExtractConfig(source=str(crops), store=str(store), **cfg))
    assert "grown" not in done and open_store(store).verify() == []
