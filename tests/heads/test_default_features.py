"""fit-head's default feature set: the first backbone's variants at zoom 2 and above, chosen across cohorts."""

from __future__ import annotations

from pathlib import Path

from mito.heads.train import backbone_variants, default_features
from mito.store import open_store
from tests.heads.conftest import amibr_tiles, synthetic_store


def test_default_is_the_first_backbones_zoom_2_and_above_else_all_of_its_variants(tmp_path: Path) -> None:
    tiles = amibr_tiles(64)
    keys = ["fakenet:z1:rgb", "fakenet:z2:rgb", "fakenet:z3:rgb", "fakenet:z2:hema", "fakenet:z1:gray", "othernet:z2:rgb"]
    with open_store(synthetic_store(tmp_path / "a.zarr", tiles, dict.fromkeys(keys, 4))) as s:
        assert default_features(s) == ["fakenet:z2:rgb", "fakenet:z3:rgb", "fakenet:z2:hema"]  # store order, one backbone
        assert backbone_variants(s) == [k for k in keys if k.startswith("fakenet:")]  # slide heads: every variant
    low = ["fakenet:z1:rgb", "fakenet:z1.5:gray"]
    with open_store(synthetic_store(tmp_path / "b.zarr", tiles, dict.fromkeys(low, 4))) as s:
        assert default_features(s) == low  # no zoom 2 or above: every variant of the first backbone
