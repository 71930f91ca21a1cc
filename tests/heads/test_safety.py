"""Model directories and prediction CSVs are never written over what they must not replace; damaged model files
are refused in one line naming the file; a model loaded in Python predicts from raw features like mito predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.heads import HeadError, load_head, load_model, select_features
from mito.store import open_store

RGB, GRAY = "fakenet:z1:rgb", "fakenet:z1:gray"
runner = CliRunner()


def fit(store: Path, out: Path, *extra: str) -> object:
    return runner.invoke(app, ["fit-head", "--store", str(store), "--out", str(out), "--head", "logreg", "--features", RGB, *extra])


@pytest.fixture(scope="module")
def model(synth_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "m"
    r = fit(synth_store, out, "--standardize", "--pca", "8", "--features", f"{RGB},{GRAY}", "--metadata", "dataset")
    assert r.exit_code == 0, r.output
    return out


# ------------------------------------------------------------------ fit-head --out (15.4, 15.11)
def test_overwrite_never_deletes_the_store(synth_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(synth_store, store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    for out in (store, store / "models" / "m", tmp_path):  # the store, inside it, a folder holding it
        r = fit(store, out, "--overwrite")
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    with open_store(store) as s:
        assert s.is_complete(RGB)


def test_overwrite_refuses_a_folder_of_other_files_a_file_and_dot(
    synth_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("years of work")
    r = fit(synth_store, other, "--overwrite")
    assert r.exit_code == 2 and "mito did not write" in r.output
    assert (other / "thesis.txt").read_text() == "years of work"
    f = tmp_path / "file.txt"
    f.write_text("keep")
    r = fit(synth_store, f, "--overwrite")
    assert r.exit_code == 2 and f.read_text() == "keep"
    monkeypatch.chdir(tmp_path)
    for out in (".", "/"):
        r = fit(synth_store, Path(out), "--overwrite")
        assert r.exit_code == 2 and "refusing" in r.output, r.output
    assert (other / "thesis.txt").is_file()


def test_overwrite_replaces_a_model_and_cleans_stale_leftovers(synth_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert fit(synth_store, out).exit_code == 0
    r = fit(synth_store, out)
    assert r.exit_code == 2 and "already exists" in r.output
    stale = tmp_path / ".m.old"  # left by a fit-head killed between its two renames
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    r = fit(synth_store, out, "--overwrite", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["training"]["seed"] == 3
    assert not stale.exists() and not (tmp_path / ".m.writing").exists()


# ------------------------------------------------------------------ predict --out (15.5)
def test_predict_never_writes_into_a_model_or_store_nor_over_a_file(model: Path, synth_store: Path, tmp_path: Path) -> None:
    config = (model / "config.json").read_text()
    for out in (model / "config.json", model / "p.csv", synth_store / "p.csv"):
        r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(synth_store), "--out", str(out), "--overwrite"])
        assert r.exit_code == 2 and "a mito store or model" in r.output, r.output
    assert (model / "config.json").read_text() == config and not (model / "p.csv").exists()
    load_model(model)
    out = tmp_path / "p.csv"
    out.write_text("precious")
    r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(synth_store), "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output and out.read_text() == "precious"
    r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(synth_store), "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(out)) > 0


# ------------------------------------------------------------------ load_head applies the pipeline (10.9)
def test_model_loaded_in_python_predicts_raw_features_like_mito_predict(model: Path, synth_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(synth_store), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    csv = pd.read_csv(tmp_path / "p.csv")
    m = load_head(model)
    with open_store(synth_store) as s:
        X = select_features(s, [RGB, GRAY])
        tiles = s.tiles
    proba = m.predict_proba(X, metadata=tiles)
    # the same code path on other row blocks: float32 BLAS sums may differ in the last bit (float32 eps 6e-8 at 0.5)
    np.testing.assert_allclose(proba, csv[["p_Atypical", "p_Normal"]].to_numpy(), rtol=0, atol=1e-6)
    assert (m.predict(X, metadata=tiles) == csv["pred"]).all()
    config, head, pipeline = load_model(model)  # still unpacks
    assert pipeline.pca == 8 and pipeline.standardize and head.n_features_in_ == 8 + 2
    with pytest.raises(HeadError, match="metadata"):
        m.predict_proba(X)


# ------------------------------------------------------------------ damaged model files (10.16)
def _damage(model: Path, tmp_path: Path, name: str, how: str) -> Path:
    bad = tmp_path / f"bad_{name.replace('.', '_')}_{how}"
    shutil.copytree(model, bad)
    f = bad / name
    data = f.read_bytes()
    if how == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        mid = len(data) - 20  # inside the tensor data, after the header: only the checksum notices
        f.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 8]) + data[mid + 8 :])
    elif how == "header":
        f.write_bytes(b"\xff" * 8 + data[8:])
    elif how == "empty":
        f.write_bytes(b"")
    elif how == "invalid":
        f.write_text('{"task": ')
    elif how == "not-an-object":
        f.write_text("[1, 2, 3]")
    elif how == "missing":
        f.unlink()
    return bad


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("model.safetensors", "truncate"),
        ("model.safetensors", "flip"),
        ("model.safetensors", "header"),
        ("config.json", "empty"),
        ("config.json", "invalid"),
        ("config.json", "not-an-object"),
        ("head.json", "empty"),
        ("head.json", "invalid"),
        ("pipeline.safetensors", "missing"),
        ("pipeline.safetensors", "truncate"),
        ("pipeline.safetensors", "flip"),
    ],
)
def test_damaged_model_file_is_one_line_naming_it(model: Path, synth_store: Path, tmp_path: Path, name: str, how: str) -> None:
    bad = _damage(model, tmp_path, name, how)
    with pytest.raises(HeadError) as e:
        load_model(bad)
    assert len(str(e.value).splitlines()) == 1
    r = runner.invoke(app, ["predict", "--model", str(bad), "--store", str(synth_store), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert name in r.output or (how == "missing" and name in r.output), r.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--lr", "nan", "lr must be a number"),
        ("--lr", "inf", "lr must be a number"),
        ("--gamma", "nan", "gamma must be a number"),
        ("--hidden", "1000000000000", "hidden must be a whole number"),
        ("-p", "lr=abc", "lr must be a number"),
        ("-p", "dropout=nan", "dropout must be a number"),
    ],
)
def test_bad_head_option_values_are_one_line(synth_store: Path, tmp_path: Path, option: str, value: str, message: str) -> None:
    r = runner.invoke(app, ["fit-head", "--store", str(synth_store), "--head", "mlp", option, value, "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert message in r.output and not (tmp_path / "m").exists()
