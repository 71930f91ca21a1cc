"""2-D UMAP of a feature set from the store, coloured by a label column or proxy task, saved as PNG."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.errors import BenchError
from mito.bench.rows import describe_keys
from mito.bench.umap import store_task, umap_points
from mito.core.io import atomic_write, safe_name
from mito.core.progress import status
from mito.report.mpl import pyplot

PNG_SOFTWARE = "mito umap"  # the PNG's Software text chunk: how a report knows a umap*.png is one mito wrote


def title_for(keys: Sequence[str], color_by: str, n: int, width: int = 70) -> str:
    """'UMAP of <backbone zooms:colours>' (the feature set's short name), wrapped to fit over the plot."""
    bb, name = describe_keys(list(keys))
    head = textwrap.fill(f"UMAP of {bb} {name}", width, break_on_hyphens=False)
    return f"{head}\ncoloured by {color_by}, {n} tiles"


def scatter_figure(emb: np.ndarray, v: pd.Series, title: str) -> Any:
    """The UMAP scatter as a matplotlib figure: points coloured by category (legend with counts) or by a numeric value."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    size = float(np.clip(3000 / len(emb), 3, 25))
    if pd.api.types.is_numeric_dtype(v) and v.nunique() > 12:
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=v.to_numpy(float), s=size, cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax)
    else:
        v = v.map(lambda x: "unlabelled" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x))
        cats = sorted(c for c in v.unique() if c != "unlabelled") + (["unlabelled"] if (v == "unlabelled").any() else [])
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        for i, c in enumerate(cats):
            m = (v == c).to_numpy()
            color = "#cccccc" if c == "unlabelled" else cmap(i % cmap.N)
            ax.scatter(
                emb[m, 0],
                emb[m, 1],
                s=size,
                color=color,
                label=f"{c} ({m.sum()})",
                linewidths=0,
                alpha=0.8,
                zorder=1 if c == "unlabelled" else 2,
            )
        ax.legend(markerscale=2, fontsize=8, frameon=False, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def _scatter(emb: np.ndarray, v: pd.Series, title: str, path: Path) -> Path:
    fig = scatter_figure(emb, v, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", metadata={"Software": PNG_SOFTWARE}), ".png")
    pyplot().close(fig)
    return path


def umap_plots(
    store: str | os.PathLike,
    features: Sequence[str] | None,
    color_by: Sequence[str],
    outs: Sequence[str | os.PathLike],
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    max_points: int | None = 20000,
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """One UMAP of the readable tiles' ``features`` (variant keys, concatenated; None = the heads' default set), one PNG per colouring."""
    paths = [Path(o) for o in outs]
    bad = [p.name for p in paths if p.suffix.lower() != ".png"]
    if bad:
        raise BenchError(f"UMAP output must end in .png, got {bad[0]}")
    if len(paths) != len(color_by):
        raise BenchError("give one output path per colouring")
    emb, values, keys, rows = umap_points(store, features, color_by, n_neighbors, min_dist, max_points, seed, progress)
    with status("plotting ...", progress):
        return [_scatter(emb, v, title_for(keys, c, len(rows)), p) for c, v, p in zip(color_by, values, paths)]


def umap_plot(
    store: str | os.PathLike,
    features: Sequence[str] | None,
    color_by: str | None,
    out: str | os.PathLike,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    max_points: int | None = 20000,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Embed the readable tiles' ``features`` (None = the heads' default set) with UMAP and save a scatter coloured by
    ``color_by`` (None = the store's only task) at ``out`` (PNG)."""
    if color_by is None:
        color_by = store_task(store)
    return umap_plots(store, features, [color_by], [out], n_neighbors, min_dist, max_points, seed, progress)[0]


def leaderboard_umaps(store: str | os.PathLike, lb: Any, out: str | os.PathLike, progress: bool = False) -> list[Path]:
    """``out/umap_<task>.png`` for every task of a leaderboard: one UMAP of its first task's best head feature set."""
    rows = lb.rows[lb.rows["kind"] == "head"]
    if rows.empty:
        return []
    tasks = list(dict.fromkeys(lb.meta.get("tasks", {}))) or list(rows["task"].unique())
    tasks = [t for t in tasks if t in set(rows["task"])]
    best = rows[rows["task"] == tasks[0]].sort_values("rank").iloc[0]
    return umap_plots(store, list(best["keys"]), tasks, [Path(out) / f"umap_{safe_name(t, 'task')}.png" for t in tasks], progress=progress)
