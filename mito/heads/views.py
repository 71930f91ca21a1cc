"""Training on augmented views (``--noise-mode views`` / ``view-cov``): a tile's views read from the store (the two ways
a head uses them each epoch: mito.heads.view_noise).

A view of a feature set is the concatenation, key by key, of that key's view of the same name (``<key>:<view>``,
made by ``mito extract --augment``); a key without that view contributes the tile itself (e.g. rgb+gray with
views of rgb only: the rgb part is augmented, the gray part stays).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mito.heads.base import HeadError
from mito.heads.features import select_features
from mito.store import Store, views_of


def view_names(store: Store, keys: Sequence[str]) -> list[str]:
    """Names of the complete views (``hed0``, ``flip`` ...) any of ``keys`` has, in store order."""
    names: dict[str, None] = {}
    for k in keys:
        for v in views_of(store.variants, k):
            if store.is_complete(v):
                names[v.rsplit(":", 1)[1]] = None
    return list(names)


def read_views(store: Store, keys: Sequence[str], rows: np.ndarray, dtype: type = np.float16) -> np.ndarray:
    """(V, len(rows), d) features of every view of the feature set ``keys`` for ``rows`` (in the order given)."""
    names = view_names(store, keys)
    partial = sorted({v for k in keys for v in views_of(store.variants, k) if not store.is_complete(v)})
    if not names and partial:
        raise HeadError(
            f"the augmented views {', '.join(partial)} in {store.path} lack some tiles (added after them); "
            "finish them with mito extract --augment (the same views)"
        )
    if not names:
        colors = list(dict.fromkeys(k.split(":")[2] for k in keys if k.count(":") >= 2))
        also = f" --augment-colors {','.join(colors)}" if colors and colors != ["rgb"] else ""
        raise HeadError(
            f"noise mode views/view-cov needs augmented views of {', '.join(keys)} in {store.path}; "
            f"add them with mito extract --augment hed:4,flip{also}"
        )
    have = set(store.variants)
    out = []
    for name in names:
        vk = [f"{k}:{name}" if f"{k}:{name}" in have else k for k in keys]
        out.append(select_features(store, vk, rows, categories={}, dtype=dtype))
    return np.stack(out)
