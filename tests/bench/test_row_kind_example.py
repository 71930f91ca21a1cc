"""Adding a row kind to `mito bench` is one producer class registered in one place: a majority-class baseline row,
defined and registered here, is planned, scored, ranked, paired with #1 and saved like every other row."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mito.bench import BenchConfig, load_leaderboard, run_bench, save_leaderboard
from mito.bench.leaderboard import COLUMNS
from mito.bench.row import PRODUCERS, FitJob, Producer, register_producer, scored
from mito.bench.rows import row_id, score_row


class MajorityRows(Producer):
    """A baseline row per task: every test tile gets the class frequencies of its fold's training tiles (no features)."""

    def score(self, ctx: Any, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        out = []
        for t, (spec, y, classes, plan) in ctx.plans.items():
            fits = []
            for f in plan.folds:
                freq = np.array([np.mean(y[f.train] == c) for c in classes])
                fits.append({"proba": np.tile(freq, (len(f.test), 1)), "train_seconds": 0.0, "predict_seconds": 0.0})
            base = {
                "task": t,
                "backbone": "none",
                "features": "none",
                "head": "majority",
                "kind": "majority",
                "held_out": "",
                "shots": "all",
            }
            base["row_id"] = row_id(t, "none", "none", "majority", 0.0)
            out.append(scored(score_row(base, spec, plan, y, classes, fits, plan.folds, ctx.cfg.n_boot, ctx.cfg.seed)))
        return out


@pytest.fixture
def majority() -> Iterator[None]:
    register_producer(MajorityRows)
    try:
        yield
    finally:
        PRODUCERS.remove(MajorityRows)


def test_a_registered_producer_adds_its_rows_ranked_and_paired(majority: None, amibr_store: Path, tmp_path: Path) -> None:
    cfg = BenchConfig(
        store=str(amibr_store),
        tasks=["mitosis"],
        features=["efficientnet_lite0:z1:rgb"],
        heads=["logreg"],
        n_folds=2,
        n_jobs=1,
        n_boot=50,
    )
    lb = run_bench(cfg, progress=False)
    kinds = lb.rows.set_index("kind")
    assert set(kinds.index) == {"head", "majority"}
    base = kinds.loc["majority"]
    # a constant score ranks no tile above another, and predicting the majority class is right on one class only
    assert base["auroc"] == pytest.approx(0.5) and base["balanced_accuracy"] == pytest.approx(0.5)
    assert base["row_id"] in lb.predictions and lb.predictions[base["row_id"]]["proba"].shape[1] == 2
    assert sorted(lb.rows["rank"]) == [1, 2]  # ranked with the head row
    second = lb.rows[lb.rows["rank"] == 2].iloc[0]
    assert not math.isnan(second["p_vs_best"]) and second["paired_note"] != "best row"  # paired with #1 like any row
    out = save_leaderboard(lb, tmp_path / "lb")
    back = load_leaderboard(out)
    assert back.rows.set_index("row_id").loc[base["row_id"], "head"] == "majority"
    assert list(pd.read_csv(out / "leaderboard.csv").columns) == [c for c in COLUMNS if c in lb.rows]


def test_without_it_the_bench_is_unchanged(amibr_store: Path) -> None:
    assert MajorityRows not in PRODUCERS
    cfg = BenchConfig(
        store=str(amibr_store), tasks=["mitosis"], features=["efficientnet_lite0:z1:rgb"], heads=["logreg"], n_folds=2, n_jobs=1, n_boot=0
    )
    assert run_bench(cfg, progress=False).rows["kind"].tolist() == ["head"]
