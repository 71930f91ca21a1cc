"""The invariance table (mean cosine of a tile's RGB embedding to its gray / hema variant and its views) and its report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mito.bench.invariance import invariance_table, mean_cosine
from mito.report.invariance import invariance_section
from mito.store import create_store, open_store
from tests.heads.conftest import PROV, amibr_tiles


def _store(path: Path, arrays: dict[str, np.ndarray], tiles, chunk_rows: int = 16) -> Path:
    s = create_store(path, tiles, {"tasks": ["mitosis"]}, chunk_rows=chunk_rows)
    for key, A in arrays.items():
        bb, z, color = key.split(":")[:3]
        s.ensure_variant(key, A.shape[1], {**PROV, "backbone": bb, "preprocessing": {**PROV["preprocessing"], "color": color}})
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            bad = np.isnan(A[a:b]).any(1)
            s.write_chunk(key, c, A[a:b].astype(np.float16), bad)
    s.close()
    return path


def test_invariance_matches_a_hand_computation(tmp_path: Path) -> None:
    tiles = amibr_tiles(40)
    n = len(tiles)
    rng = np.random.default_rng(0)
    rgb = rng.normal(size=(n, 4))
    rgb[3] = np.nan  # an unreadable tile counts nowhere
    gray = rgb + rng.normal(size=(n, 4))
    arrays = {
        "bb:z1:rgb": rgb,
        "bb:z1:gray": gray,
        "bb:z1:rgb:hed0": rgb * 2.0,  # cos 1
        "bb:z1:rgb:hed1": -rgb,  # cos -1: the two HED draws average to 0
        "bb:z1:rgb:flip": np.roll(rgb, 1, axis=1),
        "bb:z2:gray": gray,
    }
    with open_store(_store(tmp_path / "s.zarr", arrays, tiles)) as s:
        t = invariance_table(s)
        assert list(t["backbone"]) == ["bb"] and list(t["zoom"]) == ["1"]  # z2 has no rgb: no row
        r = t.iloc[0]
        ok = ~np.isnan(rgb).any(1)
        x16 = lambda a: a.astype(np.float16).astype(np.float64)[ok]  # noqa: E731 - what the store holds
        hand = lambda a, b: float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))  # noqa: E731
        assert r["gray"] == pytest.approx(hand(x16(rgb), x16(gray)), abs=1e-9)
        assert r["flip"] == pytest.approx(hand(x16(rgb), x16(np.roll(rgb, 1, axis=1))), abs=1e-9)
        assert r["hed"] == pytest.approx(0.0, abs=1e-3) and r["n_tiles"] == n - 1
        assert "hema" not in t.columns
        assert mean_cosine(s, "bb:z1:rgb", "bb:z1:rgb:hed0") == pytest.approx(1.0, abs=1e-6)
        few = invariance_table(s, max_tiles=16)  # chunks of 16 rows: one whole chunk read, not every tile
        assert few.iloc[0]["n_tiles"] == 15  # chunk 0's readable rows (row 3 is not)

        def f16(a: np.ndarray) -> np.ndarray:
            return a.astype(np.float16).astype(np.float64)[:16][ok[:16]]

        assert few.iloc[0]["gray"] == pytest.approx(hand(f16(rgb), f16(gray)), abs=1e-9)
    html = invariance_section(tmp_path / "s.zarr")
    assert "Invariance" in html and f"{r['gray']:.3f}" in html and "<td>bb</td><td>z1</td>" in html
    assert invariance_section(tmp_path / "missing.zarr") == "" and invariance_section(None) == ""


def test_report_has_the_invariance_section(tmp_path: Path) -> None:
    from mito.bench import BenchConfig, run_bench, save_leaderboard
    from mito.report import build_report

    tiles = amibr_tiles(160)
    rng = np.random.default_rng(1)
    y = (tiles["mitosis"] == "Atypical").to_numpy()
    rgb = rng.normal(size=(len(tiles), 8)) + y[:, None]
    store = _store(tmp_path / "s.zarr", {"bb:z1:rgb": rgb, "bb:z1:rgb:flip": rgb + rng.normal(size=rgb.shape)}, tiles, 64)
    lb = run_bench(BenchConfig(store=str(store), tasks=["mitosis"], heads=["logreg"], n_folds=2, n_jobs=1, n_boot=0), progress=False)
    assert list(lb.rows["features"]) == ["z1:rgb"]  # the view is no feature set of its own
    save_leaderboard(lb, tmp_path / "b")
    page = build_report(tmp_path / "b").read_text()
    assert "Invariance of the embeddings" in page and "flip" in page
