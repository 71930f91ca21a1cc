"""scikit-learn heads (logreg, knn): fitted arrays saved as safetensors, never pickled.

They take whole arrays, not batches, so feature noise is applied by training on the rows plus ``noise_copies``
noisy copies of them (a fresh draw per copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression

from mito.heads.base import CopiesHead, FitArgs, HeadError, balanced_accuracy, register_head
from mito.heads.params import COMMON, COPIES, Param, balance_mode

MODEL_FILE = "model.safetensors"
AUTO_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
DIST_DECIMALS = 9  # knn: cosine distances rounded to this many decimals (float64 noise is ~1e-15: reproducible)
_BLOCK_VALUES = 1 << 22  # knn: distances computed in blocks of at most this many (32 MiB of float64)


@register_head("logreg")
@dataclass(eq=False, repr=False)
class LogRegHead(CopiesHead):
    """L2 logistic regression (lbfgs); C="auto" picks C from 0.001..10 by validation balanced accuracy."""

    C: float | str = 1.0
    balance: bool = True
    max_iter: int = 2000

    param_spec = {
        "C": Param("float", 0, math.inf, low_open=True, also=("auto",), help="inverse L2 strength; auto: chosen on the validation rows"),
        "balance": Param("balance", choices=("weights", "none"), help="class weights inverse to frequency"),
        "max_iter": Param("int", 1, help="lbfgs iterations"),
        **COMMON,
        **COPIES,
    }

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(
            C=C,
            class_weight="balanced" if balance_mode(self.balance) == "weights" else None,
            max_iter=self.max_iter,
            random_state=self.seed,
        )

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None, extra: FitArgs) -> None:
        Xa, ya = self._with_copies(X, y, extra)
        Xa = Xa.astype(np.float32, copy=False)
        if self.C == "auto":
            if X_val is None or y_val is None:  # Head.fit passes both or neither
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
        k = 1 if len(self.classes_) == 2 else len(self.classes_)
        if arrays.get("coef", np.zeros(0)).shape != (k, self.n_features_in_) or arrays.get("intercept", np.zeros(0)).shape != (k,):
            raise HeadError(f"{path / state['file']} does not hold this logreg head's coefficients")
        m = self._model(state["C"])
        m.coef_, m.intercept_ = arrays["coef"], arrays["intercept"]
        m.classes_ = np.arange(len(self.classes_))
        self.model_, self.C_ = m, state["C"]


@register_head("knn")
@dataclass(eq=False, repr=False)
class KNNHead(CopiesHead):
    """k nearest neighbours (cosine by default); balance=True divides the vote shares by the class priors.

    Exact and reproducible: a row's probabilities depend on that row alone, never on the other rows predicted with
    it, the thread count or the BLAS. Cosine distances are computed in float64 and rounded to DIST_DECIMALS
    decimals (float64 rounding noise is ~1e-15, so the rounded value is the same on every machine, and a tile at
    distance 0 of a training row is exactly 0); euclidean and manhattan use scipy's cdist, whose loops are exact for
    identical rows and do not depend on BLAS. Ties are broken by training-row index.
    """

    n_neighbors: int = 15
    metric: str = "cosine"
    weights: str = "distance"
    balance: bool = True

    param_spec = {
        "n_neighbors": Param("int", 1, help="neighbours that vote"),
        "metric": Param("choice", choices=("cosine", "euclidean", "manhattan")),
        "weights": Param("choice", choices=("uniform", "distance"), help="distance: votes weighted by 1/distance"),
        "balance": Param("balance", choices=("weights", "none"), help="weights: vote shares divided by the class priors"),
        **COMMON,
        **COPIES,
    }

    def _set(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X_ = np.ascontiguousarray(X, dtype=np.float32)
        self.y_ = np.asarray(y, dtype=np.int64)
        if self.y_.ndim != 1 or len(self.y_) != len(self.X_) or len(self.X_) == 0:
            raise HeadError(f"knn training arrays disagree: {self.X_.shape} rows, {self.y_.shape} labels")
        if self.y_.min() < 0 or self.y_.max() >= len(self.classes_):
            raise HeadError("knn training labels out of range for the classes")
        self.norms_ = np.sqrt(np.einsum("ij,ij->i", self.X_.astype(np.float64), self.X_.astype(np.float64)))
        prior = np.bincount(self.y_, minlength=len(self.classes_)) / len(self.y_)
        self.prior_ = np.maximum(prior, 1e-12)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None, extra: FitArgs) -> None:
        Xa, ya = self._with_copies(X, y, extra)
        self._set(Xa, ya)

    def _distances(self, Q: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Distances (float64, rounded) from the query rows to training rows start:stop."""
        T = self.X_[start:stop].astype(np.float64)
        if self.metric == "cosine":
            q = Q.astype(np.float64)
            qn = np.sqrt(np.einsum("ij,ij->i", q, q))
            denom = np.outer(np.where(qn > 0, qn, 1.0), np.where(self.norms_[start:stop] > 0, self.norms_[start:stop], 1.0))
            D = 1.0 - (q @ T.T) / denom
            np.clip(D, 0.0, 2.0, out=D)
            return np.round(D, DIST_DECIMALS)
        from scipy.spatial.distance import cdist

        return cdist(Q.astype(np.float64), T, metric="cityblock" if self.metric == "manhattan" else "euclidean")

    def _neighbours(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances, training-row indices) of the k nearest rows of each query row, nearest first, ties by index."""
        n, k = len(self.X_), min(self.n_neighbors, len(self.X_))
        step = max(1, _BLOCK_VALUES // max(1, len(Q)))
        best_d = np.empty((len(Q), 0))
        best_i = np.empty((len(Q), 0), np.int64)
        for start in range(0, n, step):
            stop = min(n, start + step)
            D = np.concatenate([best_d, self._distances(Q, start, stop)], axis=1)
            I = np.concatenate([best_i, np.broadcast_to(np.arange(start, stop), (len(Q), stop - start))], axis=1)  # noqa: E741 (distances D, indices I, as faiss names them)
            order = np.lexsort((I, D), axis=1)[:, :k]  # by distance, then index: deterministic under ties
            best_d = np.take_along_axis(D, order, axis=1)
            best_i = np.take_along_axis(I, order, axis=1)
        return best_d, best_i

    def _proba(self, X: np.ndarray) -> np.ndarray:
        rows = max(1, min(len(X), _BLOCK_VALUES // max(1, min(len(self.X_), _BLOCK_VALUES))))
        p = np.zeros((len(X), len(self.classes_)))
        for s in range(0, len(X), rows):
            d, idx = self._neighbours(X[s : s + rows])
            if self.weights == "distance":
                exact = d == 0
                with np.errstate(divide="ignore"):
                    w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), 1.0 / d)
            else:
                w = np.ones_like(d)
            labels = self.y_[idx]
            for c in range(len(self.classes_)):
                p[s : s + rows, c] = np.where(labels == c, w, 0.0).sum(axis=1)
        p = p / p.sum(axis=1, keepdims=True)
        if balance_mode(self.balance) == "weights":
            p = p / self.prior_
            p = p / p.sum(axis=1, keepdims=True)
        return p

    def _save_state(self, path: Path) -> dict[str, Any]:
        save_file({"X": self.X_, "y": self.y_}, str(path / MODEL_FILE))
        return {"file": MODEL_FILE}

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        arrays = load_file(str(path / state["file"]))
        if set(arrays) != {"X", "y"} or arrays["X"].ndim != 2 or arrays["X"].shape[1] != self.n_features_in_:
            raise HeadError(f"{path / state['file']} does not hold this knn head's training rows")
        self._set(arrays["X"], arrays["y"])
