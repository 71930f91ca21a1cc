"""Few-shot learning curves: the draws, their CI, and mito bench --few-shot end to end on the small real store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from mito.bench.cv import make_folds
from mito.bench.fewshot import draw_fold_ci, draw_shots, parse_shots, shot_folds
from mito.cli import app
from mito.core.metrics import bootstrap_ci

runner = CliRunner()


def _labels(n_c: int = 12) -> np.ndarray:
    return np.array(["A"] * 120 + ["B"] * 50 + ["C"] * n_c + [None] * 18, dtype=object)


def test_draws_are_stratified_seeded_and_nested() -> None:
    y = _labels()
    train = np.flatnonzero(y != None)[::2]  # noqa: E711 (elementwise on an object array)
    rows, short = draw_shots(train, y, 5, seed=0, fold=0, draw=0)
    assert sorted(pd.Series(y[rows]).value_counts().items()) == [("A", 5), ("B", 5), ("C", 5)]
    assert set(rows) <= set(train) and short == {}
    assert np.array_equal(rows, draw_shots(train, y, 5, seed=0, fold=0, draw=0)[0])  # same seed, same tiles
    for other in ({"seed": 0, "fold": 0, "draw": 1}, {"seed": 1, "fold": 0, "draw": 0}, {"seed": 0, "fold": 1, "draw": 0}):
        assert not np.array_equal(rows, draw_shots(train, y, 5, **other)[0]), other
    small = draw_shots(train, y, 2, seed=0, fold=0, draw=0)[0]
    assert set(small) < set(rows)  # nested: a draw at K=2 is part of the same draw at K=5
    big, short = draw_shots(train, y, 10, seed=0, fold=0, draw=0)
    counts = pd.Series(y[big]).value_counts()
    assert counts["A"] == counts["B"] == 10 and counts["C"] == 6  # C has only 6 training tiles: all of them
    assert short == {"C": 6} and set(train[y[train] == "C"]) <= set(big)


@pytest.mark.parametrize("cv", ["kfold", "split"])
def test_shot_folds_never_touch_validation_or_test_tiles(cv: str) -> None:
    y = _labels(40)
    rng = np.random.default_rng(0)
    tiles = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(len(y))],
            "group": rng.integers(0, 20, len(y)).astype(str),
            "split": np.where(np.arange(len(y)) % 4 == 0, "test", "train"),
        }
    )
    plan = make_folds(tiles, pd.Series(y), n_folds=3, cv=cv, seed=0)
    fits, short = shot_folds(plan.folds, y, 4, n_draws=3, seed=0)
    assert len(fits) == 3 * 3 and short == {}
    by_index = {f.index: f for f in plan.folds}
    for _d, f in fits:
        orig = by_index[f.index]
        assert set(f.train) <= set(orig.train)
        assert not set(f.train) & set(orig.val) and not set(f.train) & set(orig.test)
        assert len(f.val) == 0 and np.array_equal(f.test, orig.test)
        assert pd.Series(y[f.train]).value_counts().to_dict() == {"A": 4, "B": 4, "C": 4}
    assert len({tuple(f.train) for d, f in fits if f.index == 0}) == 3  # three different draws
    everything, short = shot_folds(plan.folds, y, 500, n_draws=3, seed=0)
    assert len(everything) == 3  # K covers every class: the draws would all be equal, so one
    assert all(np.array_equal(f.train, by_index[f.index].train) for _, f in everything)
    assert set(short) == {"A", "B", "C"} and short["C"] < 40


def test_one_draw_ci_is_the_tile_bootstrap() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    proba = np.clip(np.eye(2)[y] * 0.4 + rng.random((60, 2)) * 0.6, 0, 1)
    fold = np.repeat([0, 1, 2], 20)
    ours = draw_fold_ci(y, proba, fold, np.arange(60), np.zeros(3, int), "balanced_accuracy", n_boot=300, seed=4)
    assert ours == pytest.approx(bootstrap_ci(y, proba, [0, 1], "balanced_accuracy", fold=fold, tile=np.arange(60), n_boot=300, seed=4))


def test_draw_fold_ci_matches_brute_force() -> None:
    """Two draws x two fits each, all four scoring the same 30 test tiles (a shared test split)."""
    rng = np.random.default_rng(2)
    n, n_boot = 30, 200
    y = np.tile(rng.integers(0, 2, n), 4)
    proba = rng.random((4 * n, 2))
    fit, tile, draw_of_fit = np.repeat(np.arange(4), n), np.tile(np.arange(n), 4), np.array([0, 0, 1, 1])
    lo, hi = draw_fold_ci(y, proba, fit, tile, draw_of_fit, "balanced_accuracy", n_boot=n_boot, seed=7)
    r = np.random.default_rng(7)
    picks = r.integers(0, n, (n_boot, n))
    chosen = r.integers(0, 2, (n_boot, 2))
    values = []
    for b in range(n_boot):
        per_fit = []
        for j in range(4):
            rows = j * n + picks[b]
            yt = y[rows]
            per_fit.append(balanced_accuracy_score(yt, proba[rows].argmax(1)) if len(set(yt)) > 1 else np.nan)
        per_draw = [np.nanmean(per_fit[0:2]), np.nanmean(per_fit[2:4])]
        values.append(np.mean([per_draw[c] for c in chosen[b]]))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert lo < hi


def test_parse_shots() -> None:
    assert parse_shots("32, 1,2,all,2") == [1, 2, 32, "all"]
    assert parse_shots(["all"]) == ["all"]
    for bad in ("0", "1,x", "-2", "1.5", ""):
        with pytest.raises(ValueError, match="labels per class"):
            parse_shots(bad)


@pytest.fixture(scope="module")
def fewshot_out(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fewshot") / "bench"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(amibr_store),
            "--task",
            "mitosis",
            "--out",
            str(out),
            "--features",
            "efficientnet_lite0:z1:rgb",
            "--heads",
            "linear,knn",
            "--folds",
            "3",
            "--jobs",
            "1",
            "--n-boot",
            "100",
            "--no-umap",
            "--few-shot",
            "1,2,16,all",
            "--few-shot-draws",
            "2",
            "--param",
            "linear.epochs=20",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "labelled tiles per class" in r.output
    return out


def test_bench_few_shot_rows_and_learning_curve(fewshot_out: Path) -> None:
    df = pd.read_csv(fewshot_out / "leaderboard.csv", dtype={"shots": str})
    assert len(df) == 2 * 4 and sorted(df["shots"].unique()) == ["1", "16", "2", "all"]
    main = df[df["shots"] == "all"]
    assert sorted(main["rank"]) == [1, 2] and (main["kind"] == "head").all()
    few = df[df["shots"] != "all"]
    assert (few["kind"] == "few-shot").all() and (few["n_val"] == 0).all()
    for k in (1, 2):
        rows = few[few["shots"] == str(k)]
        assert (rows["n_train"] == 2 * k).all() and (rows["draws"] == 2).all()  # two classes, exactly K each
    k16 = few[few["shots"] == "16"]  # 48 crops: every fold's training part has fewer than 16 per class
    assert (k16["draws"] == 1).all() and (k16["n_train"] == main["n_train"].iloc[0]).all()
    assert (few["ci_low"] <= few["balanced_accuracy"] + 1e-9).all() and (few["balanced_accuracy"] <= few["ci_high"] + 1e-9).all()
    assert few["ece"].between(0, 1).all() and few["brier"].between(0, 2).all()  # calibration columns as for the normal rows
    doc = json.loads((fewshot_out / "leaderboard.json").read_text())
    rows16 = [r for r in doc["rows"] if r["shots"] == "16"]
    assert rows16 and all(r["short_classes"] for r in rows16) and "fewer than 16" in rows16[0]["budget"]
    assert doc["meta"]["few_shot"]["draws"] == 2
    assert all(len(r["per_fold"]) == 2 * 3 for r in doc["rows"] if r["shots"] in ("1", "2"))
    with np.load(fewshot_out / "predictions.npz") as z:
        rid = next(r["row_id"] for r in doc["rows"] if r["shots"] == "1")
        assert set(np.unique(z[f"{rid}.draw"])) == {0, 1}
    assert (fewshot_out / "mitosis_fewshot.png").stat().st_size > 5000
    page = (fewshot_out / "report.html").read_text()
    assert "How many labels" in page and "mitosis_fewshot.png" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--few-shot", "0,1"], "--few-shot: labels per class"),
        (["--few-shot", "1,two"], "--few-shot: labels per class"),
        (["--few-shot", ","], "--few-shot: give at least one"),
        (["--few-shot", "1", "--few-shot-draws", "0"], "--few-shot-draws: "),
    ],
)
def test_bad_few_shot_is_one_line(args: list[str], message: str, amibr_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["bench", "--store", str(amibr_store), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1, r.output
    assert not (tmp_path / "o").exists()


def test_zero_shot_rows_are_a_horizontal_line(fewshot_out: Path, tmp_path: Path) -> None:
    from mito.bench import load_leaderboard
    from mito.bench.fewshot import curves
    from mito.report.fewshot import learning_curve_figure, report_section

    rows = load_leaderboard(fewshot_out).rows
    zs = rows[rows["shots"] == "all"].iloc[[0]].assign(head="zero-shot", kind="zero-shot", balanced_accuracy=0.61, row_id="zs")
    both = pd.concat([rows, zs], ignore_index=True)
    assert set(curves(both)["head"]) == {"linear", "knn"}  # a zero-shot row is no curve point
    assert learning_curve_figure(both, "balanced_accuracy", tmp_path / "c.png", 0.5).stat().st_size > 5000
    page = report_section(both, "balanced_accuracy", tmp_path / "d.png", 0.5, lambda p, alt: f"<img {alt}>")
    assert "zero-shot efficientnet_lite0: 0.610" in page and "<img few-shot learning curve>" in page
