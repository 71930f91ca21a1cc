"""2-D UMAP of a feature set from the store, coloured by a label column or proxy task, saved as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.errors import BenchError
from mito.io import atomic_write, safe_name
from mito.progress import status
from mito.tasks import PROXY_TASKS, resolve_task

PNG_SOFTWARE = "mito umap"  # the PNG's Software text chunk: how a report knows a umap*.png is one mito wrote


def color_labels(tiles: pd.DataFrame, color_by: str) -> pd.Series:
    """Values to colour by: a proxy task's labels or a tile-table column (None = unlabelled)."""
    if color_by in PROXY_TASKS or color_by in tiles:
        spec = resolve_task(tiles, color_by)
        if len(spec.columns) == 1 and pd.api.types.is_numeric_dtype(tiles[spec.columns[0]]):
            return tiles[spec.columns[0]]
        return spec.labels(tiles)
    raise BenchError(f"cannot colour by {color_by!r}: not a task or a column ({', '.join(tiles.columns)})")


def umap_embedding(X: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, pca: int | None = 50, seed: int = 0) -> np.ndarray:
    """Standardise, reduce to ``pca`` components (when narrower than the features), then UMAP to 2-D."""
    import umap
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X)
    if pca and Z.shape[1] > pca and Z.shape[0] > pca:
        Z = PCA(n_components=pca, random_state=seed).fit_transform(Z)
    n_neighbors = max(2, min(n_neighbors, len(Z) - 1))
    return umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1).fit_transform(Z)


def title_for(keys: Sequence[str], color_by: str, n: int, width: int = 70) -> str:
    """'UMAP of <backbone zooms:colours>' (the feature set's short name), wrapped to fit over the plot."""
    import textwrap

    from mito.bench.leaderboard import describe_keys

    bb, name = describe_keys(list(keys))
    head = textwrap.fill(f"UMAP of {bb} {name}", width, break_on_hyphens=False)
    return f"{head}\ncoloured by {color_by}, {n} tiles"


def scatter_figure(emb: np.ndarray, v: pd.Series, title: str) -> Any:
    """The UMAP scatter as a matplotlib figure: points coloured by category (legend with counts) or by a numeric value."""
    plt = _plt()
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
            ax.scatter(emb[m, 0], emb[m, 1], s=size, color=color, label=f"{c} ({m.sum()})", linewidths=0, alpha=0.8, zorder=1 if c == "unlabelled" else 2)
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
    _plt().close(fig)
    return path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    from mito.cache import open_store
    from mito.heads import default_features

    paths = [Path(o) for o in outs]
    bad = [p.name for p in paths if p.suffix.lower() != ".png"]
    if bad:
        raise BenchError(f"UMAP output must end in .png, got {bad[0]}")
    if len(paths) != len(color_by):
        raise BenchError("give one output path per colouring")
    with status("reading features ...", progress), open_store(store) as s:
        keys = list(features) if features else default_features(s)
        tiles = s.tiles
        values = [color_labels(tiles, c) for c in color_by]
        rows = np.flatnonzero(~s.unreadable)
        if max_points and len(rows) > max_points:
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
        if len(rows) < 5:
            raise BenchError(f"UMAP needs at least 5 readable tiles, {store} has {len(rows)}")
        X = s.read(keys, rows)
    with status(f"UMAP of {len(rows)} tiles x {X.shape[1]} dims ...", progress):
        emb = umap_embedding(X, n_neighbors, min_dist, seed=seed)
    with status("plotting ...", progress):
        return [
            _scatter(emb, v.iloc[rows].reset_index(drop=True), title_for(keys, c, len(rows)), p)
            for c, v, p in zip(color_by, values, paths)
        ]


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
    ``color_by`` (None = the store's first task) at ``out`` (PNG)."""
    if color_by is None:
        from mito.cache import open_store

        with open_store(store) as s:
            if not s.tasks:
                raise BenchError(f"{store} has no label column to colour by; pass --color-by COLUMN")
            color_by = s.tasks[0]
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
