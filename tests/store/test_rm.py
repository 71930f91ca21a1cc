"""`mito cache rm`: removing variants (arrays, done flags, provenance) under the writer lock, in both formats."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.store import StoreError, create_store, open_store
from mito.store.lock import StoreLock

FORMATS = ["s.zarr", "s.h5"]
runner = CliRunner()


def _store(path: Path, keys: list[str], n: int = 10, dim: int = 3) -> dict[str, np.ndarray]:
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(n)], "label": (["a", "b"] * n)[:n]})
    s = create_store(path, tiles, {"tasks": ["label"]}, chunk_rows=4)
    out = {}
    rng = np.random.default_rng(0)
    for k in keys:
        out[k] = rng.normal(size=(n, dim)).astype(np.float16)
        s.ensure_variant(k, dim, {"backbone": k.split(":")[0], "preprocessing": {"fit": "resize"}})
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            s.write_chunk(k, c, out[k][a:b])
    s.close()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS)
def test_rm_removes_arrays_and_provenance_keeps_the_rest_sound(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    data = _store(path, ["bb:z1:rgb", "bb:z2:rgb", "bb:z1:rgb:flip", "bb:z1:gray"], n=2000, dim=64)
    size_before = os.path.getsize(path) if name.endswith(".h5") else None
    r = runner.invoke(app, ["cache", "rm", str(path), "bb:z1:rgb", "bb:z2:rgb"])
    assert r.exit_code == 0, r.output
    assert "bb:z1:rgb:flip" in r.output  # a view goes with its variant, and the output says so
    with open_store(path) as s:
        assert s.variants == ["bb:z1:gray"]
        assert s.verify() == []
        np.testing.assert_array_equal(s.read(["bb:z1:gray"], dtype=np.float16), data["bb:z1:gray"])
        assert not any(a.startswith(("features/bb/z1/rgb", "features/bb/z2")) for a in s._b.arrays("features"))
        assert not any("rgb" in a for a in s._b.arrays("done"))
    if size_before is not None:  # HDF5 gives the space back (the file is rewritten without the removed arrays)
        assert os.path.getsize(path) < 0.6 * size_before
    r = runner.invoke(app, ["cache", "verify", str(path)])
    assert r.exit_code == 0 and "1 variant," in r.output


@pytest.mark.parametrize("name", FORMATS)
def test_rm_refuses_unknown_and_last_variants_before_changing_anything(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _store(path, ["bb:z1:rgb", "bb:z2:rgb"])
    r = runner.invoke(app, ["cache", "rm", str(path), "bb:z1:rgb", "bb:z9:rgb"])
    assert r.exit_code == 2 and "bb:z9:rgb" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["cache", "rm", str(path), "bb:z1:rgb", "bb:z2:rgb"])
    assert r.exit_code == 2 and "last" in r.output
    with open_store(path) as s:  # nothing changed
        assert s.variants == ["bb:z1:rgb", "bb:z2:rgb"] and s.verify() == []


def test_rm_is_refused_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path, ["bb:z1:rgb", "bb:z2:rgb"])
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from mito.store.lock import StoreLock; StoreLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
            ),
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = runner.invoke(app, ["cache", "rm", str(path), "bb:z1:rgb"])
        assert r.exit_code == 2 and "being written by" in r.output
    finally:
        holder.kill()
        holder.wait()
    with open_store(path) as s:
        assert s.variants == ["bb:z1:rgb", "bb:z2:rgb"]
    assert StoreLock(path).acquire().held  # and the lock is free again


def test_rm_clears_arrays_an_interrupted_writer_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path, ["bb:z1:rgb", "bb:z2:rgb"])
    with open_store(path, "a") as s:  # as if killed between forgetting the variant and deleting its arrays
        s._update_meta(lambda m: m["variants"].pop("bb:z2:rgb"))
    with open_store(path, lenient=True) as s:
        problems = s.verify()
    assert any("on disk but not in the attributes" in p and "mito cache rm" in p for p in problems)
    r = runner.invoke(app, ["cache", "rm", str(path), "bb:z2:rgb"])
    assert r.exit_code == 0, r.output
    with open_store(path) as s:
        assert s.verify() == [] and s.variants == ["bb:z1:rgb"]


def test_a_variant_made_differently_names_the_command_that_removes_it(amibr_dir: Path, tmp_path: Path) -> None:
    """The real path: extract at one input size, then at another: the refusal names `mito cache rm`, which works."""
    src = tmp_path / "crops"
    for label in ("Atypical", "Normal"):
        (src / label).mkdir(parents=True)
        for f in sorted((amibr_dir / label).glob("*.jpg"))[:3]:
            shutil.copy(f, src / label / f.name)
    store = tmp_path / "s.zarr"
    common = ["extract", str(src), "--store", str(store), "--colors", "rgb", "--workers", "0", "--quiet"]
    r = runner.invoke(app, [*common, "--zooms", "1,2", "--input-size", "64"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*common, "--zooms", "1", "--input-size", "96"])
    assert r.exit_code == 2
    assert f"mito cache rm {store} efficientnet_lite0:z1:rgb" in r.output.replace("\n", "")
    r = runner.invoke(app, ["cache", "rm", str(store), "efficientnet_lite0:z1:rgb"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*common, "--zooms", "1", "--input-size", "96"])
    assert r.exit_code == 0, r.output
    with open_store(store) as s:
        assert s.variants == ["efficientnet_lite0:z2:rgb", "efficientnet_lite0:z1:rgb"] and s.verify() == []
        assert s.variant_info("efficientnet_lite0:z1:rgb")["preprocessing"]["input_size"] == 96
    with pytest.raises(StoreError):
        with open_store(store) as s:
            s.variant_info("efficientnet_lite0:z3:rgb")
