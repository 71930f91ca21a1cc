"""The foundation CLI, invoked for real: extract, backbones, cache info/verify, and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mito.cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.output


def test_backbones_table_and_json() -> None:
    code, out = _run("backbones", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["efficientnet_lite0"]["available"] is True and rows["efficientnet_lite0"]["embed_dim"] == 1280
    assert rows["virchow2"]["available"] is False and rows["virchow2"]["hf_id"] == "paige-ai/Virchow2"
    code, out = _run("backbones")
    assert code == 0 and "efficientnet_lite0" in out and "uni2-h" in out


def test_extract_info_verify(amibr_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    code, out = _run(
        "extract",
        str(amibr_dir),
        "--store",
        str(store),
        "--task",
        "mitosis",
        "--zooms",
        "1,2",
        "--colors",
        "gray",
        "--input-size",
        "64",
        "--limit",
        "12",
        "--chunk-rows",
        "8",
        "--workers",
        "0",
        "-q",
    )
    assert code == 0, out
    assert "12 tiles embedded" in out
    code, out = _run("cache", "info", str(store), "--json")
    info = json.loads(out)
    assert code == 0 and info["n_tiles"] == 12 and set(info["variants"]) == {"efficientnet_lite0:z1:gray", "efficientnet_lite0:z2:gray"}
    assert all(v["done_pct"] == 100 for v in info["variants"].values())
    code, out = _run("cache", "info", str(store))
    assert code == 0 and "efficientnet_lite0:z2:gray" in out and "mitosis" in out
    code, out = _run("cache", "verify", str(store))
    assert code == 0 and "complete and sound" in out


def test_verify_fails_on_incomplete_store(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from mito.store import create_store

    s = create_store(tmp_path / "s.zarr", pd.DataFrame({"tile_id": list("abcdef")}), {}, chunk_rows=2)
    s.ensure_variant("bb:z1:rgb", 2, {"backbone": "bb"})
    s.write_chunk("bb:z1:rgb", 0, np.zeros((2, 2)))
    code, out = _run("cache", "verify", str(tmp_path / "s.zarr"))
    assert code == 1 and "2 of 3 chunks not written" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "{missing}", "--store", "{tmp}/a.zarr"], "no such file or folder"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--backbone", "virchow3"], "unknown backbone 'virchow3'"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--backbone", "virchow2"], "virchow2 needs pytorch_model.bin"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--backbone", "uni", "--weights", "{tmp}/nope.bin"], "does not exist"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--zooms", "1,x"], "--zooms must be numbers"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--zooms", "0,1"], "zooms must be positive"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--colors", "rgb,hsv"], "colors must be among"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--fit", "stretch"], "--fit"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--zooms", "0.5"], "fixed crops"),
        (["extract", "{data}", "--store", "{tmp}/a.zarr", "--device", "cuda"], "cuda"),
        (["extract", "{empty}", "--store", "{tmp}/a.zarr"], "no images"),
        (["cache", "info", "{tmp}/none.zarr"], "no store at"),
        (["cache", "verify", "{empty}"], "not a mito store"),
        (["extract", "{data}", "--store", "/"], "/ cannot be a store"),
    ],
)
def test_bad_input_gets_one_clear_line(args: list[str], message: str, amibr_dir: Path, tmp_path: Path) -> None:
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "empty").mkdir()
    subs = {"{missing}": str(tmp_path / "missing"), "{tmp}": str(tmp_path), "{data}": str(amibr_dir), "{empty}": str(tmp_path / "empty")}
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    code, out = _run(*argv)
    assert code == 2, out
    assert message in out and "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) <= 3
    assert not (tmp_path / "a.zarr").exists()


def _all_commands() -> list[list[str]]:
    import typer.main

    root = typer.main.get_command(app)
    out = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        out += [[name, s] for s in subs] if subs else [[name]]
    return out


@pytest.mark.parametrize("cmd", _all_commands(), ids=lambda c: " ".join(c))
def test_help_shows_no_type_beside_flags(cmd: list[str]) -> None:
    code, out = _run(*cmd, "--help")
    assert code == 0 and "Usage" in out
    assert "<bool>" not in out  # on/off flags take no value


def test_a_store_inside_a_model_folder_is_refused(amibr_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "head.json").write_text("{}")
    code, out = _run("extract", str(amibr_dir), "--store", str(model / "s.zarr"), "-q")
    assert code == 2 and "a mito store or model" in out and "Traceback" not in out
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "head.json"]
