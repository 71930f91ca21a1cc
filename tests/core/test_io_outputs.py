"""mito.core.io's output guards: distinct per-item file stems, the mito.json manifest, files an output may never replace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mito.core.errors import OutputError
from mito.core.io import (
    atomic_dir,
    check_output_dir,
    check_output_file,
    is_mito_folder,
    read_manifest,
    same_file_as,
    unique_stems,
    write_manifest,
)
from mito.wsi.reader import slide_file_stems, stem


@pytest.mark.parametrize(
    "ids, with_ext, without_ext",
    [
        (["a.svs", "b.ome.tif"], ["a.svs", "b.ome.tif"], ["a", "b"]),
        (["x.svs", "x.ome.tif"], ["x.svs", "x.ome.tif"], ["x.svs", "x.ome.tif"]),
        (["a b.svs", "a_b.svs"], ["a_b.svs-64729164", "a_b.svs"], ["a_b-64729164", "a_b"]),  # the name made safe yields
        (["X.svs", "x.svs"], ["X.svs-163f1275", "x.svs-23346760"], ["X-163f1275", "x-23346760"]),  # case-insensitive disks
        (["../../etc.svs"], ["etc.svs"], ["etc"]),
    ],
)
def test_slide_file_stems_are_distinct_safe_and_stable(ids: list[str], with_ext: list[str], without_ext: list[str]) -> None:
    for keep, want in ((True, with_ext), (False, without_ext)):
        got = slide_file_stems(ids, keep_extension=keep)
        assert [got[i] for i in ids] == want
        assert slide_file_stems(list(reversed(ids)), keep_extension=keep) == got  # the same names whatever the order
        assert len({s.casefold() for s in got.values()}) == len(ids) and all("/" not in s for s in got.values())


def test_unique_stems_never_repeat_even_when_every_tier_collides() -> None:
    ids = ["x.svs", "x.ome.tif", "x.svs.tif", "X.SVS", "x svs", "x_svs", "x?svs", "x" * 200 + ".svs", "x" * 200 + ".tif"]
    got = unique_stems(ids, stem, taken=["x.ome.tif"])
    names = [s.casefold() for s in got.values()]
    assert len(set(names)) == len(ids) and "x.ome.tif" not in names and max(map(len, names)) <= 80
    assert got["x.svs.tif"] == "x.svs"  # a name nobody else wants is kept as it is


def test_manifest_marks_a_folder_as_mitos_and_nothing_else(tmp_path: Path) -> None:
    def fill(d: Path) -> None:
        (d / "a.h5").write_bytes(b"x")
        write_manifest(d, "export", store="s.zarr")

    out = atomic_dir(tmp_path / "exp", fill)
    doc = read_manifest(out)
    assert doc is not None and doc["kind"] == "export" and doc["format_version"] == 2 and doc["files"] == ["a.h5"] and doc["level"] is None
    assert doc["store"] == "s.zarr" and doc["mito_version"]
    assert is_mito_folder(out, "export") and not is_mito_folder(out, "slides-qc")
    check_output_dir(out, True, kind="export")  # replaceable with --overwrite
    with pytest.raises(OutputError, match="--overwrite"):
        check_output_dir(out, False, kind="export")
    (out / "mine.txt").write_text("keep")  # a file nobody listed: not ours any more
    assert not is_mito_folder(out, "export")
    with pytest.raises(OutputError, match="holds files mito did not write"):
        check_output_dir(out, True, kind="export")
    (out / "mine.txt").unlink()
    for bad in ("{", "[]", json.dumps({"kind": 3, "format_version": 1}), json.dumps({"kind": "export"})):
        (out / "mito.json").write_text(bad)
        assert read_manifest(out) is None and not is_mito_folder(out, "export")
    (out / "mito.json").unlink()
    with pytest.raises(OutputError, match="no mito.json; if an earlier mito wrote it, delete it by hand"):
        check_output_dir(out, True, kind="export")


def test_an_output_file_is_never_a_file_a_store_reads(tmp_path: Path) -> None:
    src = tmp_path / "slides" / "a.svs"
    src.parent.mkdir()
    src.write_bytes(b"slide")
    link = tmp_path / "link.svs"
    link.symlink_to(src)
    inputs = [str(src), str(tmp_path / "slides" / "b.svs")]
    for out in (src, link, tmp_path / "slides" / ".." / "slides" / "a.svs"):
        assert same_file_as(out, inputs) == str(src)
        with pytest.raises(OutputError, match="an input this command reads"):
            check_output_file(out, overwrite=True, inputs=inputs)
    assert same_file_as(tmp_path / "a.svs", inputs) is None
    assert check_output_file(tmp_path / "new.csv", inputs=inputs) == tmp_path / "new.csv"
    assert src.read_bytes() == b"slide"
