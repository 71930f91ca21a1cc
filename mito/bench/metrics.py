"""Classification metrics, all from scikit-learn, shared by heads (metrics.json) and the leaderboard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("balanced_accuracy", "auroc", "kappa", "weighted_f1", "pr_auc")


def classification_metrics(y_true: Sequence[Any], proba: np.ndarray, classes: Sequence[Any]) -> dict[str, Any]:
    """Balanced accuracy, AUROC (one-vs-rest macro when multi-class), Cohen's kappa, weighted F1, PR-AUC, confusion matrix.

    ``proba`` has one column per entry of ``classes`` (in that order); ``y_true`` holds class labels.
    """
    classes = list(classes)
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y_true), len(classes)):
        raise ValueError(f"proba must be (n, {len(classes)}), got {proba.shape}")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in y_true if v not in index})
    if unknown:
        raise ValueError(f"labels not among the classes {classes}: {unknown[:5]}")
    yi = np.array([index[v] for v in y_true], dtype=np.int64)
    pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    out: dict[str, Any] = {
        "n": int(len(yi)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yi, pred)),
        "kappa": float(skm.cohen_kappa_score(yi, pred, labels=labels)),
        "weighted_f1": float(skm.f1_score(yi, pred, average="weighted", labels=labels, zero_division=0)),
        "accuracy": float(skm.accuracy_score(yi, pred)),
        "confusion_matrix": skm.confusion_matrix(yi, pred, labels=labels).tolist(),
        "classes": [str(c) for c in classes],
    }
    present = np.unique(yi)
    if present.size < 2:
        out["auroc"] = float("nan")
        out["pr_auc"] = float("nan")
    elif len(classes) == 2:
        out["auroc"] = float(skm.roc_auc_score(yi, proba[:, 1]))
        out["pr_auc"] = float(skm.average_precision_score(yi, proba[:, 1]))
    else:
        onehot = np.eye(len(classes))[yi][:, present]
        p = proba[:, present]
        p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        out["auroc"] = float(skm.roc_auc_score(onehot, p, average="macro", multi_class="ovr"))
        out["pr_auc"] = float(skm.average_precision_score(onehot, p, average="macro"))
    return out
