"""Training on augmented views (``--noise-mode views`` / ``view-cov``): a tile's views read from the store, and the
two ways a head uses them each epoch.

A view of a feature set is the concatenation, key by key, of that key's view of the same name (``<key>:<view>``,
made by ``mito extract --augment``); a key without that view contributes the tile itself (e.g. rgb+gray with
views of rgb only: the rgb part is augmented, the gray part stays).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mito.cache import Store, views_of
from mito.heads.base import HeadError

VIEW_NOISE_MODES = ("views", "view-cov")


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
    from mito.heads.features import select_features

    names = view_names(store, keys)
    partial = sorted({v for k in keys for v in views_of(store.variants, k) if not store.is_complete(v)})
    if not names and partial:
        raise HeadError(f"the augmented views {', '.join(partial)} in {store.path} lack some tiles (added after them); "
                        "finish them with mito extract --augment (the same views)")
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


def pick_views(stack: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``views``: for each row of the batch one of its V+1 images (``stack[0]`` the tile itself), uniformly at random."""
    choice = torch.randint(0, stack.shape[0], (len(idx),), generator=gen)
    return stack[choice, idx]


def view_cov_noise(stack: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    """``view-cov``: the tile itself plus Gaussian noise whose covariance is ``scale``^2 times the sample covariance of
    its V+1 images (low rank, V): sum_j z_j (x_j - mean) / sqrt(V), z ~ N(0, I)."""
    x = stack[:, idx].float()  # [V+1, b, d]
    dev = x - x.mean(dim=0, keepdim=True)
    z = torch.randn(x.shape[0], x.shape[1], generator=gen)
    noise = torch.einsum("vb,vbd->bd", z, dev) * (scale / max(1, x.shape[0] - 1) ** 0.5)
    return x[0] + noise


def augment_with_views(X: np.ndarray, y: np.ndarray, views: np.ndarray, mode: str, copies: int, scale: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Heads without batches: ``views`` trains on the rows plus every view; ``view-cov`` on the rows plus ``copies``
    draws of view-covariance noise (a fresh draw each)."""
    X32 = X.astype(np.float32, copy=False)
    if mode == "views":
        return np.concatenate([X32, *views.astype(np.float32)]), np.concatenate([y] * (len(views) + 1))
    stack = torch.from_numpy(np.concatenate([X32[None], views.astype(np.float32)]))
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.arange(len(X))
    noisy = [view_cov_noise(stack, idx, gen, scale).numpy() for _ in range(copies)]
    return np.concatenate([X32, *noisy]), np.concatenate([y] * (copies + 1))
