"""The few-shot learning curve in pictures and tables: a PNG, the report's HTML section and the terminal's tables."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Group

from mito.bench.fewshot import SHOTS_ALL, curve_table, curves, is_zero_shot
from mito.core.io import atomic_write
from mito.report.mpl import pyplot
from mito.report.tables import Col, FitTable


def learning_curve_figure(rows: pd.DataFrame, metric: str, path: Path, chance: float | None = None) -> Path | None:
    """The main metric against labelled tiles per class (log x): one line per feature set x head with its 95% CI
    band, 'all' (every training tile) at the right end, zero-shot rows as horizontal lines, chance dashed."""
    pts = curves(rows)
    if pts.empty:
        return None
    plt = pyplot()
    ks = sorted({int(k) for k in pts["k"].dropna()})
    x_all = ks[-1] * 2.0 if ks else 1.0
    n_all = pts.loc[pts["k"].isna(), "n_train"]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    colors = plt.get_cmap("tab10" if pts["line"].nunique() <= 10 else "tab20")
    styles = {"linear": "-", "mlp": "--", "logreg": "-.", "knn": ":", "lightgbm": (0, (5, 1, 1, 1))}
    fs_names = list(dict.fromkeys(pts["backbone"] + " " + pts["features"]))
    for _i, (line, g) in enumerate(pts.groupby("line", sort=False)):
        x = g["k"].fillna(x_all).to_numpy(float)
        v = g[metric].to_numpy(float)
        c = colors(fs_names.index(g["backbone"].iloc[0] + " " + g["features"].iloc[0]) % colors.N)
        few = ~g["k"].isna().to_numpy()
        ax.plot(x[few], v[few], marker="o", ms=3.5, lw=1.4, color=c, ls=styles.get(str(g["head"].iloc[0]), "-"), label=line)
        ax.fill_between(x, g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float), color=c, alpha=0.12, lw=0)
        if not few.all() and few.any():  # 'all' sits at an arbitrary x: joined by a thin dotted line, drawn as a square
            last = np.flatnonzero(few)[-1]
            ax.plot([x[last], x_all], [v[last], v[~few][0]], color=c, lw=0.8, ls=":")
            ax.plot([x_all], [v[~few][0]], marker="s", ms=5, color=c, ls="none")
    zs = rows[is_zero_shot(rows)]
    for _j, (_, r) in enumerate(zs.iterrows()):
        ax.axhline(float(r[metric]), color="#7b3294", lw=1.3, ls=(0, (6, 2)), label=f"zero-shot {r['backbone']} {r['features']}")
        if np.isfinite(float(r.get("ci_low", math.nan))):
            ax.axhspan(float(r["ci_low"]), float(r["ci_high"]), color="#7b3294", alpha=0.07, lw=0)
    if chance is not None:
        ax.axhline(chance, color="#444444", lw=0.9, ls="--")
        ax.text(x_all, chance, f"chance {chance:.2g} ", fontsize=7, va="top", ha="right", color="#444444")
    ax.set_xscale("log", base=2)
    all_label = f"all\n(~{int(n_all.mean()):,} in total)" if len(n_all) else "all"
    ax.set_xticks([*ks, x_all], [*map(str, ks), all_label], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("labelled training tiles per class (log scale); 'all' = every training tile, with early stopping")
    ax.set_ylabel(metric)
    d = pts["draws"].dropna()
    n_draws = int(d.max()) if len(d) else 1
    folds = int(pts["n_folds"].dropna().max()) if pts["n_folds"].notna().any() else 1
    ax.set_title(
        f"How many labels? {metric} vs labels per class\n"
        f"mean over up to {n_draws} draws x {folds} folds; band: 95% bootstrap CI over test tiles and draws",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    n_lines = pts["line"].nunique() + len(zs)
    ax.legend(
        fontsize=7 if n_lines <= 8 else 6,
        loc="lower right" if n_lines <= 8 else "center left",
        bbox_to_anchor=None if n_lines <= 8 else (1.01, 0.5),
    )
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110), ".png")
    plt.close(fig)
    return path


def report_section(rows: pd.DataFrame, metric: str, path: Path, chance: float | None, img: Any) -> str:
    """HTML for the report: the learning curve PNG (written to ``path``) and its table; '' without K-shot rows."""
    png = learning_curve_figure(rows, metric, path, chance)
    if png is None:
        return ""
    wide = curve_table(rows, metric)
    head = "".join(f"<th>{html.escape(c if c == SHOTS_ALL else f'K={c}')}</th>" for c in wide.columns)
    body = "".join(
        f"<tr><td class='l'>{html.escape(str(line))}</td>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
        for line, r in wide.iterrows()
    )
    pts = curves(rows)
    short = sorted(
        {
            f"K={r['shots']}: " + ", ".join(f"{c} has {n}" for c, n in r["short_classes"].items())
            for _, r in pts.iterrows()
            if isinstance(r.get("short_classes"), dict) and r["short_classes"]
        }
    )
    zs = rows[is_zero_shot(rows)]
    zs_note = "".join(
        f"<li>zero-shot {html.escape(str(r['backbone']))}: {_f(r[metric])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]</li>"
        for _, r in zs.iterrows()
    )
    return (
        "<h3>How many labels do we need? (few-shot learning curve)</h3>"
        f"<p class='meta'>{html.escape(metric)} when each head is trained on K labelled tiles per class, drawn (stratified, seeded, "
        "nested in K) from each fold's training part only and scored on the fold's usual test tiles. No validation set for K-shot "
        "heads (fixed training budget); 'all' is the normal row. Cell: mean over draws x folds [95% bootstrap CI over test tiles "
        "and draws].</p>"
        + (f"<p class='meta'>Classes with fewer than K training tiles (all used): {html.escape('; '.join(short))}</p>" if short else "")
        + f"<table><thead><tr><th class='l'>feature set, head</th>{head}</tr></thead><tbody>{body}</tbody></table>"
        + (f"<ul>{zs_note}</ul>" if zs_note else "")
        + f"<div class='figs'>{img(png, 'few-shot learning curve')}</div>"
    )


def _f(v: Any) -> str:
    try:
        return f"{float(v):.3f}"
    except (TypeError, ValueError):
        return "–"


def _two_lines(cell: str) -> str:
    """'0.712 [0.650, 0.770]' -> '0.712' over '0.650-0.770' (a narrower column)."""
    mean, _, ci = cell.partition(" [")
    if not ci:
        return mean
    lo, _, hi = ci.rstrip("]").partition(", ")
    return f"{mean}\n{lo}-{hi}"


def curve_rich_table(rows: pd.DataFrame) -> Any:
    """The learning curve(s) of a leaderboard, a table per task that fits the terminal (columns K continue in a second
    table when the width is short; no number is cut); None without K-shot rows."""
    tables = []
    for task, g in rows.groupby("task", sort=True):
        metric = str(g["main_metric"].iloc[0])
        wide = curve_table(g, metric)
        if wide.empty:
            continue
        cols = [Col("feature set, head", "left", fold=18)] + [Col(f"K={c}" if c != SHOTS_ALL else "all") for c in wide.columns]
        body = [[str(line), *[_two_lines(str(v)) for v in r]] for line, r in wide.iterrows()]
        tables.append(FitTable(cols, body, title=f"{task}: {metric} vs labelled tiles per class (mean, 95% CI below)", wrap=True))
    return Group(*tables) if tables else None
