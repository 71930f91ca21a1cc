"""scikit-learn heads (logreg, knn): fitted arrays saved as safetensors, never pickled.

They take whole arrays, not batches, so feature noise is applied by training on the rows plus ``noise_copies``
noisy copies of them (a fresh draw per copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from mito.heads.base import Head, HeadError, augment_with_noise, balanced_accuracy, check_copy_params, register_head

MODEL_FILE = "model.safetensors"
AUTO_CS = (0.001, 0.01, 0.1, 1.0, 10.0)


@register_head("logreg")
class LogRegHead(Head):
    """L2 logistic regression (lbfgs); C="auto" picks C from 0.001..10 by validation balanced accuracy."""

    def __init__(
        self,
        C: float | str = 1.0,
        balance: bool = True,
        max_iter: int = 2000,
        noise: float = 0.0,
        noise_mode: str = "global",
        noise_copies: int = 4,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        self.C = C
        self.balance = balance
        self.max_iter = max_iter
        self.noise = noise
        self.noise_mode = noise_mode
        self.noise_copies = noise_copies
        self.n_threads = n_threads
        self.seed = seed

    def _validate_params(self) -> None:
        check_copy_params(self)
        if self.C != "auto" and (not isinstance(self.C, (int, float)) or self.C <= 0):
            raise HeadError(f"C must be a number > 0 or 'auto', got {self.C!r}")

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(
            C=C, class_weight="balanced" if self.balance else None, max_iter=self.max_iter, random_state=self.seed
        )

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        Xa, ya = augment_with_noise(X, y, self.noise, self.noise_mode, self.noise_copies, self.seed)
        Xa = Xa.astype(np.float32, copy=False)
        if self.C == "auto":
            if X_val is None:
                raise HeadError("C='auto' needs a validation set to choose C")
            scores = []
            for C in AUTO_CS:
                m = self._model(C).fit(Xa, ya)
                scores.append(balanced_accuracy(y_val, m.predict(X_val.astype(np.float32))))
            self.C_ = AUTO_CS[int(np.argmax(scores))]
        else:
            self.C_ = float(self.C)
        self.model_ = self._model(self.C_).fit(Xa, ya)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X.astype(np.float32, copy=False))

    def _save_state(self, path: Path) -> dict[str, Any]:
        save_file({"coef": self.model_.coef_, "intercept": self.model_.intercept_}, str(path / MODEL_FILE))
        return {"file": MODEL_FILE, "C": self.C_}

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        arrays = load_file(str(path / state["file"]))
        m = self._model(state["C"])
        m.coef_, m.intercept_ = arrays["coef"], arrays["intercept"]
        m.classes_ = np.arange(len(self.classes_))
        self.model_, self.C_ = m, state["C"]


@register_head("knn")
class KNNHead(Head):
    """k nearest neighbours (cosine by default); balance=True divides the vote shares by the class priors."""

    def __init__(
        self,
        n_neighbors: int = 15,
        metric: str = "cosine",
        weights: str = "distance",
        balance: bool = True,
        noise: float = 0.0,
        noise_mode: str = "global",
        noise_copies: int = 4,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weights = weights
        self.balance = balance
        self.noise = noise
        self.noise_mode = noise_mode
        self.noise_copies = noise_copies
        self.n_threads = n_threads
        self.seed = seed

    def _validate_params(self) -> None:
        check_copy_params(self)
        if not isinstance(self.n_neighbors, int) or self.n_neighbors < 1:
            raise HeadError(f"n_neighbors must be a whole number >= 1, got {self.n_neighbors!r}")
        if self.weights not in ("uniform", "distance"):
            raise HeadError(f"weights must be uniform or distance, got {self.weights!r}")
        if self.metric not in ("cosine", "euclidean", "manhattan"):
            raise HeadError(f"metric must be cosine, euclidean or manhattan, got {self.metric!r}")

    def _set(self, X: np.ndarray, y: np.ndarray) -> None:
        k = min(self.n_neighbors, len(X))
        self.model_ = KNeighborsClassifier(n_neighbors=k, metric=self.metric, weights=self.weights, algorithm="brute")
        self.model_.fit(X, y)
        self.X_, self.y_ = X, y
        prior = np.bincount(y, minlength=len(self.classes_)) / len(y)
        self.prior_ = np.maximum(prior, 1e-12)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        Xa, ya = augment_with_noise(X, y, self.noise, self.noise_mode, self.noise_copies, self.seed)
        self._set(Xa.astype(np.float32, copy=False), ya)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        p = np.zeros((len(X), len(self.classes_)))
        p[:, self.model_.classes_] = self.model_.predict_proba(X.astype(np.float32, copy=False))
        if self.balance:
            p = p / self.prior_
            p = p / p.sum(axis=1, keepdims=True)
        return p

    def _save_state(self, path: Path) -> dict[str, Any]:
        save_file({"X": np.ascontiguousarray(self.X_), "y": self.y_}, str(path / MODEL_FILE))
        return {"file": MODEL_FILE}

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        arrays = load_file(str(path / state["file"]))
        self._set(arrays["X"], arrays["y"])
