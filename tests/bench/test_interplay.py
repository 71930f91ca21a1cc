"""Features that meet in one leaderboard: shift rows, K-shot rows and paired columns together."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mito.bench.leaderboard import BenchConfig, rank_rows
from mito.bench.stats import add_paired_columns
from mito.core.metrics import classification_metrics


def _row(score: float, held_out: str = "", shots: str = "all", head: str = "mlp") -> dict:
    return {
        "task": "mitosis",
        "backbone": "b",
        "features": "z1 rgb",
        "head": head,
        "noise": 0.0,
        "kind": "head",
        "held_out": held_out,
        "shots": shots,
        "main_metric": "balanced_accuracy",
        "balanced_accuracy": score,
        "auroc": score,
        "row_id": f"{head}-{held_out}-{shots}",
    }


def test_gap_is_against_the_full_row_not_a_k_shot_row_of_the_same_model() -> None:
    rows = rank_rows(pd.DataFrame([_row(0.80), _row(0.70, held_out="TUPAC16"), _row(0.55, shots="4"), _row(0.60, shots="16")]))
    shift = rows[rows["held_out"] == "TUPAC16"].iloc[0]
    assert shift["gap"] == pytest.approx(0.70 - 0.80)
    assert rows.loc[rows["held_out"] == "", "gap"].isna().all()  # in-domain and K-shot rows have no gap


def _shot_predictions(rng: np.random.Generator, tiles: np.ndarray, y: np.ndarray, n_draws: int) -> dict[str, np.ndarray]:
    fold = np.repeat([0, 1], len(tiles) // 2)
    parts = {"fold": [], "draw": [], "row": [], "y": [], "proba": []}
    for d in range(n_draws):
        for f in (0, 1):
            sel = fold == f
            p1 = np.clip(0.5 * y[sel] + rng.uniform(0, 0.6, sel.sum()), 0, 1)
            parts["fold"].append(np.full(sel.sum(), f))
            parts["draw"].append(np.full(sel.sum(), d))
            parts["row"].append(tiles[sel])
            parts["y"].append(y[sel])
            parts["proba"].append(np.column_stack([1 - p1, p1]))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _mean_over_fits(p: dict[str, np.ndarray], metric: str) -> float:
    vals = []
    for d in np.unique(p["draw"]):
        for f in np.unique(p["fold"]):
            sel = (p["draw"] == d) & (p["fold"] == f)
            vals.append(classification_metrics(p["y"][sel], p["proba"][sel], [0, 1])[metric])
    return float(np.mean(vals))


def test_k_shot_paired_delta_is_the_difference_of_the_rows_values() -> None:
    rng = np.random.default_rng(3)
    tiles = np.arange(40)
    y = rng.integers(0, 2, 40)
    pa, pb = _shot_predictions(rng, tiles, y, 3), _shot_predictions(rng, tiles, y, 3)
    va, vb = _mean_over_fits(pa, "auroc"), _mean_over_fits(pb, "auroc")  # the K-shot rows' value: mean over draws x folds
    rows = rank_rows(
        pd.DataFrame(
            [
                {**_row(va, shots="4"), "row_id": "a", "main_metric": "auroc"},
                {**_row(vb, shots="4", head="knn"), "row_id": "b", "main_metric": "auroc"},
            ]
        )
    )
    out = add_paired_columns(rows, {"a": pa, "b": pb}, n_boot=50, seed=0)
    worse = out[out["rank"] == 2].iloc[0]
    assert worse["delta_vs_best"] == pytest.approx(min(va, vb) - max(va, vb))
    assert not math.isnan(worse["p_vs_best"])
    # k-fold test tiles repeat over the draws: DeLong's test (independent cases) is not claimed for them
    assert math.isnan(worse["auroc_p_vs_best"]) and "DeLong" in worse["paired_note"]


def test_few_shot_with_leave_group_out_is_refused() -> None:
    with pytest.raises(ValueError, match="leave-group-out"):
        BenchConfig(store="x", tasks=["mitosis"], cv="leave-group-out", shift_column="dataset", few_shot=["4"])
    BenchConfig(store="x", tasks=["mitosis"], cv="leave-group-out", shift_column="dataset", few_shot=["all"])


def test_a_bare_rank_means_the_in_domain_row_when_shift_and_k_shot_rows_share_it() -> None:
    from mito.bench import BenchError
    from mito.bench.stats import find_row

    rows = rank_rows(pd.DataFrame([_row(0.80), _row(0.70, held_out="TUPAC16"), _row(0.60, shots="4"), _row(0.75, head="knn")]))
    assert find_row(rows, "1")["row_id"] == "mlp--all" and find_row(rows, "2", task="mitosis")["row_id"] == "knn--all"
    shift_only = rank_rows(pd.DataFrame([_row(0.7, held_out="A"), _row(0.6, held_out="B")]))
    with pytest.raises(BenchError, match="give row ids"):
        find_row(shift_only, "1")


def test_learning_curve_table_ignores_shift_rows() -> None:
    from mito.bench.fewshot import curve_table

    rows = rank_rows(pd.DataFrame([_row(0.80), _row(0.70, held_out="TUPAC16"), _row(0.65, held_out="MIDOG21"), _row(0.60, shots="4")]))
    rows["ci_low"], rows["ci_high"] = math.nan, math.nan
    wide = curve_table(rows, "balanced_accuracy")
    assert wide.loc["b z1 rgb mlp", "all"] == "0.800" and wide.loc["b z1 rgb mlp", "4"] == "0.600"
