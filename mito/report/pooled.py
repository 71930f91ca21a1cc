"""The picture of pooled bench runs (mito.bench.seeds.pool_benches): each configuration's mean over seeds, its
ensemble, and whether it differs from the reference, one panel per test setting (in-domain, each held-out group)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mito.bench.rows import describe_keys
from mito.core.io import atomic_write
from mito.report.mpl import pyplot

PREFIXES = ("efficientnet_",)  # dropped from labels: every AMi-Br backbone here has it


def short_label(keys: Sequence[str], head: str, noise: float = 0.0) -> str:
    """'lite0 z2:rgb+gray + lite1 z2:rgb+gray, mlp': the variants grouped by backbone, then the head."""
    by_bb: dict[str, list[str]] = {}
    for k in keys:
        by_bb.setdefault(k.split(":", 1)[0], []).append(k)
    parts = []
    for ks in by_bb.values():
        name, feats = describe_keys(ks)
        for p in PREFIXES:
            name = name.replace(p, "")
        parts.append(f"{name} {feats}")
    return " + ".join(parts) + f", {head}" + (f" noise {noise:g}" if noise else "")


def _keys(row: dict[str, Any]) -> list[str]:
    keys = row.get("keys")
    if isinstance(keys, str) and keys:
        return keys.split("+")
    if isinstance(keys, (list, tuple)) and keys:
        return [str(k) for k in keys]
    return [f"{row['backbone']}:{f}" for f in str(row["features"]).split("+")]


def row_label(row: dict[str, Any]) -> str:
    """A pooled row's label: :func:`short_label`, naming a search row's candidates as such and a K-shot row's K (else
    they would read, and sit on the same line, as the head row of the same variants)."""
    label = short_label(_keys(row), str(row["head"]), float(row.get("noise") or 0))
    if str(row.get("kind") or "head") == "search":
        label = "search over " + label
    shots = str(row.get("shots") or "all")
    return label + ("" if shots in ("all", "nan", "None") else f", {shots}-shot")


def _setting(held: Any) -> str:
    return "in-domain" if not held else f"tested on {held} (trained without it)"


def _color(r: dict[str, Any], prefix: str = "") -> str:
    lo, hi = r.get(f"{prefix}ci_low", math.nan), r.get(f"{prefix}ci_high", math.nan)
    if r.get("reference") and not prefix:
        return "#1f4e79"
    if not math.isnan(lo) and lo > 0:
        return "#2e7d32"
    if not math.isnan(hi) and hi < 0:
        return "#c0392b"
    return "#777777"


def pooled_plot(table: pd.DataFrame, task: str | None = None) -> Any:
    """The figure of one task (default: the first). Dot = mean over seeds (bar: sd), diamond = the ensemble of each run's fold models; green/red = the paired 95%
    interval of its difference from the reference's single models lies above/below 0, blue = the reference (dashed)."""
    plt = pyplot()
    t = table[table["task"] == (task or table["task"].iloc[0])]
    metric = str(t["main_metric"].iloc[0])
    settings = list(dict.fromkeys(t["held_out"].fillna("")))
    first = t[t["held_out"].fillna("") == settings[0]].sort_values(metric)
    order = [row_label(r) for r in first.to_dict("records")]
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings) + 3.2, 0.32 * len(order) + 1.4), sharey=True, squeeze=False)
    for ax, held in zip(axes[0], settings):
        g = t[t["held_out"].fillna("") == held]
        for r in g.to_dict("records"):
            label = row_label(r)
            if label not in order:
                continue
            y, c = order.index(label), _color(r)
            ax.errorbar(r[metric], y, xerr=r.get(f"{metric}_sd") or 0, fmt="o", color=c, ms=5, capsize=2, lw=1)
            ens = r.get(f"ens_{metric}", math.nan)
            if ens is not None and not math.isnan(ens):
                ax.plot(ens, y, "D", mfc="none", mec=_color(r, "ens_"), ms=5)
            if r.get("reference"):
                ax.axvline(r[metric], color=c, ls="--", lw=0.8)
        ax.set_title(_setting(held), fontsize=8)
        n = int(g["n_seeds"].iloc[0])
        ax.set_xlabel(f"{metric} (mean over {n} seed{'s' if n > 1 else ''})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(order)), order)
    fig.suptitle(
        "dot: mean ± sd over seeds; diamond: ensemble of the fold models; green/red: 95% paired CI vs the reference "
        "(blue, dashed) above/below 0",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def pooled_figure(table: pd.DataFrame, path: str | Path, task: str | None = None) -> Path:
    """:func:`pooled_plot` saved as a PNG at ``path``."""
    fig = pooled_plot(table, task)
    out = Path(path)
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"), ".png")
    pyplot().close(fig)
    return out
