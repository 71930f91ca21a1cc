"""Which feature set wins across held-out cohorts (issue 22, part 4): the line bench prints and the report shows."""

from __future__ import annotations

import pandas as pd

from mito.bench.shift import cross_group_lines, cross_group_winners


def _row(features: str, held: str, score: float, rank: int, tied: bool | None) -> dict:
    return {
        "task": "mitosis",
        "backbone": "bb",
        "features": features,
        "head": "mlp",
        "noise": 0.0,
        "kind": "head",
        "held_out": held,
        "shots": "all",
        "main_metric": "balanced_accuracy",
        "balanced_accuracy": score,
        "rank": rank,
        "tied_with_best": tied,
    }


def test_the_cross_cohort_winner_is_named_beside_the_in_domain_one() -> None:
    rows = pd.DataFrame(
        [
            _row("z1+z2:rgb+gray", "", 0.70, 1, True),
            _row("z2:rgb+gray", "", 0.69, 2, True),
            _row("z2:rgb+gray", "A", 0.66, 1, True),
            _row("z1+z2:rgb+gray", "A", 0.60, 2, False),
            _row("z2:rgb+gray", "B", 0.67, 1, True),
            _row("z1+z2:rgb+gray", "B", 0.65, 2, True),
            _row("z2:rgb", "A", 0.90, 3, None),  # tested on one group only: not a candidate
        ]
    )
    (w,) = cross_group_winners(rows)
    assert w["winner"] == "bb z2:rgb+gray mlp" and w["winner_mean"] == 0.665
    assert w["in_domain_best"] == "bb z1+z2:rgb+gray mlp" and w["in_domain_best_mean"] == 0.625
    assert w["in_domain_best_standing"] == {"A": "behind", "B": "tied"}
    (line,) = cross_group_lines(rows, "dataset")
    assert line.startswith(
        "task mitosis, across dataset (each held out in turn): bb z2:rgb+gray mlp has the best mean balanced_accuracy held out, 0.665 over A, B"
    )
    assert (
        "(A: #1, B: #1)" in line
        and "in-domain #1 bb z1+z2:rgb+gray mlp (0.700 in-domain) scores 0.625 held out (A: behind, B: tied)" in line
    )
    assert cross_group_lines(rows[rows["held_out"] == ""]) == []
