"""A damaged store is never silently wrong: checksums catch flipped or truncated chunks, verify names every
defect and exits 1, every other command refuses in one line, and re-running extract repairs damaged chunks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.extract import ExtractConfig, extract
from mito.store import StoreError, create_store, open_store

runner = CliRunner()
KEY = "efficientnet_lite0:z1:rgb"
CHUNK = "features/efficientnet_lite0/z1/rgb/c/1/0"


def _fixture_cfg(amibr_dir: Path, store: Path) -> ExtractConfig:
    """Exactly the settings tests/conftest.py's amibr_store was made with (so a re-run only repairs)."""
    return ExtractConfig(
        source=str(amibr_dir),
        store=str(store),
        task="mitosis",
        zooms=[1.0, 2.0],
        colors=["rgb", "gray"],
        input_size=128,
        chunk_rows=16,
        batch_size=16,
        num_workers=0,
        progress=False,
    )


def _flip(path: Path, n: int = 16) -> None:
    """XOR ``n`` bytes in the middle of a file, as a failing disk or a bad copy would."""
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    for i in range(mid - n // 2, mid + n // 2):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


def _cli(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    assert "Traceback" not in r.output, r.output
    return r.exit_code, r.output


def test_a_byte_flipped_chunk_is_reported_refused_and_repaired_by_extract(amibr_dir: Path, amibr_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(amibr_store, store)
    _flip(store / CHUNK)

    code, out = _cli("cache", "verify", str(store))
    assert code == 1 and "features/efficientnet_lite0/z1/rgb chunk 1 is damaged (checksum mismatch)" in out
    assert out.count("problem:") == 1  # the other 11 feature chunks are sound
    with open_store(store) as s:
        with pytest.raises(StoreError, match=r"features/efficientnet_lite0/z1/rgb chunk 1 is damaged"):
            s.read([KEY])
        with pytest.raises(StoreError, match="chunk 1"):
            list(s.iter_chunks([KEY]))
        np.testing.assert_array_equal(s.read([KEY], rows=np.arange(16)), open_store(amibr_store).read([KEY], rows=np.arange(16)))
        assert s.sound_done_chunks(KEY).tolist() == [True, False, True]
        assert s.done_chunks(KEY).tolist() == [True, True, True]

    summary = extract(_fixture_cfg(amibr_dir, store))  # the damaged chunk counts as not done
    assert summary["backbones"]["efficientnet_lite0"]["rows"] == 16
    code, out = _cli("cache", "verify", str(store))
    assert code == 0 and "complete and sound" in out
    with open_store(store) as s, open_store(amibr_store) as ref:
        np.testing.assert_array_equal(s.read([KEY], dtype=np.float16), ref.read([KEY], dtype=np.float16))


def test_a_truncated_chunk_is_reported_and_refused(amibr_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(amibr_store, store)
    f = store / "features/efficientnet_lite0/z2/gray/c/2/0"
    f.write_bytes(f.read_bytes()[:7])
    code, out = _cli("cache", "verify", str(store))
    assert code == 1 and "features/efficientnet_lite0/z2/gray chunk 2 is damaged" in out
    code, out = _cli(
        "fit-head", "--store", str(store), "--task", "mitosis", "--features", "efficientnet_lite0:z2:gray", "--out", str(tmp_path / "m")
    )
    assert code != 0 and "chunk 2 is damaged" in out and not (tmp_path / "m").exists()


def _small(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(10)], "label": ["a", "b"] * 5})
    with create_store(path, tiles, {"tasks": ["label"]}, chunk_rows=4) as s:
        s.ensure_variant("bb:z1:rgb", 3, {"backbone": "bb"})
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            s.write_chunk("bb:z1:rgb", c, np.ones((b - a, 3)))
    return path


def _delete(path: Path, name: str) -> None:
    if path.suffix == ".h5":
        with h5py.File(path, "a") as f:
            del f[name]
    else:
        shutil.rmtree(path / name)


def _edit(path: Path, change) -> None:
    if path.suffix == ".h5":
        with h5py.File(path, "a") as f:
            meta = json.loads(f.attrs["mito"])
            change(meta)
            f.attrs["mito"] = json.dumps(meta)
    else:
        doc = json.loads((path / "zarr.json").read_text())
        change(doc["attributes"]["mito"])
        (path / "zarr.json").write_text(json.dumps(doc))


DAMAGE = {
    "done array deleted": (lambda p: _delete(p, "done/bb/z1/rgb"), "done/bb/z1/rgb is missing"),
    "tile ids deleted": (lambda p: _delete(p, "tiles/tile_id"), "tiles/tile_id is missing"),
    "unreadable deleted": (lambda p: _delete(p, "unreadable"), "unreadable is missing"),
    "tile count edited": (lambda p: _edit(p, lambda m: m.update(n_tiles=11)), "the attributes say (11,)"),
    "chunk rows edited": (lambda p: _edit(p, lambda m: m.update(chunk_rows=2)), "the attributes say (5,)"),
    "dim edited": (lambda p: _edit(p, lambda m: m["variants"]["bb:z1:rgb"].update(dim=4)), "the attributes say (10, 4)"),
    "string for an int": (lambda p: _edit(p, lambda m: m.update(n_tiles="10")), "attribute n_tiles: Input should be a valid integer"),
    "negative chunk rows": (lambda p: _edit(p, lambda m: m.update(chunk_rows=-3)), "attribute chunk_rows"),
}


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_reports_each_defect_and_other_commands_refuse_in_one_line(tmp_path: Path, name: str, damage: str) -> None:
    path = _small(tmp_path, name)
    do, expect = DAMAGE[damage]
    do(path)
    code, out = _cli("cache", "verify", str(path))
    assert code == 1 and expect in out, out
    with open_store(path, lenient=True) as s:
        assert any(expect in p for p in s.verify())
    with pytest.raises(StoreError, match="is damaged"):
        open_store(path)
    code, out = _cli("cache", "info", str(path))
    assert code == 2 and out.strip().startswith("error:") and len(out.strip().splitlines()) == 1 and "is damaged" in out


def test_a_flipped_hdf5_chunk_fails_fletcher32(tmp_path: Path) -> None:
    path = _small(tmp_path, "s.h5")
    with h5py.File(path, "r") as f:
        info = f["features/bb/z1/rgb"].id.get_chunk_info(1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2 - 2)
        fh.write(bytes(b ^ 0xFF for b in fh.read(4)))
    with open_store(path) as s:
        assert s.verify() == ["bb:z1:rgb: features/bb/z1/rgb chunk 1 is damaged (checksum or decompression failure)"]
        with pytest.raises(StoreError, match="chunk 1 is damaged"):
            s.read(["bb:z1:rgb"])
        assert s.sound_done_chunks("bb:z1:rgb").tolist() == [True, False, True]


def test_arrays_no_attribute_knows_of_are_reported(tmp_path: Path) -> None:
    path = _small(tmp_path, "s.zarr")
    _edit(path, lambda m: m["variants"].pop("bb:z1:rgb"))
    with open_store(path, lenient=True) as s:
        assert (
            f"features/bb/z1/rgb is on disk but not in the attributes (left by an interrupted or concurrent writer); "
            f"`mito cache rm {path} bb:z1:rgb` removes it"
        ) in s.verify()


def test_a_store_made_before_checksums_still_reads(tmp_path: Path) -> None:
    """Old stores: Zarr arrays without the crc32c codec, HDF5 variable-length strings without fletcher32."""
    import zarr

    path = _small(tmp_path, "s.zarr")
    root = zarr.open_group(path, mode="a")
    old = root["features/bb/z1/rgb"][:]
    root.create_array("features/bb/z1/rgb", shape=old.shape, dtype=old.dtype, chunks=(4, 3), fill_value=np.nan, overwrite=True)[:] = old
    h5 = _small(tmp_path, "s.h5")
    with h5py.File(h5, "a") as f:
        ids = f["tiles/tile_id"][:]
        del f["tiles/tile_id"]
        f.create_dataset("tiles/tile_id", data=ids.astype(object), dtype=h5py.string_dtype())
    for p in (path, h5):
        with open_store(p) as s:
            assert s.verify() == [] and s.tiles["tile_id"].tolist()[:2] == ["t0", "t1"]
            np.testing.assert_array_equal(s.read(["bb:z1:rgb"]), np.ones((10, 3)))
