"""Chunks of a store that grows: a store started small keeps full-size chunks, so tiles added later fill them
(issue 19: a store started with 1 crop kept 1-row chunks forever, 60 chunk files for 60 added crops); checkpoints
of an unfinished chunk (its first rows written and recorded) and what an interrupted run says it kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.store import StoreError, create_store, open_store

KEY = "bb:z1:rgb"


def _tiles(a: int, b: int) -> pd.DataFrame:
    return pd.DataFrame({"tile_id": [f"t{i}" for i in range(a, b)], "label": ["x", "y"] * ((b - a) // 2) + ["x"] * ((b - a) % 2)})


def _files(folder: Path) -> int:
    """Chunk files of a Zarr array (everything but its zarr.json)."""
    return sum(1 for f in folder.rglob("*") if f.is_file() and f.name != "zarr.json")


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_a_store_started_with_one_tile_keeps_full_chunks_when_tiles_are_added(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    rng = np.random.default_rng(0)
    with create_store(path, _tiles(0, 1), {"tasks": ["label"]}, chunk_rows=1024) as s:
        s.ensure_variant(KEY, 8, {"backbone": "bb"})
        first = rng.normal(size=(1, 8)).astype(np.float16)
        s.write_chunk(KEY, 0, first)
    for a in range(1, 61, 20):  # 60 crops added in three runs
        with open_store(path, "a") as s:
            s.append_tiles(_tiles(a, a + 20))
            assert s.chunk_rows == 1024 and s.n_chunks == 1
            s.write_chunk(
                KEY,
                0,
                np.concatenate(
                    [s.read([KEY], slice(0, a), np.float16, allow_incomplete=True), rng.normal(size=(20, 8)).astype(np.float16)]
                ),
            )
    with open_store(path) as s:
        assert s.n_tiles == 61 and s.chunk_rows == 1024 and s.verify() == []
        assert s._b.chunks("features/bb/z1/rgb")[0] == 1024 and s._b.chunks("unreadable")[0] == 1024
        assert s._b.chunks("tiles/tile_id")[0] >= 1024
        np.testing.assert_array_equal(s.read([KEY], slice(0, 1), np.float16), first)
    if path.is_dir():  # at most one chunk file per array (none when all fill), not one per added crop
        for array in ("features/bb/z1/rgb", "done/bb/z1/rgb", "unreadable", "tiles/tile_id", "tiles/label"):
            assert _files(path / array) <= 1, array


def test_a_checkpoint_keeps_the_first_rows_of_an_unfinished_chunk(tmp_path: Path) -> None:
    from mito.extract.extractor import kept_note

    path = tmp_path / "s.zarr"
    with create_store(path, _tiles(0, 12), {"tasks": ["label"]}, chunk_rows=8) as s:
        s.ensure_variant(KEY, 4, {"backbone": "bb"})
        assert kept_note(s, {"bb": [KEY]}) == (
            "nothing was finished yet: no chunk completed and no rows checkpointed; re-run the same command to start over"
        )
        rows = np.arange(20, dtype=np.float16).reshape(5, 4)
        bad = np.array([False, False, True, False, False])
        rows[2] = np.nan  # an unreadable tile's row
        s.write_rows(0, 5, {KEY: rows}, bad)
        assert s.kept_rows(KEY, 0) == 5 and not s.done_chunks(KEY).any()
        assert s.unreadable[:5].tolist() == bad.tolist()
        assert kept_note(s, {"bb": [KEY]}) == (
            "kept 5 of 12 tiles (0 of 2 chunks whole, 5 rows of unfinished chunks checkpointed); re-run the same command to embed only the rest"
        )
        s.write_chunk(KEY, 1, np.ones((4, 4), np.float16))
        assert kept_note(s, {"bb": [KEY]}).startswith("kept 9 of 12 tiles (1 of 2 chunks whole, 5 rows")
        with pytest.raises(StoreError, match="needs 1..7 rows"):
            s.write_rows(0, 8, {KEY: np.ones((8, 4), np.float16)})
    with open_store(path) as s:  # the rows read back (the chunk stays not done)
        np.testing.assert_array_equal(s.read([KEY], slice(0, 5), np.float16, allow_incomplete=True), rows)
        assert any("1 of 2 chunks not written" in p for p in s.verify())
    with open_store(path, "a") as s:
        s.write_chunk(KEY, 0, np.ones((8, 4), np.float16))
        s.forget_done_rows()  # the chunk is done: its checkpoint is no longer needed
        assert s.kept_rows(KEY, 0) == 0 and s.verify() == []
        assert kept_note(s, {"bb": [KEY]}) == "kept 12 of 12 tiles; re-run the same command to finish"
