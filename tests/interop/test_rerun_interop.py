"""Exports and imports record how they were made (run.yaml; the store's runs) and `mito rerun` makes them again."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
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


def test_slide_head_and_slide_bench_rerun(slide_store: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "m", tmp_path / "m2"
    fit = ("fit-head", "--store", slide_store, "--level", "slide", "--task", "label", "--head", "abmil", "--epochs", "4")
    m = json.loads(_ok(*fit, "--seed", "3", "--test-fraction", "0.25", "--out", a, "--json"))
    assert read_run_record(a)["job"] == "fit-slide"
    _ok("rerun", a, "--out", b)
    again = json.loads((b / "metrics.json").read_text())
    drop = ("train_seconds", "total_seconds", "model_dir")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in m.items() if k not in drop}
    for f in sorted(a.glob("*.safetensors")):
        assert (b / f.name).read_bytes() == f.read_bytes(), f.name

    c, d = tmp_path / "bench", tmp_path / "bench2"
    bench = ("bench", "--store", slide_store, "--level", "slide", "--task", "label", "--heads", "mean-linear", "--folds", "2")
    _ok(*bench, "--n-boot", "20", "--out", c)
    assert read_run_record(c)["job"] == "bench-slide" and not (c / "rows").exists()
    _ok("rerun", c, "--out", d)
    ra, rb = pd.read_csv(c / "leaderboard.csv"), pd.read_csv(d / "leaderboard.csv")
    keep = [k for k in ra.columns if k not in ("train_seconds", "predict_seconds")]
    pd.testing.assert_frame_equal(ra[keep], rb[keep])
