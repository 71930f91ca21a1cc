"""The slide-level networks behind mito.heads.mil (kept apart so that importing mito.heads does not load torch)."""

from __future__ import annotations

import torch
from torch import nn


class MeanPool(nn.Module):
    """Masked mean of the tiles, then a linear layer (hidden=0) or an MLP."""

    def __init__(self, d: int, k: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, k)) if hidden else nn.Linear(d, k)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1)
        return self.net((x * w[..., None]).sum(1)), w


class GatedAttention(nn.Module):
    """ABMIL: h = ReLU(W x); a = softmax_bag(w^T (tanh(V h) * sigmoid(U h))); logits = C (sum a h)."""

    def __init__(self, d: int, k: int, hidden: int, attention: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.v = nn.Linear(hidden, attention)
        self.u = nn.Linear(hidden, attention)
        self.w = nn.Linear(attention, 1)
        self.classify = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        score = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)
        a = torch.softmax(score.masked_fill(~mask, float("-inf")), dim=1)
        return self.classify((a[..., None] * h).sum(1)), a
