"""Metrics, cross-validation, leaderboards, LoRA runs, UMAP and reports."""

from mito.bench.metrics import METRIC_NAMES, classification_metrics

__all__ = ["METRIC_NAMES", "classification_metrics"]
