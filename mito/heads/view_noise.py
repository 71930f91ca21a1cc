"""The two ways a head trains on a tile's augmented views each epoch (``--noise-mode views`` / ``view-cov``).

torch is imported when a view is drawn, so heads without batches (logreg, knn, lightgbm) load it only in these modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

VIEW_NOISE_MODES = ("views", "view-cov")


def pick_views(stack: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``views``: for each row of the batch one of its V+1 images (``stack[0]`` the tile itself), uniformly at random."""
    import torch

    choice = torch.randint(0, stack.shape[0], (len(idx),), generator=gen)
    return stack[choice, idx]


def view_cov_noise(stack: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    """``view-cov``: the tile itself plus Gaussian noise whose covariance is ``scale``^2 times the sample covariance of
    its V+1 images (low rank, V): sum_j z_j (x_j - mean) / sqrt(V), z ~ N(0, I)."""
    import torch

    x = stack[:, idx].float()  # [V+1, b, d]
    dev = x - x.mean(dim=0, keepdim=True)
    z = torch.randn(x.shape[0], x.shape[1], generator=gen)
    noise = torch.einsum("vb,vbd->bd", z, dev) * (scale / max(1, x.shape[0] - 1) ** 0.5)
    return x[0] + noise


def augment_with_views(
    X: np.ndarray, y: np.ndarray, views: np.ndarray, mode: str, copies: int, scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Heads without batches: ``views`` trains on the rows plus every view; ``view-cov`` on the rows plus ``copies``
    draws of view-covariance noise (a fresh draw each)."""
    import torch

    X32 = X.astype(np.float32, copy=False)
    if mode == "views":
        return np.concatenate([X32, *views.astype(np.float32)]), np.concatenate([y] * (len(views) + 1))
    stack = torch.from_numpy(np.concatenate([X32[None], views.astype(np.float32)]))
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.arange(len(X))
    noisy = [view_cov_noise(stack, idx, gen, scale).numpy() for _ in range(copies)]
    return np.concatenate([X32, *noisy]), np.concatenate([y] * (copies + 1))
