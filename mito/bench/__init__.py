"""Leaderboards: every feature set x head of a store scored on the same folds with paired statistics, and the row
kinds beside the heads (few-shot curves, zero-shot, domain shift, slide-level heads, LoRA runs), each made by a row
producer (mito.bench.row) on a typed :class:`Row`. Pictures and reports of them: mito.report."""

from typing import TYPE_CHECKING, Any

from mito.bench.cv import CVPlan, Fold, make_folds
from mito.bench.errors import BenchError
from mito.bench.fewshot import draw_shots, parse_shots
from mito.bench.leaderboard import (
    BenchConfig,
    FeatureSet,
    Leaderboard,
    all_feature_sets,
    load_leaderboard,
    merge_leaderboards,
    run_bench,
    save_leaderboard,
    sigterm_as_interrupt,
    task_summary_lines,
)
from mito.bench.row import Producer, Row, RowProducer, register_producer
from mito.bench.seeds import Reference, pool_benches
from mito.bench.slide_bench import DEFAULT_SLIDE_HEADS, SlideBenchConfig, run_slide_bench
from mito.bench.stats import (
    DelongResult,
    FriedmanResult,
    PairedResult,
    add_paired_columns,
    compare_rows,
    delong_test,
    friedman_nemenyi,
    holm,
    paired_bootstrap,
)
from mito.bench.umap import umap_points
from mito.core.metrics import METRIC_NAMES, bootstrap_ci, classification_metrics, fold_summary
from mito.core.tasks import TaskSpec, available_tasks, resolve_task
from mito.datasets import PROXY_TASKS

# LoRA fine-tuning needs torch: its names load on first use, so that importing mito.bench (every bench worker does, to
# unpickle its job) does not load torch for knn, logreg or lightgbm
if TYPE_CHECKING:
    from mito.bench.finetune import FinetuneConfig, FinetunedModel, load_finetuned, predict_finetuned, run_finetune
_FINETUNE = ("FinetuneConfig", "FinetunedModel", "load_finetuned", "predict_finetuned", "run_finetune")


def __getattr__(name: str) -> Any:
    if name in _FINETUNE:
        from mito.bench import finetune

        return getattr(finetune, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_SLIDE_HEADS",
    "METRIC_NAMES",
    "PROXY_TASKS",
    "BenchConfig",
    "BenchError",
    "CVPlan",
    "DelongResult",
    "FeatureSet",
    "FinetuneConfig",
    "Fold",
    "FriedmanResult",
    "Leaderboard",
    "PairedResult",
    "Producer",
    "Reference",
    "Row",
    "RowProducer",
    "SlideBenchConfig",
    "TaskSpec",
    "add_paired_columns",
    "all_feature_sets",
    "available_tasks",
    "bootstrap_ci",
    "classification_metrics",
    "compare_rows",
    "delong_test",
    "draw_shots",
    "fold_summary",
    "friedman_nemenyi",
    "holm",
    "FinetunedModel",
    "load_finetuned",
    "load_leaderboard",
    "make_folds",
    "merge_leaderboards",
    "paired_bootstrap",
    "parse_shots",
    "pool_benches",
    "predict_finetuned",
    "register_producer",
    "resolve_task",
    "run_bench",
    "run_finetune",
    "run_slide_bench",
    "save_leaderboard",
    "sigterm_as_interrupt",
    "task_summary_lines",
    "umap_points",
]
