"""text-linear: a linear head whose weights start from the class text embeddings x logit scale (the CLIP few-shot
baseline), then trained exactly as the linear head.

Its input is each D-dim block of the features L2-normalised (D = the text dim; several variants of the same backbone
are several blocks), so before any training it *is* the zero-shot classifier (averaged over blocks).
The class text embeddings come from the file `mito zero-shot` writes (param ``text_embeddings``; bench passes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mito.heads.base import FitArgs, HeadError, register_head
from mito.heads.model import Callback
from mito.heads.params import Param
from mito.heads.torch_heads import LinearHead
from mito.heads.zeroshot import read_text_embeddings


class TextNet(nn.Module):
    """Per-block L2 normalisation, then one linear layer (``first``, named as in the other torch heads)."""

    def __init__(self, d: int, n_classes: int, text_dim: int) -> None:
        super().__init__()
        if d % text_dim:
            raise HeadError(
                f"text-linear needs features made of whole {text_dim}-dim blocks of the text embeddings' backbone, got {d} dims "
                "(no --metadata or --pca with text-linear)"
            )
        self.text_dim = text_dim
        self.first = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor, noise_var: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        if noise_var is not None:
            x = x + torch.randn(x.shape, generator=gen) * noise_var.sqrt()
        b = x.shape[0]
        x = nn.functional.normalize(x.reshape(b, -1, self.text_dim).float(), dim=-1).reshape(b, -1)
        return self.first(x.to(self.first.weight.dtype))


def text_init(text: np.ndarray, scale: float, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [k, d], bias [k]) that make TextNet compute ``scale`` x the mean over blocks of cos(block, class text)."""
    k, D = text.shape
    m = d // D
    w = np.tile(np.asarray(text, dtype=np.float64), (1, m)) * scale / m
    return torch.tensor(w, dtype=torch.float32), torch.zeros(k)


@register_head("text-linear")
@dataclass(eq=False, repr=False)
class TextLinearHead(LinearHead):
    """A linear probe initialised from the class text embeddings of a vision-language backbone."""

    text_embeddings: str | None = None
    weight_decay: float = 0.0

    param_spec = {
        "text_embeddings": Param("path", help="the class text embeddings file `mito zero-shot` writes beside the store"),
        **LinearHead.param_spec,
    }

    def _validate_params(self) -> None:
        if self.text_embeddings is None or self.text_embeddings == "":
            raise HeadError(
                "text-linear needs text_embeddings=FILE: the class text embeddings `mito zero-shot` writes beside the store "
                "(fit-head: -p text_embeddings=FILE; bench passes them itself with --zero-shot)"
            )
        super()._validate_params()

    def class_text(self) -> tuple[np.ndarray, float]:
        """The [k, D] text embeddings of this head's classes (in ``classes_`` order) and the logit scale."""

        te = read_text_embeddings(str(self.text_embeddings))
        missing = [str(c) for c in self.classes_ if str(c) not in te.classes]
        if missing:
            raise HeadError(f"{self.text_embeddings} has no text embedding for class {missing[0]!r} (it has: {', '.join(te.classes)})")
        return te.matrix("", [str(c) for c in self.classes_]), te.logit_scale

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None, extra: FitArgs) -> None:
        self._init = self.class_text()
        super()._fit(X, y, X_val, y_val, extra)

    def _fit_stream(self, train: Any, y: np.ndarray, val: Any, y_val: np.ndarray | None, callbacks: Sequence[Callback] = ()) -> None:
        self._init = self.class_text()
        super()._fit_stream(train, y, val, y_val, callbacks)

    def _build(self, d: int, n_classes: int) -> TextNet:  # type: ignore[override]
        init = self.__dict__.pop("_init", None)
        if init is None:  # loading a saved head: the weights come from its file
            return TextNet(d, n_classes, int(getattr(self, "text_dim_", d)))
        text, scale = init
        net = TextNet(d, n_classes, text.shape[1])
        w, b = text_init(text, scale, d)
        with torch.no_grad():
            net.first.weight.copy_(w)
            net.first.bias.copy_(b)
        self.text_dim_ = text.shape[1]
        return net

    def _save_state(self, path: Path) -> dict[str, Any]:
        return {**super()._save_state(path), "text_dim": int(self.text_dim_)}

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        self.text_dim_ = int(state.get("text_dim", self.n_features_in_))
        super()._load_state(path, state)
