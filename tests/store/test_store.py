"""The embedding store in both formats: create, write chunks, read aligned rows, verify, refuse bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.store import StoreError, create_store, open_store, parse_variant

FORMATS = ["s.zarr", "s.h5"]


def _tiles(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(n)],
            "mitosis": (["Atypical", "Normal", None] * n)[:n],
            "x": np.arange(n),
            "w": np.linspace(0, 1, n),
        }
    )


def _fill(store, key: str, dim: int, skip: tuple[int, ...] = ()) -> np.ndarray:
    full = np.random.default_rng(0).normal(size=(store.n_tiles, dim)).astype(np.float16)
    store.ensure_variant(key, dim, {"backbone": key.split(":")[0], "preprocessing": {"fit": "resize"}})
    for c in range(store.n_chunks):
        if c in skip:
            continue
        a, b = store.chunk_rows_range(c)
        store.write_chunk(key, c, full[a:b])
    return full


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_rows_and_table(tmp_path: Path, name: str) -> None:
    s = create_store(tmp_path / name, _tiles(10), {"tasks": ["mitosis"]}, chunk_rows=4)
    a = _fill(s, "bb:z1:rgb", 3)
    b = _fill(s, "bb:z2:gray", 2)
    s.close()
    s = open_store(tmp_path / name)
    assert s.format == ("hdf5" if name.endswith(".h5") else "zarr")
    assert s.variants == ["bb:z1:rgb", "bb:z2:gray"]
    rows = np.array([9, 0, 5, 5])
    got = s.read(["bb:z2:gray", "bb:z1:rgb"], rows=rows)
    np.testing.assert_array_equal(got, np.concatenate([b, a], axis=1)[rows].astype(np.float32))
    t = s.tiles
    assert t["tile_id"].tolist() == [f"t{i}" for i in range(10)]
    assert t["mitosis"].isna().sum() == 3 and t["x"].dtype == np.int64 and t["w"].iloc[-1] == 1.0
    chunks = list(s.iter_chunks(["bb:z1:rgb"], rows=np.array([1, 2, 9])))
    assert [i.tolist() for i, _ in chunks] == [[1, 2], [9]]
    assert s.verify() == []
    assert s.info()["tasks"]["mitosis"] == {"Atypical": 4, "Normal": 3}


@pytest.mark.parametrize("name", FORMATS)
def test_incomplete_variant_is_reported_and_not_read(tmp_path: Path, name: str) -> None:
    s = create_store(tmp_path / name, _tiles(10), {}, chunk_rows=4)
    _fill(s, "bb:z1:rgb", 3, skip=(1,))
    assert s.done_chunks("bb:z1:rgb").tolist() == [True, False, True]
    assert any("1 of 3 chunks not written" in p for p in s.verify())
    with pytest.raises(StoreError, match="incomplete"):
        s.read(["bb:z1:rgb"])
    assert np.isnan(s.read(["bb:z1:rgb"], allow_incomplete=True)[4:8]).all()


def test_refuses_different_preprocessing_for_same_variant(tmp_path: Path) -> None:
    s = create_store(tmp_path / "s.zarr", _tiles(5), {}, chunk_rows=4)
    s.ensure_variant("bb:z1:rgb", 3, {"backbone": "bb", "preprocessing": {"fit": "resize"}})
    assert s.ensure_variant("bb:z1:rgb", 3, {"backbone": "bb", "preprocessing": {"fit": "resize"}}) is False
    with pytest.raises(StoreError, match="preprocessing"):
        s.ensure_variant("bb:z1:rgb", 3, {"backbone": "bb", "preprocessing": {"fit": "pad"}})
    with pytest.raises(StoreError, match="dim"):
        s.ensure_variant("bb:z1:rgb", 4, {"backbone": "bb", "preprocessing": {"fit": "resize"}})


def test_bad_input_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="duplicate tile id"):
        create_store(tmp_path / "a.zarr", pd.DataFrame({"tile_id": ["x", "x"]}), {})
    with pytest.raises(StoreError, match="no tiles"):
        create_store(tmp_path / "b.zarr", pd.DataFrame({"tile_id": []}), {})
    create_store(tmp_path / "c.zarr", _tiles(3), {})
    with pytest.raises(StoreError, match="already exists"):
        create_store(tmp_path / "c.zarr", _tiles(3), {})
    with pytest.raises(StoreError, match="no store"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError):
        open_store(tmp_path / "plain")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="cannot open HDF5"):
        open_store(tmp_path / "junk.h5")
    s = open_store(tmp_path / "c.zarr")
    with pytest.raises(StoreError, match="not in"):
        s.read(["nope:z1:rgb"])
    with pytest.raises(StoreError, match="bad feature name"):
        parse_variant("nope")
    with pytest.raises(StoreError, match="read-only"):
        s.ensure_variant("bb:z1:rgb", 3, {})


def test_new_feature_arrays_use_lz4hc_and_a_store_written_with_zstd_still_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from mito.store import backend

    def codecs(path: Path) -> list[dict]:
        return json.loads((path / "features/bb/z1/rgb/zarr.json").read_text())["codecs"]

    s = create_store(tmp_path / "new.zarr", _tiles(10), {"tasks": ["mitosis"]}, chunk_rows=4)
    _fill(s, "bb:z1:rgb", 3)
    s.close()
    blosc = [c for c in codecs(tmp_path / "new.zarr") if c["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["cname"] == "lz4hc"
    assert codecs(tmp_path / "new.zarr")[-1]["name"] == "crc32c"  # the checksum stays last

    # a store written before the switch (Blosc-zstd) reads, verifies and takes more chunks as it is
    monkeypatch.setattr(backend, "FEATURE_BLOSC", {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"})
    s = create_store(tmp_path / "old.zarr", _tiles(10), {"tasks": ["mitosis"]}, chunk_rows=4)
    full = _fill(s, "bb:z1:rgb", 3, skip=(2,))
    s.close()
    monkeypatch.undo()
    assert [c for c in codecs(tmp_path / "old.zarr") if c["name"] == "blosc"][0]["configuration"]["cname"] == "zstd"
    s = open_store(tmp_path / "old.zarr", mode="a")
    s.write_chunk("bb:z1:rgb", 2, full[8:10])
    s.close()
    s = open_store(tmp_path / "old.zarr")
    assert s.verify() == []
    np.testing.assert_array_equal(s.read(["bb:z1:rgb"], dtype=np.float16), full)
    assert [c for c in codecs(tmp_path / "old.zarr") if c["name"] == "blosc"][0]["configuration"]["cname"] == "zstd"
