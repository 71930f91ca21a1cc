"""Domain shift as a split: leave-one-group-out folds, skipped groups, shift rows with their gap in bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.bench import BenchError
from mito.bench.shift import add_gaps, shift_plans
from mito.cli import app

runner = CliRunner()


def _tiles(sites: dict[str, int], per_slide: int = 5, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Tiles from several sites (``dataset``), ``sites[name]`` slides each, both classes on every slide."""
    rng = np.random.default_rng(seed)
    rows = []
    for site, n_slides in sites.items():
        for s in range(n_slides):
            for i in range(per_slide):
                label = "Atypical" if i % 2 == 0 else "Normal"
                rows.append(
                    {
                        "tile_id": f"{site}{s}_{i}",
                        "group": f"{site}-slide{s}",
                        "dataset": site,
                        "split": rng.choice(["train", "test"]),
                        "mitosis": label,
                    }
                )
    df = pd.DataFrame(rows)
    return df, df["mitosis"].astype(object)


def test_every_group_is_held_out_once_and_never_trained_on() -> None:
    df, y = _tiles({"A": 6, "B": 7, "C": 5})
    plans, skipped = shift_plans(df, y, "dataset", n_folds=3, seed=0)
    assert sorted(plans) == ["A", "B", "C"] and skipped == {}
    site = df["dataset"].to_numpy()
    for g, plan in plans.items():
        assert plan.mode == "shift" and len(plan.folds) == 3
        for f in plan.folds:
            assert set(site[f.test]) == {g}  # test: the held-out group, all of it
            assert len(f.test) == int((site == g).sum())
            assert g not in set(site[f.train]) | set(site[f.val])  # never trained or early-stopped on
            assert set(site[f.train]) == {"A", "B", "C"} - {g}
            slides = lambda rows: set(df["group"].to_numpy()[rows])  # noqa: E731
            assert not slides(f.train) & slides(f.val)
        vals = np.concatenate([f.val for f in plan.folds])  # the k early-stopping parts cover the training groups once
        assert len(vals) == len(set(vals)) == int((site != g).sum())
    assert len({p.fingerprint for p in plans.values()}) == 3


def test_one_class_or_too_small_groups_are_skipped_with_a_reason() -> None:
    df, y = _tiles({"A": 6, "B": 6, "C": 2})
    one_class = df.index[(df["dataset"] == "C") & (df["mitosis"] == "Atypical")]
    y = y.copy()
    y[one_class] = None  # C now only has Normal tiles
    plans, skipped = shift_plans(df, y, "dataset", n_folds=3, seed=0)
    assert sorted(plans) == ["A", "B"]
    assert list(skipped) == ["C"] and "only class 'Normal'" in skipped["C"] and "\n" not in skipped["C"]
    # a group whose held-out complement has too few slides for the folds is skipped too
    df2, y2 = _tiles({"A": 6, "B": 3})
    plans2, skipped2 = shift_plans(df2, y2, "dataset", n_folds=4, seed=0)
    assert list(plans2) == ["B"] and "holding out 'A'" in skipped2["A"] and "4 folds" in skipped2["A"]


def test_unusable_shift_columns_are_one_line_errors() -> None:
    df, y = _tiles({"A": 6})
    with pytest.raises(BenchError, match="has 1 value"):
        shift_plans(df, y, "dataset")
    with pytest.raises(BenchError, match="no shift column 'scanner'"):
        shift_plans(df, y, "scanner")
    df2, y2 = _tiles({"A": 2, "B": 2})
    with pytest.raises(BenchError, match="no group of 'dataset' can be held out"):
        shift_plans(df2, y2, "dataset", n_folds=5)


def test_gap_is_shift_minus_in_domain_of_the_same_model() -> None:
    rows = pd.DataFrame(
        [
            {
                "task": "t",
                "backbone": "b",
                "features": "f",
                "head": "mlp",
                "noise": 0.0,
                "held_out": "",
                "main_metric": "auroc",
                "auroc": 0.9,
            },
            {
                "task": "t",
                "backbone": "b",
                "features": "f",
                "head": "mlp",
                "noise": 0.0,
                "held_out": "X",
                "main_metric": "auroc",
                "auroc": 0.7,
            },
            {
                "task": "t",
                "backbone": "b",
                "features": "f",
                "head": "knn",
                "noise": 0.0,
                "held_out": "X",
                "main_metric": "auroc",
                "auroc": 0.6,
            },
        ]
    )
    out = add_gaps(rows)
    assert np.isnan(out["gap"][0]) and out["gap"][1] == pytest.approx(-0.2) and np.isnan(out["gap"][2])  # knn: no in-domain row


