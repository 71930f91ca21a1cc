"""mito bench --feature-search: a row per head whose variants are forward-selected inside each fold on that fold's
training rows only (never its val or test rows), then fitted and scored on the fold like every head row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mito.bench import BenchConfig, BenchError, load_leaderboard, run_bench, save_leaderboard, search_rows
from mito.bench.leaderboard import Leaderboard
from mito.cli import app
from mito.heads import search as search_mod

KEYS = ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z2:gray", "efficientnet_lite0:z1:gray"]


def _cfg(store: Path, **kw: Any) -> BenchConfig:
    base: dict[str, Any] = {
        "store": str(store),
        "tasks": ["mitosis"],
        "features": KEYS,
        "heads": ["logreg"],
        "n_folds": 2,
        "n_jobs": 1,
        "n_boot": 50,
        "feature_search": True,
        "search_max": 2,
        "search_folds": 2,
    }
    return BenchConfig(**{**base, **kw})


@dataclass
class Spied:
    """What the search fitted: the fold of each search job, and per job the rows searched on and every inner fit's rows
    (train + val + test), keyed by the job's number (shift folds reuse the in-domain folds' indices)."""

    folds: list[Any] = field(default_factory=list)
    fits: dict[int, list[np.ndarray]] = field(default_factory=dict)
    searched_on: dict[int, np.ndarray] = field(default_factory=dict)


def _run_spied(cfg: BenchConfig) -> tuple[Leaderboard, Spied]:
    spied = Spied()
    real_job, real_fit, real_search = search_rows.search_fit_one, search_mod.fit_and_score, search_rows.feature_search

    def job(store_path, candidates, head, params, fold, *a, **kw):  # type: ignore[no-untyped-def]
        spied.folds.append(fold)
        return real_job(store_path, candidates, head, params, fold, *a, **kw)

    def search(store, candidates, labels, rows, *a, **kw):  # type: ignore[no-untyped-def]
        spied.searched_on[len(spied.folds) - 1] = np.asarray(rows)
        return real_search(store, candidates, labels, rows, *a, **kw)

    def fit(model, data, split, **kw):  # type: ignore[no-untyped-def]
        rows = np.concatenate([np.asarray(split[p]) for p in ("train", "val", "test")])
        spied.fits.setdefault(len(spied.folds) - 1, []).append(rows)
        return real_fit(model, data, split, **kw)

    with pytest.MonkeyPatch.context() as mp:  # n_jobs=1: the fold jobs run in this process, one after the other
        mp.setattr(search_rows, "search_fit_one", job)
        mp.setattr(search_rows, "feature_search", search)
        mp.setattr(search_mod, "fit_and_score", fit)
        lb = run_bench(cfg, progress=False)
    return lb, spied


@pytest.fixture(scope="module")
def searched(amibr_store: Path) -> Iterator[tuple[Leaderboard, Spied]]:
    yield _run_spied(_cfg(amibr_store))


def _search_row(lb: Leaderboard) -> Any:
    rows = lb.rows[lb.rows["kind"] == "search"]
    assert len(rows) == 1, lb.rows[["features", "head", "kind"]]
    return rows.iloc[0]


def _check_no_test_row_searched(lb: Leaderboard, spied: Spied) -> None:
    assert spied.folds and spied.fits, "the search fitted nothing"
    for i, f in enumerate(spied.folds):
        assert np.array_equal(np.sort(spied.searched_on[i]), np.sort(f.train))  # the fold's training rows, all of them
        assert spied.fits[i], f"fold {f.index}: no inner fit"
        for rows in spied.fits[i]:
            assert np.isin(rows, f.train).all()
            assert not np.isin(rows, f.test).any() and not np.isin(rows, f.val).any()


def test_search_never_fits_or_scores_a_test_or_val_row(searched: tuple[Leaderboard, Spied]) -> None:
    lb, spied = searched
    assert lb.meta["tasks"]["mitosis"]["cv"] == "split"
    _check_no_test_row_searched(lb, spied)
    assert sorted(f.index for f in spied.folds) == [0, 1]
    # each fold's inner fits: at most max_fits (3 candidates, 2 inner folds, 2 steps), at least one step's
    assert 2 * 3 <= min(len(v) for v in spied.fits.values()) <= search_mod.max_fits(3, 2, 2)


def test_kfold_folds_search_their_own_training_rows(amibr_store: Path) -> None:
    lb, spied = _run_spied(_cfg(amibr_store, cv="kfold"))
    assert lb.meta["tasks"]["mitosis"]["cv"] == "kfold"
    _check_no_test_row_searched(lb, spied)
    assert sorted(f.index for f in spied.folds) == [0, 1]
    a, b = (set(spied.searched_on[i].tolist()) for i in (0, 1))
    assert a != b  # each fold searched on its own rows


def test_shift_column_adds_a_search_row_per_held_out_group(amibr_store: Path) -> None:
    lb, spied = _run_spied(_cfg(amibr_store, search_max=1, shift_column="dataset"))
    _check_no_test_row_searched(lb, spied)  # a held-out group's fold tests on that group: never searched on
    rows = lb.rows[lb.rows["kind"] == "search"]
    groups = sorted(lb.meta["shift"]["tasks"]["mitosis"])
    assert len(groups) == 2 and sorted(rows["held_out"]) == ["", *groups]
    assert len(spied.folds) == 2 * (1 + len(groups))  # every fold of every plan searched once
    shifted = rows[rows["held_out"] != ""]
    assert all(f"trained on dataset other than {g}" in b for g, b in zip(shifted["held_out"], shifted["budget"]))
    assert shifted["gap"].notna().all()


def test_search_row_records_each_folds_selected_set(searched: tuple[Leaderboard, Spied]) -> None:
    lb, spied = searched
    row = _search_row(lb)
    assert row["features"] == "search" and row["head"] == "logreg" and row["shots"] == "all"
    assert list(row["keys"]) == KEYS  # the candidates
    found = row["search"]
    assert [s["fold"] for s in found] == [0, 1]
    for s in found:
        assert 1 <= len(s["selected"]) <= 2 and set(s["selected"]) <= set(KEYS)
        assert set(s["path"][0]["scores"]) == set(KEYS)  # every candidate scored at step 1
        assert s["n_rows"] == len(spied.searched_on[s["fold"]])  # in-domain jobs only: job i is fold i
        assert all(k.split(":", 1)[1] in row["budget"] for k in s["selected"])
    assert lb.meta["feature_search"]["candidates"] == KEYS and lb.meta["feature_search"]["search_max"] == 2
    assert int(row["rank"]) >= 1 and row["n_folds"] == 2


def test_search_row_predicts_every_test_row(searched: tuple[Leaderboard, Spied]) -> None:
    lb, spied = searched
    p = lb.predictions[_search_row(lb)["row_id"]]
    for f in spied.folds:
        got = p["row"][p["fold"] == f.index]
        assert np.array_equal(np.sort(got), np.sort(f.test))
    assert p["proba"].shape == (len(p["row"]), 2) and np.allclose(p["proba"].sum(axis=1), 1, atol=1e-3)
    row = _search_row(lb)
    best = lb.rows[lb.rows["rank"] == 1].iloc[0]
    if best["row_id"] != row["row_id"]:  # paired with #1 like every row
        assert np.isfinite(row["p_vs_best"]) and np.isfinite(row["delta_vs_best"])


def test_search_row_saves_loads_and_trains_from_bench(searched: tuple[Leaderboard, Spied], tmp_path: Path) -> None:
    lb, _ = searched
    out = save_leaderboard(lb, tmp_path / "lb")
    back = load_leaderboard(out)
    rid = _search_row(lb)["row_id"]
    got = back.rows.set_index("row_id").loc[rid]
    assert got["kind"] == "search" and [s["selected"] for s in got["search"]] == [s["selected"] for s in _search_row(lb)["search"]]
    assert rid in back.predictions
    recipe = yaml.safe_load((out / "rows" / f"{rid}.yaml").read_text())
    assert recipe["feature_search"] is True and recipe["features"] == KEYS and recipe["search_max"] == 2
    r = CliRunner().invoke(app, ["fit-head", "--from-bench", str(out), "--row", rid, "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "selected features: efficientnet_lite0:" in r.output


def test_one_candidate_is_refused(amibr_store: Path) -> None:
    with pytest.raises(BenchError, match="at least two candidate variants"):
        run_bench(_cfg(amibr_store, features=[KEYS[0]]), progress=False)


def test_cli_feature_search(amibr_store: Path, tmp_path: Path) -> None:
    args = ["bench", "--store", str(amibr_store), "--out", str(tmp_path / "b"), "--heads", "logreg", "--features", ",".join(KEYS)]
    args += ["--folds", "2", "--jobs", "1", "--n-boot", "20", "--no-umap", "--feature-search", "--set", "search_max=1"]
    r = CliRunner().invoke(app, [*args, "--set", "search_folds=2"])
    assert r.exit_code == 0, r.output
    assert "search row (mitosis, logreg, #" in r.output
    lb = load_leaderboard(tmp_path / "b")
    row = _search_row(lb)
    assert all(len(s["selected"]) == 1 for s in row["search"])  # search_max=1 reached the run
    assert lb.meta["config"]["feature_search"] is True


@pytest.mark.parametrize("bad", [["--set", "search_max=0"], ["--set", "search_folds=1"], ["--level", "slide", "--task", "mitosis"]])
def test_cli_bad_search_value_is_one_line(amibr_store: Path, tmp_path: Path, bad: list[str]) -> None:
    args = ["bench", "--store", str(amibr_store), "--out", str(tmp_path / "b"), "--heads", "logreg", "--feature-search", *bad]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "b").exists()
