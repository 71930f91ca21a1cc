"""Folders written by an earlier mito (tests/assets/legacy, made by tests/assets/make_legacy.py) keep loading and
predict what they predicted when they were written: a store, a model folder per tile head, an ensemble, two
slide-level models, a bench folder, a LoRA run and a TRIDENT export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest

LEGACY = Path(__file__).resolve().parent / "assets" / "legacy"
TILE_MODELS = ("mlp", "linear", "logreg", "knn", "lightgbm", "ensemble")
SLIDE_MODELS = ("slide-abmil", "slide-mean-mlp")
ATOL = 1e-5  # probabilities are written with 6 significant digits; BLAS and thread counts move the 7th


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the legacy folders (nothing a test does may touch the committed ones)."""
    dest = tmp_path_factory.mktemp("legacy") / "legacy"
    shutil.copytree(LEGACY, dest)
    return dest


def _same_predictions(got: pd.DataFrame, want: pd.DataFrame, key: list[str]) -> None:
    """The same rows (by ``key``), the same predicted class and the same probabilities."""
    probs = [c for c in want.columns if c.startswith("p_")]
    assert probs and sorted(c for c in got.columns if c.startswith("p_")) == sorted(probs)
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    assert got[key].astype(str).values.tolist() == want[key].astype(str).values.tolist()
    np.testing.assert_allclose(got[probs].to_numpy(float), want[probs].to_numpy(float), atol=ATOL, rtol=0)
    assert got["pred"].astype(str).tolist() == want["pred"].astype(str).tolist()
    for col in ("split", "label"):
        if col in want:
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col


def test_the_legacy_folders_are_all_there() -> None:
    """The folders this file checks exist (a missing one would make its test pass vacuously)."""
    for name in (*TILE_MODELS, *SLIDE_MODELS):
        assert (LEGACY / "models" / name / "config.json").is_file(), name
        assert (LEGACY / "models" / f"{name}.predictions.csv").is_file(), name
    for path in (
        "store.zarr/zarr.json",
        "bench/leaderboard.json",
        "lora/leaderboard.json",
        "lora/fold0/model/config.json",
        "export/mito.json",
        "export/a.h5",
        "bench.expected.json",
        "lora.expected.json",
        "export.expected.json",
    ):
        assert (LEGACY / path).is_file(), path


def test_the_legacy_store_opens_and_verifies(legacy: Path) -> None:
    from mito.store import open_store

    with open_store(legacy / "store.zarr") as s:
        assert s.verify() == []
        assert s.n_tiles == 30 and s.variants == ["efficientnet_lite0:z1:rgb"] and s.tasks == ["mitosis"]
        x = s.read(["efficientnet_lite0:z1:rgb"])
        assert x.shape == (30, 1280) and np.isfinite(x).all()


@pytest.mark.parametrize("name", TILE_MODELS)
def test_legacy_tile_models_predict_as_before(legacy: Path, name: str) -> None:
    from mito.heads import predict

    model = legacy / "models" / name
    want = pd.read_csv(legacy / "models" / f"{name}.predictions.csv")
    got = predict(model, store=legacy / "store.zarr")
    _same_predictions(got, want, ["path"])


