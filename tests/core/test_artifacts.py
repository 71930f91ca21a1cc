"""mito.json manifests and the one loader: kinds read back, a folder of a newer mito or of nobody refused in one line,
an old manifest without a level read at its kind's level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mito.core.artifacts import ArtifactError, describe_artifact, load_artifact
from mito.core.io import MANIFEST_FORMAT, artifact_kind, is_artifact, write_manifest


def test_a_manifest_says_kind_and_level(tmp_path: Path) -> None:
    (tmp_path / "leaderboard.json").write_text("{}")
    write_manifest(tmp_path, "bench", "slide")
    assert artifact_kind(tmp_path) == ("bench", "slide") and is_artifact(tmp_path, "bench", "lora-run")
    art = describe_artifact(tmp_path)
    assert (art.kind, art.level, art.manifest["format_version"], art.manifest["files"]) == (
        "bench",
        "slide",
        MANIFEST_FORMAT,
        ["leaderboard.json"],
    )
    with pytest.raises(ValueError, match="unknown artifact kind"):
        write_manifest(tmp_path, "nonsense")


def test_a_format_1_manifest_reads_at_its_kinds_level(tmp_path: Path) -> None:
    (tmp_path / "mito.json").write_text(json.dumps({"kind": "model", "format_version": 1, "files": []}))
    assert artifact_kind(tmp_path) == ("model", "tile")


def test_the_manifest_wins_over_the_files(tmp_path: Path) -> None:
    """A folder with config.json + head.json is a tile model by its files; its manifest saying slide is what counts."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "head.json").write_text("{}")
    assert artifact_kind(tmp_path) == ("model", "tile")
    write_manifest(tmp_path, "model", "slide")
    assert artifact_kind(tmp_path) == ("model", "slide")


def test_load_artifact_refuses_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a folder mito wrote") as e:
        load_artifact(tmp_path)
    assert "\n" not in str(e.value)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "mito.json").write_text(json.dumps({"kind": "bench", "format_version": MANIFEST_FORMAT + 1}))
    with pytest.raises(ArtifactError, match="newer than this mito reads"):
        load_artifact(newer)
    out = tmp_path / "exp"
    out.mkdir()
    write_manifest(out, "export")
    assert load_artifact(out).kind == "export"  # nothing to load: the description comes back
