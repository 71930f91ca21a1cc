"""Exports and imports record how they were made (run.yaml; the store's runs) and `mito rerun` makes them again."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from typer.testing import CliRunner

from mito.cli import app
from mito.core.runrecord import read_run_record
from mito.store import open_store
from tests.interop.conftest import KEY

runner = CliRunner()


def _ok(*args: object) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def _h5(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(folder.glob("*.h5")):
        with h5py.File(f, "r") as h:
            out[f.name] = np.asarray(h["features"])
    return out


def test_export_and_import_rerun(slide_store: Path, slide_labels: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "trident", tmp_path / "again"
    _ok("export", "--store", slide_store, "--format", "trident", "--out", a, "--features", KEY)
    rec = read_run_record(a)
    assert rec["job"] == "export" and rec["spec"] == {"store": str(slide_store), "format": "trident", "feature": KEY}
    with open_store(slide_store) as s:
        assert rec["store_tiles_sha256"] == s.meta["tile_list_sha256"]
    _ok("rerun", a, "--out", b)
    fa, fb = _h5(a), _h5(b)
    assert len(fa) == 8 and fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])

    s1, s2 = tmp_path / "imported.zarr", tmp_path / "imported2.zarr"
    _ok("import", a, "--store", s1, "--labels", slide_labels / "labels.csv", "--quiet")
    with open_store(s1) as s:
        (run,) = s.runs
    assert run["job"] == "import" and run["spec"]["format"] == "trident" and run["spec"]["folder"] == str(a)
    _ok("rerun", s1, "--out", s2)
    with open_store(s1) as x, open_store(s2) as y:
        assert x.tiles.equals(y.tiles) and x.meta["tile_list_sha256"] == y.meta["tile_list_sha256"]
        np.testing.assert_array_equal(x.read([KEY]), y.read([KEY]))
