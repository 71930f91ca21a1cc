"""extract --sample / --sample-per-class: a seeded sample stratified by label, recorded in the store; --limit's cut."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.extract import ExtractConfig, extract, open_source
from mito.extract.sources import stratified_sample
from mito.store import StoreError, open_store

runner = CliRunner()
FAST = [
    "--task",
    "mitosis",
    "--zooms",
    "1",
    "--colors",
    "rgb",
    "--input-size",
    "64",
    "--workers",
    "0",
    "--quiet",
    "--chunk-rows",
    "8",
    "--batch-size",
    "8",
]


def test_sample_is_stratified_seeded_and_keeps_the_source_order(amibr_dir: Path) -> None:
    tiles = open_source(amibr_dir, task="mitosis").tiles  # 24 Atypical then 24 Normal (sorted paths)
    tiles = pd.concat([tiles, tiles[tiles["mitosis"] == "Normal"].assign(tile_id=lambda d: "x" + d["tile_id"])], ignore_index=True)
    # 24 Atypical, 48 Normal
    got, info = stratified_sample(tiles, "mitosis", total=12, seed=0)
    assert got["mitosis"].value_counts().to_dict() == {"Normal": 8, "Atypical": 4}  # proportional: 1/3 Atypical
    assert info["counts"] == {"Atypical": 4, "Normal": 8} and info["of"] == 72 and info["seed"] == 0 and info["by"] == "mitosis"
    assert list(got.index) == sorted(got.index)  # rows keep the source's order
    again, _ = stratified_sample(tiles, "mitosis", total=12, seed=0)
    other, _ = stratified_sample(tiles, "mitosis", total=12, seed=1)
    assert again["tile_id"].tolist() == got["tile_id"].tolist() and other["tile_id"].tolist() != got["tile_id"].tolist()
    per, info = stratified_sample(tiles, "mitosis", per_class=5, seed=0)
    assert per["mitosis"].value_counts().to_dict() == {"Atypical": 5, "Normal": 5} and info["per_class"] == 5
    few, _ = stratified_sample(tiles, "mitosis", total=2, seed=3)  # every class shows up while N allows
    assert set(few["mitosis"]) == {"Atypical", "Normal"}
    big, info = stratified_sample(tiles, "mitosis", per_class=30, seed=0)  # a class smaller than N gives all it has
    assert big["mitosis"].value_counts().to_dict() == {"Normal": 30, "Atypical": 24}
    none, info = stratified_sample(tiles.drop(columns="mitosis"), None, total=10, seed=0)
    assert len(none) == 10 and info["by"] is None


def test_limit_takes_the_first_sorted_paths_and_says_so(amibr_dir: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "250"})
    assert "first N tiles in sorted path order" in r.output and "--sample" in r.output and "--sample-per-class" in r.output
    r = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(tmp_path / "l.zarr"), "--limit", "12", *FAST])
    assert r.exit_code == 0, r.output
    with open_store(tmp_path / "l.zarr") as s:
        assert set(s.tiles["mitosis"]) == {"Atypical"}  # sorted paths: the first 12 are all one class


def test_sample_store_records_it_resumes_it_and_refuses_another_cut(amibr_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    r = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(store), "--sample", "12", "--seed", "3", *FAST])
    assert r.exit_code == 0, r.output
    assert "sampled 12 of 48 tiles, stratified by mitosis (seed 3): Atypical 6, Normal 6" in r.output.replace("\n", " ")
    with open_store(store) as s:
        assert s.tiles["mitosis"].value_counts().to_dict() == {"Atypical": 6, "Normal": 6}
        assert s.meta["sample"]["n"] == 12 and s.meta["sample"]["seed"] == 3 and s.meta["sample"]["of"] == 48
        ids = s.tiles["tile_id"].tolist()
    r = runner.invoke(app, ["cache", "info", str(store)], env={"COLUMNS": "200"})
    assert "sample: 12 of 48 tiles, stratified by mitosis (seed 3)" in r.output
    r = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(store), "--sample", "12", "--seed", "3", *FAST])
    assert r.exit_code == 0 and "nothing left to do" in r.output  # the same N and seed: the same tiles, resumed
    for other in (
        ["--sample", "12", "--seed", "4"],
        ["--sample", "16", "--seed", "3"],
        ["--sample-per-class", "6", "--seed", "3"],
        ["--limit", "12"],
    ):
        r = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(store), *other, *FAST])
        assert r.exit_code == 2 and "--sample 12 --seed 3" in r.output and "Traceback" not in r.output, (other, r.output)
    with open_store(store) as s:
        assert s.tiles["tile_id"].tolist() == ids and s.verify() == []
    full = tmp_path / "full.zarr"
    extract(
        ExtractConfig(
            source=str(amibr_dir), store=str(full), task="mitosis", input_size=64, chunk_rows=8, batch_size=8, num_workers=0, progress=False
        )
    )
    r = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(full), "--sample", "12", *FAST])
    assert r.exit_code == 2 and "every tile of SOURCE" in r.output


def test_sample_options_are_checked(amibr_dir: Path, tmp_path: Path) -> None:
    for args, msg in (
        (["--sample", "0"], "--sample"),
        (["--sample", "5", "--limit", "5"], "one of --limit, --sample"),
        (["--sample", "5", "--sample-per-class", "2"], "one of --limit, --sample"),
    ):
        r = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(tmp_path / "x.zarr"), *args, *FAST])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(StoreError):
        open_store(tmp_path / "x.zarr")
