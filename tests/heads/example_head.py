"""A head added the way any new head is: one module, its options declared once, one registration.

The conformance tests (tests/heads/test_conformance.py) pick it up from the registry: declaration, refused values,
fit/save/load round trip and the model contract, with no change to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from mito.heads.base import Head
from mito.heads.model import register
from mito.heads.params import COMMON, Param


@register("tile", "nearest-centroid")
class NearestCentroidHead(Head):
    """Softmax over negative squared distances to the class centroids (shrunk toward the overall mean)."""

    param_spec = {"shrink": Param("float", 0, 1, help="pull of each centroid toward the overall mean"), **COMMON}

    def __init__(
        self, shrink: float = 0.0, noise: float = 0.0, noise_mode: str = "global", n_threads: int | None = None, seed: int = 0
    ) -> None:
        self.shrink, self.noise, self.noise_mode, self.n_threads, self.seed = shrink, noise, noise_mode, n_threads, seed

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: Any, y_val: Any, extra: Any) -> None:
        X = X.astype(np.float64)
        means = np.stack([X[y == k].mean(0) for k in range(len(self.classes_))])
        self.centroids_ = (1 - self.shrink) * means + self.shrink * X.mean(0)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        d = ((X.astype(np.float64)[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
        z = np.exp(-(d - d.min(1, keepdims=True)) / X.shape[1])
        return z / z.sum(1, keepdims=True)

    def _save_state(self, path: Path) -> dict[str, Any]:
        save_file({"centroids": self.centroids_}, str(path / "model.safetensors"))
        return {"file": "model.safetensors"}

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        self.centroids_ = load_file(str(path / state["file"]))["centroids"]
