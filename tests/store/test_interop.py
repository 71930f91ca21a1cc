"""What others see of a store: xarray opens it, yes/no columns stay booleans, a refusal names the setting
that differs, and each backend declares what it guarantees."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.store import Capabilities, StoreBackend, StoreError, create_store, open_store
from mito.store.backend import open_backend


def test_xarray_opens_the_tile_table_a_zoom_group_and_the_whole_tree(amibr_store: Path) -> None:
    import xarray as xr

    tiles = xr.open_zarr(amibr_store, group="tiles", consolidated=False)
    assert tiles.sizes["tile"] == 48 and "tile_id" in tiles
    z1 = xr.open_zarr(amibr_store, group="features/efficientnet_lite0/z1", consolidated=False)
    assert z1["rgb"].dims == ("tile", "feature") and z1["gray"].shape == (48, 1280)
    with open_store(amibr_store) as s:
        np.testing.assert_array_equal(z1["rgb"].values, s.read(["efficientnet_lite0:z1:rgb"], dtype=np.float16))
    tree = xr.open_datatree(amibr_store, engine="zarr", consolidated=False)
    assert tree["done/efficientnet_lite0/z2"]["gray"].dims == ("chunk",)
    assert tree["unreadable"].dims == ("tile",)


def test_yes_no_columns_are_stored_as_nullable_booleans(tmp_path: Path, amibr_store: Path) -> None:
    tiles = pd.DataFrame({"tile_id": ["a", "b", "c"], "flag": [True, None, False], "plain": np.array([True, False, True])})
    for name in ("s.zarr", "s.h5"):
        create_store(tmp_path / name, tiles, {}).close()
        with open_store(tmp_path / name) as s:
            got = s.tiles
            assert str(got["flag"].dtype) == "boolean" and str(got["plain"].dtype) == "boolean"
            assert got["flag"].tolist()[0] is True and got["flag"].isna().tolist() == [False, True, False]
            assert got["flag"].iloc[2] == False  # noqa: E712 (a numpy bool, not the False singleton)
    with open_store(amibr_store) as s:  # the AMi-Br experts' yes/no columns, from a real extract
        col = s.tiles["majority_atypical"]
        assert str(col.dtype) == "boolean" and set(col.dropna().unique()) <= {True, False}
        assert col.isna().any()  # test-split crops have no expert labels


def test_a_different_preprocessing_is_named_with_both_values(tmp_path: Path) -> None:
    s = create_store(tmp_path / "s.zarr", pd.DataFrame({"tile_id": ["a", "b"]}), {})
    s.ensure_variant("bb:z1:rgb", 3, {"backbone": "bb", "preprocessing": {"fit": "resize", "input_size": 224}})
    with pytest.raises(
        StoreError,
        match=r"\(preprocessing\.fit: the store has resize, this run pad; preprocessing\.input_size: the store has 224, this run 128\)",
    ):
        s.ensure_variant("bb:z1:rgb", 3, {"backbone": "bb", "preprocessing": {"fit": "pad", "input_size": 128}})
    with pytest.raises(StoreError, match=r"dim: the store has 3, this run 4"):
        s.ensure_variant("bb:z1:rgb", 4, {"backbone": "bb", "preprocessing": {"fit": "resize", "input_size": 224}})
    s.close()


def test_backends_declare_their_capabilities(tmp_path: Path) -> None:
    tiles = pd.DataFrame({"tile_id": ["a", "b"]})
    create_store(tmp_path / "s.zarr", tiles, {}).close()
    create_store(tmp_path / "s.h5", tiles, {}).close()
    z, h = open_backend(str(tmp_path / "s.zarr"), "r", "zarr"), open_backend(str(tmp_path / "s.h5"), "r", "hdf5")
    assert isinstance(z, StoreBackend) and isinstance(h, StoreBackend)
    assert z.capabilities == Capabilities(True, True, True, True, True, True)
    assert h.capabilities.supports_checksums and h.capabilities.supports_locking
    assert not h.capabilities.resumable_per_chunk and not h.capabilities.supports_urls and not h.capabilities.shared_writers
    h.close()
    url = f"memory://caps-{tmp_path.name}/s.zarr"
    with create_store(url, tiles, {}) as s:  # fsspec URLs cannot flock: unlocked, and they say so
        assert not s.capabilities.supports_locking and s.capabilities.supports_urls


def test_stores_keep_working_when_copied(tmp_path: Path, amibr_store: Path) -> None:
    """The lock file lives beside the store, so a copied store carries no lock and opens for writing."""
    dst = tmp_path / "copy.zarr"
    shutil.copytree(amibr_store, dst)
    with open_store(dst, "a") as s:
        assert s.verify() == []