def test_legacy_tile_models_load_as_models(legacy: Path) -> None:
    """load_model gives the sklearn-style object; its predict_proba on the raw store features is what predict wrote."""
    from mito.heads import load_model
    from mito.store import open_store

    with open_store(legacy / "store.zarr") as s:
        x, paths = s.read(["efficientnet_lite0:z1:rgb"]), s.tiles["path"].tolist()
    for name in TILE_MODELS:
        m = load_model(legacy / "models" / name)
        want = pd.read_csv(legacy / "models" / f"{name}.predictions.csv").set_index("path").loc[paths]
        proba = m.predict_proba(x)
        np.testing.assert_allclose(proba, want[[f"p_{c}" for c in m.classes_]].to_numpy(float), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", SLIDE_MODELS)
def test_legacy_slide_models_predict_as_before(legacy: Path, name: str) -> None:
    from mito.core.io import artifact_kind
    from mito.heads import predict_slides

    model = legacy / "models" / name
    assert artifact_kind(model) == ("model", "slide")
    slides, tiles = predict_slides(model, legacy / "store.zarr")
    _same_predictions(slides, pd.read_csv(legacy / "models" / f"{name}.predictions.csv"), ["slide"])
    want_tiles = pd.read_csv(legacy / "models" / f"{name}.predictions.tiles.csv").sort_values(["slide", "tile_id"]).reset_index(drop=True)
    got_tiles = tiles.sort_values(["slide", "tile_id"]).reset_index(drop=True)
    assert got_tiles["tile_id"].tolist() == want_tiles["tile_id"].tolist()
    np.testing.assert_allclose(got_tiles["attention"].to_numpy(float), want_tiles["attention"].to_numpy(float), atol=ATOL, rtol=0)


def _expected_rows(folder: Path, expected: Path) -> tuple[Any, dict[str, Any]]:
    from mito.bench import load_leaderboard

    want = json.loads(expected.read_text())
    lb = load_leaderboard(folder)
    assert sorted(lb.rows["row_id"]) == sorted(want["rows"])
    for _, r in lb.rows.iterrows():
        for k, v in want["rows"][r["row_id"]].items():
            assert r[k] == pytest.approx(v, abs=1e-9), (r["row_id"], k)
    return lb, want


def test_legacy_bench_folder_loads_and_compares_as_before(legacy: Path) -> None:
    from mito.bench import compare_rows
    from mito.core.io import artifact_kind

    assert artifact_kind(legacy / "bench") == ("bench", "tile")
    lb, want = _expected_rows(legacy / "bench", legacy / "bench.expected.json")
    a, b, comp = compare_rows(lb, "1", "2")
    assert [a["row_id"], b["row_id"]] == [want["compare"]["a"], want["compare"]["b"]]
    for metric, res in want["compare"]["result"]["paired"].items():
        got = comp.paired[metric]
        for k in ("delta", "ci_low", "ci_high", "p_value", "value_a", "value_b"):
            assert getattr(got, k) == pytest.approx(res[k], abs=1e-12, nan_ok=True), (metric, k)
    if want["compare"]["result"]["delong"] is not None:
        assert comp.delong is not None and comp.delong.p_value == pytest.approx(want["compare"]["result"]["delong"]["p_value"], abs=1e-12)


def test_legacy_bench_folder_rebuilds_its_report(legacy: Path) -> None:
    from mito.report import build_report

    (legacy / "bench" / "report.html").unlink()
    assert Path(build_report(legacy / "bench")).is_file()


def test_legacy_lora_run_loads_and_its_models_predict_as_before(legacy: Path) -> None:
    from mito.bench import predict_finetuned
    from mito.core.io import artifact_kind

    _expected_rows(legacy / "lora", legacy / "lora.expected.json")
    model = legacy / "lora" / "fold0" / "model"
    assert artifact_kind(model) == artifact_kind(legacy / "lora" / "fold1" / "model") == ("finetuned-model", "tile")
    got = predict_finetuned(model, legacy / "crops", device="cpu")
    want = pd.read_csv(legacy / "lora.predictions.csv")
    got["path"] = [Path(p).name for p in got["path"]]
    want["path"] = [Path(p).name for p in want["path"]]
    _same_predictions(got, want, ["path"])


def test_legacy_export_folder_is_recognised_and_reads_as_written(legacy: Path) -> None:
    from mito.core.io import is_mito_folder

    assert is_mito_folder(legacy / "export", "export")
    want = json.loads((legacy / "export.expected.json").read_text())
    assert sorted(p.name for p in (legacy / "export").glob("*.h5")) == sorted(want)
    for name, w in want.items():
        with h5py.File(legacy / "export" / name, "r") as f:
            feats, coords = f["features"][:], f["coords"][:]
            assert list(feats.shape) == w["shape"] and feats.dtype == np.float32
            assert float(feats.astype(np.float64).sum()) == pytest.approx(w["features_sum"], rel=1e-12)
            np.testing.assert_array_equal(feats[0, :8], np.asarray(w["features_first"], np.float32))
            assert coords.tolist() == w["coords"]
            for k, v in w["coords_attrs"].items():
                assert f["coords"].attrs[k] == v, k


# the kind each legacy folder holds, as load_artifact reads it (none of them has a mito.json but the export)
LEGACY_KINDS = {
    **{f"models/{n}": ("model", "tile") for n in TILE_MODELS if n != "ensemble"},
    "models/ensemble": ("ensemble", "tile"),
    **{f"models/{n}": ("model", "slide") for n in SLIDE_MODELS},
    "models/ensemble/member0": ("head", "tile"),
    "bench": ("bench", "tile"),
    "lora": ("lora-run", "tile"),
    "lora/fold0/model": ("finetuned-model", "tile"),
    "export": ("export", None),
}


def test_legacy_folders_load_through_load_artifact(legacy: Path) -> None:
    """One loader for every folder: the right kind without a manifest, and the object each kind loads as."""
    from mito.app import load_artifact
    from mito.bench import FinetunedModel, Leaderboard
    from mito.core.artifacts import Artifact
    from mito.core.io import artifact_kind
    from mito.heads import Model, SlideModel
    from mito.heads.base import Head

    assert not any((legacy / p / "mito.json").exists() for p in LEGACY_KINDS if p != "export")
    want_type = {
        "model": (Model, SlideModel),
        "ensemble": (Model,),
        "head": (Head,),
        "bench": (Leaderboard,),
        "lora-run": (Leaderboard,),
        "finetuned-model": (FinetunedModel,),
        "export": (Artifact,),
    }
    for rel, kind in LEGACY_KINDS.items():
        assert artifact_kind(legacy / rel) == kind, rel
        obj = load_artifact(legacy / rel)
        assert isinstance(obj, want_type[kind[0]]), (rel, type(obj))
        if kind == ("model", "slide"):
            assert isinstance(obj, SlideModel) and obj.head.name in ("abmil", "mean-mlp")
    assert artifact_kind(legacy / "store.zarr") == (None, None) and artifact_kind(legacy / "crops") == (None, None)
