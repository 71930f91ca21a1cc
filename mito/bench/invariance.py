"""How stable each backbone's embedding is under colour and geometry changes, read straight from the store.

For every RGB variant (backbone, zoom) the mean cosine similarity of a tile's embedding to its gray / hema variant
and to its augmented views (``mito extract --augment``: HED stain jitter averaged over its K draws, flips, rot90).
1 means the backbone does not see the change at all; a user reads, before training anything, which backbone is
stable under stain change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mito.store import Store, format_zoom, is_view, parse_variant, views_of

COLOR_COLUMNS = ("gray", "hema")


def mean_cosine(store: Store, a: str, b: str, rows: np.ndarray | None = None) -> float:
    """Mean over tiles (readable ones, or ``rows``) of cos(embedding in ``a``, embedding in ``b``), read chunk by chunk."""
    total, n = 0.0, 0
    d = store.variant_info(a)["dim"]
    for _, block in store.iter_chunks([a, b], rows, dtype=np.float32):
        x, y = block[:, :d].astype(np.float64), block[:, d:].astype(np.float64)
        ok = ~(np.isnan(x).any(1) | np.isnan(y).any(1))
        nx, ny = np.linalg.norm(x[ok], axis=1), np.linalg.norm(y[ok], axis=1)
        good = (nx > 0) & (ny > 0)
        total += float(((x[ok][good] * y[ok][good]).sum(1) / (nx[good] * ny[good])).sum())
        n += int(good.sum())
    return total / n if n else float("nan")


def _view_kind(key: str) -> str:
    v = parse_variant(key).view
    return "hed" if v.startswith("hed") and v[3:].isdigit() else v


MAX_TILES = 20_000  # a report reads at most about this many tiles per pair of variants


def sample_rows(store: Store, max_tiles: int = MAX_TILES) -> np.ndarray:
    """The readable rows of whole chunks spread evenly over the store, about ``max_tiles`` of them (all when fewer)."""
    readable = np.flatnonzero(~np.asarray(store.unreadable, bool))
    if len(readable) <= max_tiles:
        return readable
    cr = int(store.chunk_rows)
    n_chunks = -(-store.n_tiles // cr)
    take = np.unique(np.linspace(0, n_chunks - 1, max(1, max_tiles // cr)).round().astype(np.int64))
    return readable[np.isin(readable // cr, take)]


def invariance_table(store: Store, max_tiles: int = MAX_TILES) -> pd.DataFrame:
    """One row per complete RGB variant (backbone, zoom): mean cosine similarity to gray, hema and each view kind
    (over the readable tiles of evenly spread chunks, at most about ``max_tiles``: a report of a huge store stays quick)."""
    complete = [k for k in store.variants if store.is_complete(k)]
    sample = sample_rows(store, max_tiles)
    rows = []
    for key in complete:
        v = parse_variant(key)
        if is_view(key) or v.color != "rgb":
            continue
        row: dict[str, object] = {"backbone": v.backbone, "zoom": format_zoom(v.zoom), "n_tiles": len(sample)}
        for c in COLOR_COLUMNS:
            other = f"{v.backbone}:z{format_zoom(v.zoom)}:{c}"
            if other in complete:
                row[c] = mean_cosine(store, key, other, sample)
        kinds: dict[str, list[float]] = {}
        for vk in views_of(complete, key):
            kinds.setdefault(_view_kind(vk), []).append(mean_cosine(store, key, vk, sample))
        row.update({k: float(np.mean(s)) for k, s in kinds.items()})
        if len(row) > 3:
            rows.append(row)
    return pd.DataFrame(rows)
