"""A store without slide information is split tile by tile: fit-head and bench say so in one warning line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.extract import open_source

from .conftest import synthetic_store

runner = CliRunner()
WARNING = "tiles of one slide may land on both sides"


@pytest.fixture(scope="module")
def per_tile_store(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real crops in a plain label-per-subfolder folder (no metadata CSV: no slide column), synthetic features."""
    root = tmp_path_factory.mktemp("noslide")
    src = root / "crops"
    for label in ("Atypical", "Normal"):
        (src / label).mkdir(parents=True)
        for f in sorted((amibr_dir / label).glob("*.jpg")):
            shutil.copy(f, src / label / f.name)
    tiles = open_source(src, task="mitosis").tiles
    assert (tiles["group"] == tiles["tile_id"]).all()  # what a folder without slide information gives
    return synthetic_store(root / "s.zarr", tiles, {"fakenet:z1:rgb": 16})


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if WARNING in line]


def test_fit_head_warns_once_when_every_tile_is_its_own_group(per_tile_store: Path, synth_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        ["fit-head", "--store", str(per_tile_store), "--task", "mitosis", "--head", "logreg", "--out", str(tmp_path / "m")],
        env={"COLUMNS": "300"},
    )
    assert r.exit_code == 0, r.output
    lines = _warnings(r.output)
    assert len(lines) == 1 and "--group-column" in lines[0] and "manifest" in lines[0], r.output
    assert "random by 'group'" not in r.output  # no longer reads as grouped by slide
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "tile by tile" in metrics["split"] and metrics["warnings"] and WARNING in metrics["warnings"][0]
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(synth_store),
            "--task",
            "mitosis",
            "--head",
            "logreg",
            "--split-column",
            "none",
            "--out",
            str(tmp_path / "m2"),
        ],
        env={"COLUMNS": "300"},
    )
    assert r.exit_code == 0 and not _warnings(r.output)  # real slides: grouped, no warning


def test_bench_warns_when_its_folds_split_tile_by_tile(per_tile_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(per_tile_store),
            "--task",
            "mitosis",
            "--heads",
            "logreg",
            "--folds",
            "3",
            "--jobs",
            "1",
            "--n-boot",
            "0",
            "--no-umap",
            "--out",
            str(tmp_path / "b"),
        ],
        env={"COLUMNS": "300"},
    )
    assert r.exit_code == 0, r.output
    assert len(_warnings(r.output)) == 1, r.output
    meta = json.loads((tmp_path / "b" / "leaderboard.json").read_text())["meta"]["tasks"]["mitosis"]
    assert "by slide" not in meta["cv_description"] and WARNING in meta["cv_warning"]


def test_the_warning_wraps_at_the_terminal_width(per_tile_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trial19: the warning was one 280-character line; it wraps like the other warnings (words whole, nothing lost)."""
    from rich.console import Console

    import mito.cli

    monkeypatch.setattr(mito.cli, "err_console", Console(stderr=True, width=80))
    for args in (
        ["fit-head", "--head", "logreg", "--out", str(tmp_path / "m")],
        ["bench", "--heads", "logreg", "--folds", "3", "--jobs", "1", "--n-boot", "0", "--no-umap", "--out", str(tmp_path / "b")],
    ):
        r = runner.invoke(app, [*args, "--store", str(per_tile_store), "--task", "mitosis"])
        assert r.exit_code == 0, r.output
        start = r.stderr.index("warning")
        said = r.stderr[start:].split("\n\n")[0]
        assert max(len(line) for line in said.splitlines()) <= 80 and len(said.splitlines()) >= 3, said
        assert WARNING in " ".join(said.split()) and "extract from a CSV manifest with a slide column" in " ".join(said.split()), said
