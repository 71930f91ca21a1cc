"""fit-head --feature-search: forward selection of variants on inner folds of the training rows, never the test rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.heads import search as search_mod
from mito.heads.train import fit_head, make_fit_config
from tests.heads.conftest import amibr_tiles, synthetic_store

KEYS = {"fakenet:z1:rgb": 16, "fakenet:z2:rgb": 16, "fakenet:z1:gray": 16}


@pytest.fixture(scope="module")
def three_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~400 real AMi-Br tiles (labels, slides, published split) with three synthetic variants of decreasing signal."""
    return synthetic_store(tmp_path_factory.mktemp("search") / "s.zarr", amibr_tiles(400), KEYS)


def _cfg(store: Path, **kw: object):  # type: ignore[no-untyped-def]
    base = {"store": str(store), "head": "logreg", "feature_search": True, "search_max": 2, "split_column": None, "seed": 3}
    return make_fit_config(**{**base, **kw})


def test_search_fits_only_on_training_rows(three_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    real = search_mod.fit_and_score

    def spy(model, data, split, **kw):  # type: ignore[no-untyped-def]
        seen.append(np.concatenate([np.asarray(split[p]) for p in ("train", "val", "test")]))
        return real(model, data, split, **kw)

    monkeypatch.setattr(search_mod, "fit_and_score", spy)
    m = fit_head(_cfg(three_store, out=None))
    fs = m["feature_search"]
    assert seen, "the search fitted nothing"
    from mito.heads.split import make_split
    from mito.store import open_store

    with open_store(three_store) as s:  # the same split fit-head made (same seed): the search never touched its test rows
        labels = s.tiles["mitosis"]
        side = make_split(s.tiles, labels, labels.notna().to_numpy(), None, "group", 0.2, 0.2, 3)
    allowed = np.flatnonzero((side == "train") | (side == "val"))
    assert len(np.flatnonzero(side == "test")) == m["n_test"] > 0
    for rows in seen:
        assert np.isin(rows, allowed).all()
    assert fs["n_rows"] == len(allowed)
    assert 1 <= len(fs["selected"]) <= 2 and m["features"] == fs["selected"]
    assert set(fs["path"][0]["scores"]) == set(KEYS)  # every complete variant is a candidate at step 1


def test_selected_set_recorded_and_reproducible(three_store: Path, tmp_path: Path) -> None:
    a = fit_head(_cfg(three_store, out=str(tmp_path / "a")))
    b = fit_head(_cfg(three_store, out=str(tmp_path / "b")))
    assert a["feature_search"]["selected"] == b["feature_search"]["selected"]
    assert a["feature_search"]["path"] == b["feature_search"]["path"]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["features"] == a["feature_search"]["selected"] == config["feature_search"]["selected"]
    vs = a["feature_search"]["vs_default"]
    assert vs["default"] == ["fakenet:z2:rgb"] and vs["on"] == "test" and 0 < vs["p_value"] <= 1  # fit-head's default: zoom 2
    assert vs["metric_a"] == pytest.approx(a["balanced_accuracy"], abs=1e-4)


def test_features_limit_the_candidates(three_store: Path) -> None:
    m = fit_head(_cfg(three_store, features=["fakenet:z2:rgb", "fakenet:z1:gray"], search_max=1))
    fs = m["feature_search"]
    assert set(fs["path"][0]["scores"]) == {"fakenet:z2:rgb", "fakenet:z1:gray"}
    assert len(fs["selected"]) == 1 and fs["selected"][0] in ("fakenet:z2:rgb", "fakenet:z1:gray")


def test_forward_select_stops_without_gain() -> None:
    table = {("a",): 0.6, ("b",): 0.7, ("b", "a"): 0.703, ("c",): 0.5, ("b", "c"): 0.65, ("b", "a", "c"): 0.69}
    chosen, path = search_mod.forward_select(lambda ks: table[tuple(ks)], ["a", "b", "c"], 3, 0.005)
    assert chosen == ["b"] and [p["added"] for p in path] == ["b", None]
    chosen, _ = search_mod.forward_select(lambda ks: table[tuple(ks)], ["a", "b", "c"], 3, 0.001)
    assert chosen == ["b", "a"]  # then c loses 0.013: stop at 2 below max_size 3


def test_cli_prints_selected_set_and_paired_line(three_store: Path, tmp_path: Path) -> None:
    args = ["fit-head", "--store", str(three_store), "--out", str(tmp_path / "m"), "--head", "logreg", "--split-column", "none"]
    r = CliRunner().invoke(app, [*args, "--feature-search", "--set", "search_max=2"])
    assert r.exit_code == 0, r.output
    assert "selected features: fakenet:" in r.output
    assert "selected vs default (fakenet:z2:rgb) on test" in r.output and "paired bootstrap p =" in r.output


@pytest.mark.parametrize(
    "bad", [["--set", "search_folds=1"], ["--set", "search_max=0"], ["--features", "fakenet:z9:rgb"], ["--level", "slide"]]
)
def test_cli_bad_value_is_one_line(three_store: Path, tmp_path: Path, bad: list[str]) -> None:
    args = ["fit-head", "--store", str(three_store), "--out", str(tmp_path / "m"), "--head", "logreg", "--feature-search", *bad]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_paired_bootstrap_delta() -> None:
    from mito.core.metrics import paired_bootstrap_delta

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good = np.eye(2)[np.where(rng.random(300) < 0.85, y, 1 - y)]
    poor = np.eye(2)[np.where(rng.random(300) < 0.6, y, 1 - y)]
    same = paired_bootstrap_delta(y, good, good)
    assert same["delta"] == 0 and same["p_value"] == 1
    better = paired_bootstrap_delta(y, good, poor, n_boot=500)
    assert better["delta"] > 0.15 and better["ci_low"] > 0 and better["p_value"] < 0.01
    assert paired_bootstrap_delta(y, poor, good, n_boot=500)["delta"] == pytest.approx(-better["delta"])
