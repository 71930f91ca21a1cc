"""Ensembles: one model directory, probabilities = mean of the members', save/load/predict round trip, K validated;
and fit-head's domain-shift split (--test-group)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.heads import HeadError, load_model, make_fit_config
from mito.heads.base import load_head as load_bare_head
from mito.heads.ensemble import Ensemble, load_ensemble, parse_ensemble
from mito.store import open_store

runner = CliRunner()


def _one_line(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert text in result.output and "Traceback" not in result.output
    assert len([x for x in result.output.splitlines() if x.strip()]) == 1, result.output


@pytest.mark.parametrize("value", ["0", "1", "-3", "101", "abc", "folds:1", "folds:x", "seeds"])
def test_bad_ensemble_sizes_are_refused(value: str) -> None:
    with pytest.raises(HeadError, match="--ensemble"):
        parse_ensemble(value)


def test_ensemble_sizes_parse() -> None:
    assert parse_ensemble(None) is None and parse_ensemble("") is None
    assert parse_ensemble("5").k == 5 and parse_ensemble("5").mode == "seeds"
    assert parse_ensemble("folds").k == 5 and parse_ensemble("FOLDS:3").mode == "folds"


@pytest.fixture(scope="module")
def ens_model(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ens") / "model"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(amibr_store),
            "--out",
            str(out),
            "--head",
            "mlp",
            "--hidden",
            "16",
            "--epochs",
            "4",
            "--features",
            "efficientnet_lite0:z1:rgb",
            "--ensemble",
            "3",
            "--seed",
            "7",
            "--standardize",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "ensemble of 3 heads" in r.output
    return out


def test_ensemble_is_one_model_dir_whose_probabilities_are_the_members_mean(ens_model: Path, amibr_store: Path) -> None:
    doc = json.loads((ens_model / "head.json").read_text())
    assert doc["head"] == "ensemble" and [m["dir"] for m in doc["members"]] == ["member0", "member1", "member2"]
    assert [m["seed"] for m in doc["members"]] == [7, 8, 9]
    model = load_model(ens_model)
    assert isinstance(model.head, Ensemble) and len(model.head.members) == 3
    with open_store(amibr_store) as s:
        X = s.read(["efficientnet_lite0:z1:rgb"]).astype(np.float32)
    by_hand = np.mean(
        [load_bare_head(ens_model / f"member{i}").predict_proba(model.pipeline.transform(X.copy())) for i in range(3)], axis=0
    )
    got = model.predict_proba(X)
    np.testing.assert_allclose(got, by_hand, rtol=0, atol=1e-12)
    singles = [load_bare_head(ens_model / f"member{i}").predict_proba(model.pipeline.transform(X.copy())) for i in range(3)]
    assert not np.allclose(singles[0], singles[1])  # the seeds made different heads
    # the saved metrics are the averaged probabilities' metrics on the test rows
    m = json.loads((ens_model / "metrics.json").read_text())
    assert m["ensemble"]["members"] == 3 and len(m["ensemble"]["member_balanced_accuracy"]) == 3
    assert json.loads((ens_model / "config.json").read_text())["head"]["params"]["head"] == "mlp"


def test_ensemble_predict_round_trip(ens_model: Path, amibr_store: Path, tmp_path: Path) -> None:
    from mito.heads import predict

    a = predict(ens_model, store=amibr_store, out_csv=tmp_path / "a.csv")
    again = load_ensemble(ens_model)  # load twice: identical predictions
    model = load_model(ens_model)
    with open_store(amibr_store) as s:
        X = s.read(["efficientnet_lite0:z1:rgb"]).astype(np.float32)
    p = model.predict_proba(X)
    np.testing.assert_allclose(a[["p_Atypical", "p_Normal"]].to_numpy(), p, atol=1e-6)
    np.testing.assert_array_equal(
        again.predict_proba(model.pipeline.transform(X.copy())), model.head.predict_proba(model.pipeline.transform(X.copy()))
    )
    r = runner.invoke(app, ["predict", "--model", str(ens_model), "--store", str(amibr_store), "--out", str(tmp_path / "b.csv"), "-q"])
    assert r.exit_code == 0, r.output
    b = pd.read_csv(tmp_path / "b.csv")
    # the CSV keeps 6 significant digits (one policy for every predictions CSV); the returned frame keeps full precision
    np.testing.assert_allclose(b["p_Atypical"].to_numpy(), a["p_Atypical"].to_numpy(), rtol=5e-6, atol=0)


def test_a_changed_member_is_refused(ens_model: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(ens_model, copy)
    f = copy / "member1" / "head.json"
    f.write_text(f.read_text().replace('"mlp"', '"mlp" ', 1))
    with pytest.raises(HeadError, match="member1/head.json was changed"):
        load_model(copy)
    shutil.rmtree(copy / "member2")
    doc = json.loads((copy / "head.json").read_text())
    doc["members"] = doc["members"][:1] + doc["members"][2:]
    (copy / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadError, match="member2"):
        load_model(copy)


def test_fold_ensemble_on_a_domain_shift_split(amibr_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "folds"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(amibr_store),
            "--out",
            str(out),
            "--head",
            "logreg",
            "--features",
            "efficientnet_lite0:z1:rgb",
            "--ensemble",
            "folds:3",
            "--test-group",
            "dataset=TUPAC16",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    with open_store(amibr_store) as s:
        site = s.tiles["dataset"].astype(str)
    assert m["n_test"] == int((site == "TUPAC16").sum()) and m["n_train"] + m["n_val"] == int((site == "MIDOG21").sum())
    assert "test on dataset = TUPAC16" in m["split"] and m["ensemble"]["mode"] == "folds"
    assert len(load_model(out).head.members) == 3
    pred = runner.invoke(app, ["predict", "--model", str(out), "--store", str(amibr_store), "--out", str(tmp_path / "p.csv"), "-q"])
    assert pred.exit_code == 0, pred.output


def test_cli_refusals(amibr_store: Path, tmp_path: Path) -> None:
    base = ["fit-head", "--store", str(amibr_store), "--head", "logreg", "--features", "efficientnet_lite0:z1:rgb"]
    _one_line(runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--ensemble", "0"]), "between 2 and 100")
    _one_line(
        runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--ensemble", "folds", "--standardize"]),
        "cannot share one --standardize/--pca",
    )
    _one_line(runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--test-group", "dataset"]), "COLUMN=VALUE")
    _one_line(
        runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--test-group", "dataset=GTEx"]), "dataset='GTEx' has no labelled tile"
    )
    _one_line(
        runner.invoke(app, [*base, "--out", str(tmp_path / "e"), "--test-group", "dataset=TUPAC16", "--split-column", "split"]), "not both"
    )
    _one_line(runner.invoke(app, [*base, "--out", str(tmp_path / "f"), "--train-groups", "MIDOG21"]), "test_group")
    assert not any((tmp_path / x).exists() for x in "abcdef")


def test_fit_config_validates_ensemble() -> None:
    with pytest.raises(HeadError, match="--ensemble"):
        make_fit_config(store="s", ensemble="many")
    with pytest.raises(HeadError, match="changes nothing for knn"):  # K identical members
        make_fit_config(store="s", head="knn", ensemble="3")
    assert make_fit_config(store="s", head="knn", ensemble="folds:3").ensemble == "folds:3"
