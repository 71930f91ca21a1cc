"""Leaderboards for the terminal: the ranked rows as a table that fits the width, and one paired comparison of two rows."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich.text import Text

from mito.bench.stats import PARTIAL_FOLDS, Comparison, positive_name, row_group
from mito.core.metrics import CALIBRATION_NAMES, METRIC_NAMES
from mito.report.tables import Col, FitTable, number, p_value, seconds


def leaderboard_table(rows: pd.DataFrame, top: int | None = 20, compact: bool = False) -> Any:
    """The best rows of each task as a table that fits the terminal (main metric ± std over folds, its 95% CI, the
    paired test against #1, ...): numbers are never cut; at a narrow width the least important columns are left out
    and named under it. ``compact`` leaves out the secondary columns (CI, Δ, ECE, kappa, wF1, train/test) at any width."""
    main = rows["main_metric"].iloc[0] if len(rows) and rows["main_metric"].nunique() == 1 else "main metric"
    cols = _leaderboard_columns(rows, main)
    one_backbone = rows["backbone"].nunique() == 1 and len(rows)
    if one_backbone:  # said once in the title, not on every row
        cols = [c for c in cols if c[0] != "backbone"]
    hidden = [c.header for k, c in cols if compact and k in COMPACT_HIDDEN]
    cols = [(k, c) for k, c in cols if not (compact and k in COMPACT_HIDDEN)]
    if "shots" in rows:  # K-shot rows are shown as learning curves (mito.bench.fewshot.curve_rich_table)
        rows = rows[rows["shots"].astype(str).isin(["all", "", "nan", "None"])]
    shown = rows if top is None else rows[rows["rank"] <= top]
    body = [_leaderboard_row(r, [k for k, _ in cols]) for _, r in shown.iterrows()]
    title = f"leaderboard (ranked by {main})" + (f"; backbone {rows['backbone'].iloc[0]}" if one_backbone else "")
    return FitTable([c for _, c in cols], body, title=title, see="see leaderboard.csv", hidden=hidden, notes={"p vs #1": P_VS_BEST_NOTE})


def _leaderboard_columns(rows: pd.DataFrame, main: str) -> list[tuple[str, Col]]:
    """(key, column) of every column the rows can fill; drop 0 = always shown, at a short width the highest drop goes first."""
    many_tasks = rows["task"].nunique() > 1
    noisy = bool((rows["noise"].fillna(0) != 0).any())
    short = {"balanced_accuracy": "bal acc", "weighted_f1": "wF1", "auroc": "AUROC", "pr_auc": "PR-AUC"}.get(main, main)
    shifted = "held_out" in rows and bool((rows["held_out"].fillna("") != "").any())
    cols = [
        ("rank", Col("#")),
        *([("task", Col("task", "left", fold=7))] if many_tasks else []),
        ("backbone", Col("backbone", "left", fold=10)),
        ("features", Col("features", "left", fold=8)),
        ("head", Col("head", "left", fold=6)),
        *([("noise", Col("noise", drop=4))] if noisy else []),
        *([("_held", Col("tested on", "left", fold=9)), ("_gap", Col("gap", drop=1))] if shifted else []),
        ("_main", Col(short)),
        ("_ci", Col("95% CI", drop=8)),
        ("_delta", Col("Δ #1", drop=7)),
        ("_p", Col("p vs #1", drop=2)),
        ("auroc", Col("AUROC", drop=5)),
        ("ece", Col("ECE", drop=9)),
        ("kappa", Col("kappa", drop=10)),
        ("weighted_f1", Col("wF1", drop=11)),
        ("train_seconds", Col("train s", drop=6, header_wraps=False)),
        ("_n", Col("train/test", drop=12)),
    ]
    if "p_vs_best" not in rows:
        cols = [c for c in cols if c[0] not in ("_delta", "_p")]
    if "ece" not in rows:
        cols = [c for c in cols if c[0] != "ece"]
    return cols


def _leaderboard_row(r: Any, keys: list[str]) -> list[str]:
    """One leaderboard row's cells for the column ``keys``."""
    m = r["main_metric"]
    std = r.get(f"{m}_std", math.nan)
    cells = {
        "rank": str(r["rank"]),
        "_main": number(r[m]) + ("" if std is None or math.isnan(std) else f"±{number(std)}"),
        "_ci": "" if math.isnan(r.get("ci_low", math.nan)) else f"{number(r['ci_low'])}-{number(r['ci_high'])}",
        "_n": f"{r['n_train']}/{r['n_test']}",
        "train_seconds": seconds(r["train_seconds"]),
        "noise": f"{r['noise']:g}",
        **paired_cells(r),
        "_held": str(r.get("held_out") or "in-domain"),
        "_gap": "" if not isinstance(r.get("gap"), float) or math.isnan(r["gap"]) else number(r["gap"], signed=True),
    }
    return [cells[k] if k in cells else (number(r[k]) if k in (*METRIC_NAMES, *CALIBRATION_NAMES) else str(r[k])) for k in keys]


# what the "p vs #1" header cannot say (report.html says it too, in its PAIRED_NOTE)
P_VS_BEST_NOTE = (
    "p vs #1: paired bootstrap against the task's #1 on the same test tiles, Holm-adjusted within the task; "
    "(tie): not significantly worse at 0.05"
)


COMPACT_HIDDEN = ("_ci", "kappa", "weighted_f1", "_n", "_delta", "ece")


def paired_cells(r: Any) -> dict[str, str]:
    """Table cells of a row's paired comparison with its task's best row: Δ and Holm-adjusted p, '(tie)' when not worse at 0.05."""
    delta, p = r.get("delta_vs_best", math.nan), r.get("p_vs_best", math.nan)
    if r.get("rank") == 1:
        return {"_delta": "", "_p": "best"}
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return {"_delta": "", "_p": "n/a"}
    tie = " (tie)" if r.get("tied_with_best") in (True,) else ""  # numpy or Python bool; None and NaN are not ties
    partial = "†" if str(r.get("paired_note") or "").startswith(PARTIAL_FOLDS) else ""  # compared on the folds both rows scored
    return {"_delta": number(delta, signed=True) + partial, "_p": ("" if p is None or math.isnan(p) else p_value(p)) + tie + partial}


def comparison_text(a: Any, b: Any, comp: Comparison, cv: str = "") -> list[Any]:
    """Rich renderables describing one paired comparison (what is compared, a table per metric, DeLong's test)."""

    def label(r: Any) -> str:
        group = row_group(r)
        return (
            f"#{r['rank']} {r['backbone']} {r['features']} {r['head']}"
            + (f" noise={r['noise']:g}" if r.get("noise") else "")
            + (f" ({group})" if group else "")
            + f" [{r['row_id']}]"
        )

    head = (
        f"task {a['task']}: A = {label(a)}\n            B = {label(b)}\n"
        f"{comp.n_tiles} test tiles, {comp.n_folds} folds ({comp.n_predictions} predictions){'; ' + cv if cv else ''}\n"
        f"paired bootstrap: {next(iter(comp.paired.values())).n_boot} replicates, the same resampled tiles for both rows; "
        "metric per fold, averaged over folds; 95% percentile interval; two-sided p of this one pair, not adjusted "
        "(the leaderboard's p vs #1 is Holm-adjusted within the task, so it is the same or larger)"
    )

    def fmt(v: Any) -> str:
        return number(v, 4)

    body = []
    for m, r in comp.paired.items():
        va, vb = (r.value_a, r.value_b) if comp.folds_note else (a.get(m), b.get(m))  # on the folds both scored
        body.append(
            [
                m + (" *" if m == a["main_metric"] else ""),
                fmt(va),
                fmt(vb),
                number(r.delta, 4, signed=True),
                f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]",
                p_value(r.p_value, 4),
            ]
        )
    cols = [Col("metric", "left", fold=10), Col("A"), Col("B"), Col("A - B"), Col("95% CI"), Col("p")]
    t = FitTable(cols, body, title="A - B", wrap=True)
    out: list[Any] = [Text(head), t, Text("* main metric of the task")]
    positive = positive_name(a, comp.positive)
    if positive is not None:
        out.append(Text(positive))
    if comp.delong is not None:
        d = comp.delong
        out.append(
            Text(
                f"DeLong's test (AUROC, {d.n_pos} positive / {d.n_neg} negative test cases): AUC A {d.auc_a:.4f}, B {d.auc_b:.4f}, "
                f"A - B {d.delta:+.4f} (se {d.se:.4f}), z = {d.z:.3f}, p = {d.p_value:.4g}"
            )
        )
    for note in (comp.folds_note, comp.note):
        if note:
            out.append(Text(note))
    return out
