"""Stores at fsspec URLs (memory://, file://) behave like local ones: create, refuse overwrite, resume, read."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.extract import ExtractConfig, extract
from mito.store import StoreError, create_store, open_store
from mito.store.store import store_exists


def _url() -> str:
    return f"memory://mito-test-{uuid.uuid4().hex}/s.zarr"


def _tiles(n: int) -> pd.DataFrame:
    return pd.DataFrame({"tile_id": [f"t{i}" for i in range(n)], "label": ["a", "b"] * (n // 2), "group": [str(i % 3) for i in range(n)]})


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_url_store_round_trips_and_refuses_to_be_created_twice(kind: str, tmp_path: Path) -> None:
    url = _url() if kind == "memory" else (tmp_path / "deep" / "s.zarr").as_uri()
    assert not store_exists(url)
    with pytest.raises(StoreError, match="no store at"):
        open_store(url)
    with create_store(url, _tiles(10), {"tasks": ["label"]}, chunk_rows=4) as s:
        s.ensure_variant("bb:z1:rgb", 3, {"backbone": "bb"})
        feats = np.arange(30, dtype=np.float32).reshape(10, 3)
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            s.write_chunk("bb:z1:rgb", c, feats[a:b])
    assert store_exists(url)
    with pytest.raises(StoreError, match="already exists"):
        create_store(url, _tiles(10), {})
    with open_store(url) as s:
        assert s.n_tiles == 10 and s.is_complete("bb:z1:rgb") and s.verify() == []
        np.testing.assert_array_equal(s.read(["bb:z1:rgb"]), feats)
        assert s.tiles["label"].tolist() == ["a", "b"] * 5
        rows = [idx for idx, _ in s.iter_chunks(["bb:z1:rgb"])]
        assert [r.tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    if kind == "file":
        assert (tmp_path / "deep" / "s.zarr" / "zarr.json").is_file()  # really on disk, through fsspec


def test_hdf5_at_a_url_is_refused_with_a_hint() -> None:
    with pytest.raises(StoreError, match="use a .zarr store"):
        create_store("memory://x/s.h5", _tiles(4), {})


def test_extract_into_a_memory_url_matches_the_local_store_and_resumes(amibr_dir: Path, amibr_store: Path) -> None:
    url = _url()
    cfg = ExtractConfig(
        source=str(amibr_dir),
        store=url,
        task="mitosis",
        zooms=[2.0],
        colors=["gray"],  # one of the fixture's four
        input_size=128,
        chunk_rows=16,
        batch_size=16,
        num_workers=0,
        progress=False,
    )
    first = extract(cfg)
    assert first["backbones"]["efficientnet_lite0"]["rows"] == 48
    again = extract(cfg)  # a second run finds every chunk done
    assert again["backbones"]["efficientnet_lite0"]["rows"] == 0
    assert again["backbones"]["efficientnet_lite0"]["skipped_chunks"] == 3
    key = "efficientnet_lite0:z2:gray"
    with open_store(url) as remote, open_store(amibr_store) as local:
        assert remote.variants == [key] and key in local.variants
        assert remote.verify() == []
        np.testing.assert_array_equal(remote.read([key], dtype=np.float16), local.read([key], dtype=np.float16))
