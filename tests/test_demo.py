"""mito demo: one feature set from fit-head to bench and UMAP, and the numbers' difference explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from mito.demo import run_demo


@pytest.mark.slow
def test_demo_benches_and_draws_the_features_it_fitted_on(amibr_dir: Path, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    result = run_demo(tmp_path / "demo", device="cpu", console=console, source=amibr_dir)
    text = console.export_text()
    fitted = result["fit_head"]["features"]
    assert fitted == ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z2:rgb"]
    doc = json.loads((tmp_path / "demo" / "report" / "leaderboard.json").read_text())
    assert {r["features"] for r in doc["rows"]} == {"z1+z2:rgb"}  # the bench ranks the set fit-head used
    assert result["umap_features"] == fitted
    assert (tmp_path / "demo" / "report" / "umap_mitosis.png").stat().st_size > 1000
    mlp = next(r for r in doc["rows"] if r["head"] == "mlp")
    assert mlp["n_test"] == result["fit_head"]["n_test"]  # the same test crops
    said = " ".join(text.split())
    assert f"fit-head's single mlp: {result['fit_head']['balanced_accuracy']:.3f}" in said
    assert f"bench's mlp row: {mlp['balanced_accuracy']:.3f}" in said and "same features" in said
