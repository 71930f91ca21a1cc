"""LightGBM head: gradient-boosted trees, early-stopped on validation balanced accuracy, saved in LightGBM's text format.

Feature noise works as for the scikit-learn heads: the rows plus ``noise_copies`` noisy copies.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mito.heads.base import (
    CopiesHead,
    FitArgs,
    HeadError,
    balanced_accuracy,
    class_weights,
    default_threads,
    register_head,
)
from mito.heads.params import COMMON, COPIES, Param, balance_mode

MODEL_FILE = "model.lgb.txt"


@register_head("lightgbm")
@dataclass(eq=False, repr=False)
class LightGBMHead(CopiesHead):
    """Boosted trees (lightgbm.train); with a validation set, stops after ``patience`` rounds without gain.

    n_threads=None: one thread for small data, else the idle cores (see base.default_threads).
    """

    n_estimators: int = 500
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 20
    subsample: float = 0.8
    colsample: float = 0.3
    reg_lambda: float = 1.0
    balance: bool = True
    patience: int = 50

    param_spec = {
        **{k: Param("int", 1) for k in ("n_estimators", "num_leaves", "min_child_samples", "patience")},
        "learning_rate": Param("float", 0, math.inf, low_open=True),
        "subsample": Param("float", 0, 1, low_open=True, help="share of rows per tree"),
        "colsample": Param("float", 0, 1, low_open=True, help="share of feature columns per tree"),
        "reg_lambda": Param("float", 0, math.inf, help="L2 on leaf values"),
        "balance": Param("balance", choices=("weights", "none"), help="row weights inverse to class frequency"),
        **COMMON,
        **COPIES,
    }

    def _params(self, n_classes: int, n_values: int) -> dict[str, Any]:
        binary = n_classes == 2
        return {
            "objective": "binary" if binary else "multiclass",
            **({} if binary else {"num_class": n_classes}),
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1 else 0,
            "feature_fraction": self.colsample,
            "lambda_l2": self.reg_lambda,
            "num_threads": self.n_threads or default_threads(n_values, os.cpu_count() or 1),
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
            "metric": "None",
        }

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None, extra: FitArgs) -> None:
        import lightgbm as lgb

        k = len(self.classes_)
        Xa, ya = self._with_copies(X, y, extra)
        w = class_weights(ya, k)[ya] if balance_mode(self.balance) == "weights" else None
        train = lgb.Dataset(Xa.astype(np.float32, copy=False), ya, weight=w, free_raw_data=True)
        kw: dict[str, Any] = {}
        if X_val is not None and y_val is not None:  # Head.fit passes both or neither
            y_true = y_val
            valid = lgb.Dataset(X_val.astype(np.float32, copy=False), y_true, reference=train)

            def bal_acc(preds: np.ndarray, data: Any) -> tuple[str, float, bool]:
                p = preds.reshape(len(y_true), -1) if k > 2 else np.stack([1 - preds, preds], axis=1)
                return "balanced_accuracy", balanced_accuracy(y_true, p.argmax(axis=1)), True

            kw = {
                "valid_sets": [valid],
                "feval": bal_acc,
                "callbacks": [lgb.early_stopping(self.patience, first_metric_only=True, verbose=False)],
            }
        self.booster_ = lgb.train(self._params(k, Xa.size), train, num_boost_round=self.n_estimators, **kw)
        self.best_iteration_ = int(self.booster_.best_iteration or self.booster_.current_iteration())

    def _proba(self, X: np.ndarray) -> np.ndarray:
        p = np.asarray(self.booster_.predict(X.astype(np.float32, copy=False), num_iteration=self.best_iteration_))
        return p if p.ndim == 2 else np.stack([1 - p, p], axis=1)

    def _save_state(self, path: Path) -> dict[str, Any]:
        self.booster_.save_model(str(path / MODEL_FILE), num_iteration=self.best_iteration_)
        return {"file": MODEL_FILE, "best_iteration": self.best_iteration_}

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        import lightgbm as lgb

        f = path / state.get("file", MODEL_FILE)
        if not f.is_file():
            raise HeadError(f"no LightGBM model file {f}")
        self.booster_ = lgb.Booster(model_file=str(f))
        self.best_iteration_ = int(state.get("best_iteration") or self.booster_.current_iteration())
