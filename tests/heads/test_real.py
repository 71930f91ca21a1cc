"""Every head on real AMi-Br embeddings (efficientnet_lite0), and predict on new crops extracted on the fly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.app.predict import predict
from mito.heads import HEAD_NAMES, FitConfig, HeadError, fit_head, load_head, select_features
from mito.store import open_store

Z1RGB = "efficientnet_lite0:z1:rgb"
QUICK = {"mlp": {"epochs": 20}, "linear": {"epochs": 20}, "lightgbm": {"n_estimators": 40}}


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_each_head_trains_saves_loads_predicts_identically(name: str, amibr_store: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    m = fit_head(
        FitConfig(
            store=str(amibr_store),
            out=str(out),
            task="mitosis",
            head=name,
            split_column="split",
            features=[Z1RGB, "efficientnet_lite0:z2:rgb"],
            head_params={**QUICK.get(name, {}), "noise": 0.5},
        )
    )
    assert m["n_test"] > 0 and 0 <= m["balanced_accuracy"] <= 1 and m["train_seconds"] < 30
    a = predict(out, store=amibr_store)
    b = predict(out, store=amibr_store)
    pd.testing.assert_frame_equal(a, b)  # noise is for training only
    with open_store(amibr_store) as s:
        X = select_features(s, [Z1RGB, "efficientnet_lite0:z2:rgb"])
    head = load_head(out)
    if name == "knn":  # exact by construction (rounded float64 distances), whatever the batch, threads or BLAS
        np.testing.assert_array_equal(head.predict_proba(X), a[["p_Atypical", "p_Normal"]].to_numpy())
    np.testing.assert_allclose(head.predict_proba(X), a[["p_Atypical", "p_Normal"]].to_numpy(), rtol=1e-6)
    assert (a["pred"] == head.predict(X)).all()


def test_grouped_split_on_real_store_never_leaks(amibr_store: Path) -> None:
    m = fit_head(FitConfig(store=str(amibr_store), head="logreg", features=[Z1RGB], val_fraction=0.25, test_fraction=0.25))
    assert m["groups_shared_between_sides"] == 0 and m["n_val"] > 0 and m["n_test"] > 0


def test_predict_new_tiles_extracts_like_the_store(amibr_store: Path, amibr_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    fit_head(FitConfig(store=str(amibr_store), out=str(model), head="logreg", features=[Z1RGB, "efficientnet_lite0:z1:gray"]))
    new = tmp_path / "new_tiles"
    picked = sorted((amibr_dir / "Atypical").glob("*.jpg"))[:2] + sorted((amibr_dir / "Normal").glob("*.jpg"))[:2]
    for f in picked:
        (new / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, new / f.parent.name / f.name)
    fresh = predict(model, source=str(new), out_csv=tmp_path / "p.csv", device="cpu")
    assert len(fresh) == 4 and list(fresh.columns) == ["tile_id", "path", "label", "split", "pred", "p_Atypical", "p_Normal"]
    assert set(fresh["split"]) == {"unseen"}  # copies in another folder: not the files the model was fitted on
    assert sorted(fresh["label"]) == ["Atypical", "Atypical", "Normal", "Normal"]
    stored = predict(model, store=amibr_store)
    assert set(stored["split"]) == {"train", "val", "test"}
    key = lambda df: df["path"].map(lambda p: Path(p).name)  # noqa: E731
    joined = fresh.assign(name=key(fresh)).merge(stored.assign(name=key(stored)), on="name", suffixes=("", "_store"))
    assert len(joined) == 4
    np.testing.assert_allclose(joined["p_Atypical"], joined["p_Atypical_store"], atol=2e-3)
    assert (joined["pred"] == joined["pred_store"]).all()


def test_model_refuses_store_with_other_preprocessing(amibr_store: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    fit_head(FitConfig(store=str(amibr_store), out=str(model), head="knn", features=[Z1RGB]))
    other = tmp_path / "other.zarr"
    shutil.copytree(amibr_store, other)
    with open_store(other, "a") as s:
        s.meta["variants"][Z1RGB]["preprocessing"]["input_size"] = 224
        s.record("variants", s.meta["variants"])
    with pytest.raises(HeadError, match="preprocessing differs in input_size"):
        predict(model, store=other)
