"""2-D UMAP of a feature set from the store and the values to colour it by (the picture: mito.report.umap)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mito.bench.errors import BenchError
from mito.core.progress import status
from mito.core.tasks import default_task, resolve_task
from mito.datasets import PROXY_TASKS
from mito.heads import default_features
from mito.store import open_store


def color_labels(tiles: pd.DataFrame, color_by: str) -> pd.Series:
    """Values to colour by: a proxy task's labels or a tile-table column (None = unlabelled)."""
    if color_by in PROXY_TASKS or color_by in tiles:
        spec = resolve_task(tiles, color_by, PROXY_TASKS)
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


def umap_points(
    store: str | os.PathLike,
    features: Sequence[str] | None,
    color_by: Sequence[str],
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    max_points: int | None = 20000,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, list[pd.Series], list[str], np.ndarray]:
    """One UMAP of the readable tiles' ``features`` (variant keys, concatenated; None = the heads' default set): the 2-D
    points, the values of each colouring on those tiles, the keys and the store rows drawn (at most ``max_points``)."""
    with open_store(store) as s:  # every check before the first status line: bad input stays one line
        keys = list(features) if features else default_features(s)
        missing = [k for k in keys if k not in s.variants]
        if missing:
            raise BenchError(f"feature variant {missing[0]!r} is not in {store} (has: {', '.join(s.variants)})")
        tiles = s.tiles
        values = [color_labels(tiles, c) for c in color_by]
        rows = np.flatnonzero(~s.unreadable)
        if max_points and len(rows) > max_points:
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
        if len(rows) < 5:
            raise BenchError(f"UMAP needs at least 5 readable tiles, {store} has {len(rows)}")
        with status(f"reading features of {len(rows)} tiles ...", progress):
            X = s.read(keys, rows)
    with status(f"UMAP of {len(rows)} tiles x {X.shape[1]} dims ...", progress):
        emb = umap_embedding(X, n_neighbors, min_dist, seed=seed)
    return emb, [v.iloc[rows].reset_index(drop=True) for v in values], keys, rows


def store_task(store: str | os.PathLike, option: str = "--color-by") -> str:
    """The store's task (mito.core.tasks.default_task: its only one), what a UMAP is coloured by when nothing is asked."""
    with open_store(store) as s:
        return default_task(s.tasks, None, option)