@pytest.fixture(scope="module")
def shift_bench(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shift") / "bench"
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
            "logreg,knn",
            "--folds",
            "3",
            "--jobs",
            "1",
            "--n-boot",
            "50",
            "--no-umap",
            "--shift-column",
            "dataset",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "tested on" in r.output.replace("\n", " ") or "tested" in r.output
    flat = " ".join(r.output.split())
    assert (
        "task mitosis, across dataset (each held out in turn): efficientnet_lite0 z1:rgb " in flat
        and " has the best mean balanced_accuracy held out, " in flat
    )
    return out


def test_bench_shift_rows_carry_held_out_group_and_gap(shift_bench: Path, amibr_store: Path) -> None:
    from mito.store import open_store

    df = pd.read_csv(shift_bench / "leaderboard.csv", keep_default_na=False)
    assert {"held_out", "gap"} <= set(df.columns)
    domain = df[df["held_out"] == ""]
    shift = df[df["held_out"] != ""]
    assert len(domain) == 2 and set(domain["cv"]) <= {"split", "kfold"}
    assert sorted(set(shift["held_out"])) == ["MIDOG21", "TUPAC16"] and len(shift) == 4 and set(shift["cv"]) == {"shift"}
    for _, r in shift.iterrows():  # gap = shift score - in-domain score of the same head, by hand
        ref = domain[(domain["head"] == r["head"]) & (domain["features"] == r["features"])]["balanced_accuracy"].iloc[0]
        assert float(r["gap"]) == pytest.approx(float(r["balanced_accuracy"]) - float(ref), abs=2e-4)
    assert (domain["gap"] == "").all()
    assert sorted(shift[shift["held_out"] == "TUPAC16"]["rank"]) == [1, 2] and sorted(domain["rank"]) == [1, 2]
    doc = json.loads((shift_bench / "leaderboard.json").read_text())
    with open_store(amibr_store) as s:
        site = s.tiles["dataset"].astype(str).to_numpy()
    preds = np.load(shift_bench / "predictions.npz")
    for r in doc["rows"]:
        if r["held_out"]:  # every scored tile of a shift row belongs to its held-out group
            assert set(site[preds[f"{r['row_id']}.row"]]) == {r["held_out"]}
            assert r["n_test"] == int((site == r["held_out"]).sum())
    assert set(doc["meta"]["shift"]["tasks"]["mitosis"]) == {"MIDOG21", "TUPAC16"}
    page = (shift_bench / "report.html").read_text()
    assert "Domain shift" in page and "test on TUPAC16" in page
    shift = df[df["held_out"] != ""]
    means = shift.groupby("head")["balanced_accuracy"].mean()
    assert (
        f"across dataset (each held out in turn): efficientnet_lite0 z1:rgb {means.idxmax()} has the best mean balanced_accuracy held out, {means.max():.3f}"
        in page
    )
    assert (shift_bench / "mitosis_shift.png").stat().st_size > 1000


def test_compare_rank_numbers_mean_in_domain_rows_and_shift_rows_go_by_id(shift_bench: Path) -> None:
    df = pd.read_csv(shift_bench / "leaderboard.csv", keep_default_na=False)
    r = runner.invoke(app, ["compare", "--bench", str(shift_bench), "--rows", "1,2"])
    assert r.exit_code == 0, r.output
    dom = df[df["held_out"] == ""].sort_values("rank")
    assert dom.iloc[0]["head"] in r.output and dom.iloc[1]["head"] in r.output
    tup = df[df["held_out"] == "TUPAC16"].sort_values("rank")
    r = runner.invoke(app, ["compare", "--bench", str(shift_bench), "--rows", f"{tup.iloc[0]['row_id']},{tup.iloc[1]['row_id']}"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "(tested on TUPAC16)" in text and "scored on dataset = TUPAC16" in text
    r = runner.invoke(app, ["compare", "--bench", str(shift_bench), "--rows", f"{tup.iloc[0]['row_id']},1"])
    assert r.exit_code != 0 and "different test tiles" in r.output and "Traceback" not in r.output


def test_leave_group_out_gives_only_shift_rows_and_needs_a_column(amibr_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["bench", "--store", str(amibr_store), "--out", str(tmp_path / "x"), "--cv", "leave-group-out"])
    assert r.exit_code == 2 and "--shift-column" in r.output and "Traceback" not in r.output
    assert len([x for x in r.output.splitlines() if x.strip()]) == 1, r.output
    r = runner.invoke(
        app, ["bench", "--store", str(amibr_store), "--out", str(tmp_path / "y"), "--shift-column", "scanner", "--heads", "logreg"]
    )
    assert r.exit_code == 2 and "no shift column 'scanner'" in r.output and "Traceback" not in r.output
    out = tmp_path / "lgo"
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
            "logreg",
            "--folds",
            "3",
            "--jobs",
            "1",
            "--n-boot",
            "0",
            "--no-umap",
            "--cv",
            "leave-group-out",
            "--shift-column",
            "dataset",
        ],
    )
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    assert sorted(df["held_out"]) == ["MIDOG21", "TUPAC16"] and (df["gap"] == "").all()
    more = runner.invoke(  # another leave-group-out run on the same folds merges (its folds are the shift folds)
        app,
        [
            "bench",
            "--store",
            str(amibr_store),
            "--task",
            "mitosis",
            "--out",
            str(tmp_path / "lgo2"),
            "--features",
            "efficientnet_lite0:z1:rgb",
            "--heads",
            "knn",
            "--folds",
            "3",
            "--jobs",
            "1",
            "--n-boot",
            "0",
            "--no-umap",
            "--cv",
            "leave-group-out",
            "--shift-column",
            "dataset",
            "--with",
            str(out),
        ],
    )
    assert more.exit_code == 0, more.output
    assert sorted(pd.read_csv(tmp_path / "lgo2" / "leaderboard.csv")["head"]) == ["knn", "knn", "logreg", "logreg"]
    page = (out / "report.html").read_text()  # the main table says which group each rank-1 row was tested on
    assert '<th class="l">tested on</th>' in page and page.index('<td class="l">MIDOG21</td>') < page.index('<td class="l">TUPAC16</td>')


def test_gap_figure_keeps_a_long_legend_inside_the_picture(tmp_path: Path) -> None:
    """Four held-out groups with long names (e.g. --shift-column slide): the legend used to run off the right edge."""
    from PIL import Image

    from mito.report.shift import gap_figure

    groups = [f"a_rather_long_slide_name_{i}_stitched.tif" for i in range(4)]
    base = {"task": "mitosis", "backbone": "efficientnet_lite0", "features": "z1:rgb", "head": "logreg", "noise": 0.0}
    shift = pd.DataFrame([{**base, "held_out": g, "rank": 1, "balanced_accuracy": 0.5 + 0.05 * i} for i, g in enumerate(groups)])
    domain = pd.DataFrame([{**base, "held_out": "", "rank": 1, "balanced_accuracy": 0.6}])
    out = gap_figure(shift, domain, "balanced_accuracy", tmp_path / "s.png")
    with Image.open(out) as im:
        w = im.width
    # every legend label fits: the picture is wider than the fixed 8.5-inch canvas the legend overflowed
    assert w > int(8.5 * 110) + 10, w


def test_confusion_titles_say_which_group_a_shift_row_was_tested_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """leave-group-out rows of different held-out groups used to get indistinguishable confusion-matrix titles."""
    from mito.report import html as report

    titles: list[str] = []

    def keep(fig, path):
        titles.extend(ax.get_title() for ax in fig.axes)
        return path

    monkeypatch.setattr(report, "_save", keep)
    base = {
        "task": "mitosis",
        "backbone": "efficientnet_lite0",
        "features": "z1:rgb",
        "head": "logreg",
        "noise": 0.0,
        "kind": "head",
        "confusion_matrix": [[3, 1], [1, 3]],
        "classes": ["Atypical", "Normal"],
        "n_folds": 2,
        "cv": "shift",
    }
    rows = pd.DataFrame([{**base, "held_out": g, "rank": 1, "row_id": g} for g in ("MIDOG21", "TUPAC16")])
    report.confusion_figure(rows, tmp_path / "c.png")
    assert len(titles) == 2 and "tested on MIDOG21" in titles[0] and "tested on TUPAC16" in titles[1]
