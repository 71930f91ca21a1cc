"""Metrics, cross-validation, leaderboards, LoRA runs, UMAP and reports.

Torch, peft, umap and matplotlib load only when their functions are first used.
"""

from __future__ import annotations

from typing import Any

from mito.bench.cv import CVPlan, Fold, make_folds
from mito.bench.errors import BenchError
from mito.bench.slide_bench import SlideBenchConfig, run_slide_bench, slide_bench_cli
from mito.bench.leaderboard import (
    BenchConfig,
    FeatureSet,
    Leaderboard,
    all_feature_sets,
    leaderboard_table,
    load_leaderboard,
    merge_leaderboards,
    run_bench,
    save_leaderboard,
)
from mito.bench.stats import (
    DelongResult, FriedmanResult, PairedResult, add_paired_columns, compare_rows, comparison_text, delong_test, friedman_nemenyi, holm,
    paired_bootstrap,
)
from mito.metrics import METRIC_NAMES, bootstrap_ci, classification_metrics, fold_summary
from mito.tasks import PROXY_TASKS, TaskSpec, available_tasks, resolve_task

_LAZY = {
    "FinetuneConfig": "mito.bench.finetune",
    "run_finetune": "mito.bench.finetune",
    "load_finetuned": "mito.bench.finetune",
    "is_finetuned": "mito.bench.finetune",
    "predict_finetuned": "mito.bench.finetune",
    "umap_plot": "mito.bench.umap",
    "build_report": "mito.bench.report",
    "quick_bench": "mito.bench.report",
    "draw_shots": "mito.bench.fewshot",
    "parse_shots": "mito.bench.fewshot",
    "learning_curve_figure": "mito.bench.fewshot",
    "curve_rich_table": "mito.bench.fewshot",
}

__all__ = [
    "add_paired_columns",
    "compare_rows",
    "comparison_text",
    "SlideBenchConfig",
    "run_slide_bench",
    "slide_bench_cli",
    "METRIC_NAMES",
    "PROXY_TASKS",
    "BenchConfig",
    "BenchError",
    "CVPlan",
    "DelongResult",
    "FeatureSet",
    "FriedmanResult",
    "Fold",
    "Leaderboard",
    "PairedResult",
    "TaskSpec",
    "all_feature_sets",
    "available_tasks",
    "bootstrap_ci",
    "classification_metrics",
    "delong_test",
    "friedman_nemenyi",
    "holm",
    "fold_summary",
    "leaderboard_table",
    "load_leaderboard",
    "make_folds",
    "merge_leaderboards",
    "paired_bootstrap",
    "resolve_task",
    "run_bench",
    "save_leaderboard",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mito.bench' has no attribute {name!r}")
