"""Figures of the paired statistics: reliability diagrams of the best rows and a critical-difference diagram across tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.errors import BenchError
from mito.bench.stats import FriedmanResult, friedman_nemenyi, prediction_positive
from mito.core.io import atomic_write
from mito.core.metrics import ECE_BINS, expected_calibration_error, reliability_bins
from mito.report.mpl import pyplot


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"), ".png")
    pyplot().close(fig)
    return path


def row_label(r: pd.Series, width: int = 48) -> str:
    """'#rank backbone features head' cut to ``width`` characters."""
    s = f"#{r['rank']} {r['backbone']} {r['features']} {r['head']}" + (f" σ={r['noise']:g}" if r.get("noise") else "")
    return s if len(s) <= width else s[: width - 1] + "…"


def reliability_figure(
    rows: pd.DataFrame, predictions: dict[str, dict[str, np.ndarray]], path: Path, positive: str | None = None, top: int = 4
) -> Path | None:
    """Reliability diagram of the best rows of one task: test predictions pooled over folds, 15 equal-width bins; two
    classes: the probability of each row's recorded positive class (named ``positive``)."""
    shown = [(r, predictions[r["row_id"]]) for _, r in rows.head(top).iterrows() if r["row_id"] in predictions]
    shown = [(r, p) for r, p in shown if "proba" in p and "y" in p and len(p["y"])]
    if not shown:
        return None
    plt = pyplot()
    k = shown[0][1]["proba"].shape[1]
    fig, ax = plt.subplots(figsize=(5.6, 6.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    for r, p in shown:
        pos = prediction_positive(p) if k == 2 else 1
        conf, freq, _ = reliability_bins(p["y"], p["proba"], positive=pos)
        ece = expected_calibration_error(p["y"], p["proba"], positive=pos)
        ax.plot(conf, freq, marker="o", ms=3.5, lw=1.2, label=f"{row_label(r, 40)} (ECE {ece:.3f})")
    name = f"'{positive}'" if positive else "the positive class"
    ax.set_xlabel(f"predicted probability of {name}" if k == 2 else "top-label confidence")
    ax.set_ylabel(f"observed frequency of {name}" if k == 2 else "accuracy of the top label")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    what = f"positive class: {positive}" if k == 2 and positive else ("positive class" if k == 2 else "top-label")
    ax.set_title(f"Reliability, test predictions pooled over folds\n({ECE_BINS} equal-width bins; {what})", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False, title="pooled ECE", title_fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


CD_MAX_METHODS = 12  # a critical-difference diagram of more methods overprints its labels and its CD spans everything


@dataclass(frozen=True)
class CDScores:
    """What a critical-difference diagram ranks: a (tasks x methods) score table and which methods those are."""

    scores: np.ndarray
    methods: list[str]
    tasks: list[str]
    what: str  # what one method is: "backbone" or "backbone + features + head"
    n_all: int  # methods scored in every task, before keeping the best CD_MAX_METHODS

    @property
    def caption(self) -> str:
        """Which methods the diagram shows, in words."""
        if len(self.methods) == self.n_all:
            return f"every {self.what} scored in all {len(self.tasks)} tasks ({self.n_all})"
        return (
            f"the {len(self.methods)} best of {self.n_all} {self.what} configurations by mean rank over {len(self.tasks)} tasks "
            "(ranked again among themselves)"
        )


def cd_scores(rows: pd.DataFrame, by: str = "backbone", top: int = CD_MAX_METHODS) -> CDScores:
    """The best main-metric value of each method in each task, for the methods scored in every task.

    Methods are backbones when the leaderboard has two or more in every task, else feature set + head combinations;
    of more than ``top`` methods, the ``top`` with the best mean rank over the tasks are kept.
    """
    rows = rows.copy()
    rows["_score"] = [r[r["main_metric"]] for _, r in rows.iterrows()]
    tasks = sorted(rows["task"].unique())
    what = by
    if rows.groupby("task")[by].nunique().min() < 2:
        rows["_m"] = rows["backbone"].astype(str) + " " + rows["features"].astype(str) + " " + rows["head"].astype(str)
        by, what = "_m", "backbone + features + head"
    table = rows.groupby(["task", by])["_score"].max().unstack(by)
    table = table.loc[tasks].dropna(axis=1)
    n_all = table.shape[1]
    if n_all > top:
        from scipy.stats import rankdata

        mean_rank = np.vstack([rankdata(-row, method="average") for row in table.to_numpy(np.float64)]).mean(axis=0)
        keep = np.argsort(mean_rank, kind="stable")[:top]
        table = table.iloc[:, np.sort(keep)]
    return CDScores(table.to_numpy(dtype=np.float64), [str(c) for c in table.columns], tasks, what, n_all)


def cd_axes(result: FriedmanResult, title: str = "") -> Any:
    """Demšar's critical-difference diagram as a figure: mean ranks on an axis (1 = best, left), bars join methods
    closer than the CD."""
    plt = pyplot()
    k = len(result.methods)
    order = np.argsort(result.mean_ranks, kind="stable")
    ranks = np.asarray(result.mean_ranks)[order]
    names = [result.methods[i] for i in order]
    half = math.ceil(k / 2)
    height = 1.6 + 0.32 * half
    fig, ax = plt.subplots(figsize=(7.5, height))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(half + 1.2), 1.8)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for t in range(1, k + 1):
        ax.vlines(t, 0, 0.15, color="black", lw=1)
        ax.text(t, 0.3, str(t), ha="center", va="bottom", fontsize=8)
    # critical difference bar
    cd = result.critical_difference
    ax.hlines(1.3, 1, min(k, 1 + cd), color="tab:red", lw=2)
    ax.text(1 + min(cd, k - 1) / 2, 1.45, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8, color="tab:red")
    for i, (r, name) in enumerate(zip(ranks, names)):
        left = i < half
        level = -(i + 0.8) if left else -(k - i - 0.2)
        x_text = 0.6 if left else k + 0.4
        ax.plot([r, r, x_text], [0, level, level], color="0.3", lw=0.8)
        label = name if len(name) <= 44 else name[:43] + "…"
        ax.text(
            x_text,
            level,
            f"{label} ({r:.2f})",
            ha="left" if not left else "right",
            va="center",
            fontsize=7.5,
            transform=ax.transData,
            clip_on=False,
        )
    # cliques: maximal runs of methods whose rank spread is below the CD
    cliques: list[tuple[int, int]] = []
    for i in range(k):
        j = i
        while j + 1 < k and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for n, (i, j) in enumerate(cliques):
        y = -0.25 - 0.18 * n
        ax.hlines(y, ranks[i] - 0.03, ranks[j] + 0.03, color="black", lw=3)
    stat = "" if math.isnan(result.statistic) else f"Friedman χ² = {result.statistic:.2f}, p = {result.p_value:.3g}; "
    ax.set_title(
        (title + "\n" if title else "")
        + f"{stat}Nemenyi α = {result.alpha:g}, {result.n_tasks} tasks; joined = not significantly different",
        fontsize=8.5,
    )
    fig.subplots_adjust(left=0.28, right=0.72, top=0.8, bottom=0.02)
    return fig


def cd_diagram(result: FriedmanResult, path: Path, title: str = "") -> Path:
    """Demšar's critical-difference diagram (see :func:`cd_axes`) saved as PNG."""
    return _save(cd_axes(result, title), path)


def cd_figure(rows: pd.DataFrame, path: Path) -> tuple[Path, FriedmanResult, CDScores] | None:
    """The critical-difference diagram of a leaderboard spanning two or more tasks (None when it cannot be drawn)."""
    if rows["task"].nunique() < 2:
        return None
    cs = cd_scores(rows)
    try:
        res = friedman_nemenyi(cs.scores, cs.methods)
    except BenchError:
        return None
    shown = f"the {len(cs.methods)} best of {cs.n_all} configurations" if len(cs.methods) < cs.n_all else f"each {cs.what}"
    return cd_diagram(res, path, f"Mean rank of {shown} over {len(cs.tasks)} tasks (best row per task)"), res, cs
