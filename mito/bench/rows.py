"""What every leaderboard row is made of, whichever kind makes it (heads, few-shot, zero-shot, slide, LoRA): its feature
set's name, its id, one head fitted on one fold (in a worker process), the jobs run in parallel, and the scoring of a
row from its folds' test predictions."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mito.bench.cv import CVPlan, Fold
from mito.bench.stats import row_delong_ci
from mito.core.interrupts import ignore_in_worker, spawning_workers, start_quiet_resource_tracker
from mito.core.metrics import METRIC_NAMES, bootstrap_ci, classification_metrics, fold_summary, per_class_summary, positive_index
from mito.core.progress import add_task, advance, progress_bar
from mito.core.tasks import TaskSpec
from mito.heads import fit_on_rows, make_head, metadata_categories
from mito.store import open_store


@dataclass(frozen=True)
class FeatureSet:
    """Store variants read side by side as one feature matrix."""

    backbone: str
    name: str
    keys: tuple[str, ...]


# ------------------------------------------------------------------ feature sets
def split_key(key: str) -> tuple[str, str, str]:
    """(backbone, zoom, colour) of a variant key; an augmented view keeps its suffix in the colour (rgb:hed0)."""
    bb, zoom, color = key.split(":", 2)  # an augmented view keeps its suffix in the colour: rgb:hed0
    return bb, zoom, color


def describe_keys(keys: Sequence[str]) -> tuple[str, str]:
    """(backbone, features) labels for a list of variant keys, e.g. ``("efficientnet_lite0", "z1+z2:rgb+gray")``."""
    parts = [split_key(k) for k in keys]
    bbs = list(dict.fromkeys(p[0] for p in parts))
    zooms = list(dict.fromkeys(p[1] for p in parts))
    colors = list(dict.fromkeys(p[2] for p in parts))
    full_product = len(parts) == len(bbs) * len(zooms) * len(colors) and len(set(parts)) == len(parts)
    if full_product:
        return "+".join(bbs), f"{'+'.join(zooms)}:{'+'.join(colors)}"
    return "+".join(bbs), "+".join(f"{p[0]}:{p[1]}:{p[2]}" if len(bbs) > 1 else f"{p[1]}:{p[2]}" for p in parts)


# ------------------------------------------------------------------ fitting (runs in worker processes)
# Bytes of features one bench job may hold (in memory up to half of it, else streamed with buffers in a quarter).
# Fixed, not a share of the free memory or of the cores: whether a head streams, hence its scores, must not
# depend on the machine the leaderboard runs on.
JOB_FEATURE_BUDGET = 256 << 20


def _features(store_path: str) -> Any:
    """The store, opened for one job (features are read per job as float16, never cached whole; the caller closes it)."""
    return open_store(store_path)


def fit_one(
    store_path: str,
    keys: tuple[str, ...],
    head: str,
    params: dict[str, Any],
    fold: Fold,
    y: np.ndarray,
    classes: list[str],
    standardize: bool = False,
    pca: int | None = None,
    metadata_columns: Sequence[str] = (),
    stream: bool | None = None,
    memory_budget: int | None = None,
    buffer_rows: int | None = None,
) -> dict[str, Any]:
    """Fit one head on one fold through mito.heads.fit_on_rows (the one fit path: float16 features, streamed when they
    would not fit ``memory_budget``, metadata one-hots, the optional standardise/PCA pipeline fitted on the training rows).

    Returns the test probabilities (columns = ``classes``) and timings.
    """
    h = make_head(head, **params)
    with _features(store_path) as store:
        cats = metadata_categories(store.tiles, metadata_columns) if metadata_columns else {}
        r = fit_on_rows(
            store,
            keys,
            {"train": fold.train, "val": fold.val, "test": fold.test},
            y,
            h,
            standardize=standardize,
            pca=pca,
            categories=cats,
            stream=stream,
            memory_budget=memory_budget,
            seed=int(params.get("seed", 0)),
            **({"buffer_rows": buffer_rows} if buffer_rows else {}),
        )
    raw = np.asarray(r.scored["test"][1], dtype=np.float64)
    proba = np.zeros((len(fold.test), len(classes)))
    col = {str(c): i for i, c in enumerate(classes)}
    for j, c in enumerate(h.classes_):
        proba[:, col[str(c)]] = raw[:, j]
    hp = h.get_params()
    return {
        "proba": proba,
        "train_seconds": r.pipeline_seconds + r.train_seconds,
        "predict_seconds": r.predict_seconds,
        "streamed": r.streamed,
        "params": {k: v for k, v in hp.items() if _jsonable(v)},
    }


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ rows
def row_id(task: str, backbone: str, features: str, head: str, noise: float, extra: str = "") -> str:
    """A short stable id for a leaderboard row (keys its predictions)."""
    return hashlib.sha1(f"{task}|{backbone}|{features}|{head}|{noise!r}|{extra}".encode()).hexdigest()[:12]


def score_row(
    base: dict[str, Any],
    spec: TaskSpec,
    plan: CVPlan,
    y: np.ndarray,
    classes: list[str],
    fold_results: Sequence[dict[str, Any]],
    folds: Sequence[Fold],
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics per fold -> mean/std, a bootstrap CI of the main metric, DeLong's AUROC CI (two classes), summed
    confusion matrix, per-class recall and precision; and the predictions (with the column of the task's positive
    class when it has two)."""
    positive = spec.positive if len(classes) == 2 else None
    per_fold = [classification_metrics(y[f.test], r["proba"], classes, positive) for f, r in zip(folds, fold_results)]
    arrays = fold_predictions(folds, fold_results, y, classes, positive)
    lo, hi = (
        bootstrap_ci(
            np.asarray(classes, dtype=object)[arrays["y"]],
            arrays["proba"],
            classes,
            spec.main_metric,
            fold=arrays["fold"],
            tile=arrays["row"],
            n_boot=n_boot,
            seed=seed,
            positive=positive,
        )
        if n_boot > 0
        else (math.nan, math.nan)
    )
    row = {
        **base,
        **fold_summary(per_fold),
        "main_metric": spec.main_metric,
        "ci_low": lo,
        "ci_high": hi,
        **dict(zip(("auroc_delong_low", "auroc_delong_high"), row_delong_ci(arrays))),
        **fit_sizes(folds, fold_results),
        "n_folds": len(folds),
        "cv": plan.mode,
        "fold_fingerprint": plan.fingerprint,
        **class_summary(per_fold, classes, positive),
        "per_fold": [{k: m[k] for k in METRIC_NAMES} for m in per_fold],
    }
    return row, arrays


def fold_predictions(
    folds: Sequence[Fold], fold_results: Sequence[dict[str, Any]], y: np.ndarray, classes: list[str], positive: str | None
) -> dict[str, np.ndarray]:
    """A row's predictions.npz arrays: fold, store row, label index and probabilities of every test prediction (and
    the positive class's column when the task has two classes)."""
    index = {c: i for i, c in enumerate(classes)}
    arrays = {
        "fold": np.concatenate([np.full(len(f.test), f.index) for f in folds]),
        "row": np.concatenate([f.test for f in folds]),
        "y": np.concatenate([np.array([index[v] for v in y[f.test]]) for f in folds]),
        "proba": np.concatenate([r["proba"].astype(np.float32) for r in fold_results]),
    }
    if positive is not None:
        arrays["positive"] = np.array(positive_index(classes, positive), dtype=np.int64)
    return arrays


def fit_sizes(folds: Sequence[Fold], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean seconds to train and to predict per fit, and mean training, validation and test rows per fit."""
    return {
        "train_seconds": float(np.mean([r["train_seconds"] for r in results])),
        "predict_seconds": float(np.mean([r.get("predict_seconds", math.nan) for r in results])),
        "n_train": int(round(np.mean([len(f.train) for f in folds]))),
        "n_val": int(round(np.mean([len(f.val) for f in folds]))),
        "n_test": int(round(np.mean([len(f.test) for f in folds]))),
    }


def class_summary(per_fit: Sequence[dict[str, Any]], classes: list[str], positive: str | None) -> dict[str, Any]:
    """The classes, the positive one, the confusion matrix summed over fits and per-class recall and precision."""
    cm = np.sum([np.asarray(m["confusion_matrix"], dtype=np.int64) for m in per_fit], axis=0)
    return {
        "classes": list(classes),
        "positive": positive,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class_summary(per_fit, classes),
    }


# ------------------------------------------------------------------ parallel jobs
def run_parallel(
    Parallel: Any, calls: Iterable[Any], total: int, n_jobs: int, progress: bool, what: str, preload: Sequence[str] = ()
) -> list[Any]:
    """Run joblib calls keeping their order, with a rich progress bar. On Ctrl-C, SIGTERM or a failed job, no
    worker outlives the call: the workers ignore those signals (the parent decides) and are killed here. Each
    worker imports ``preload`` first (the modules of the heads it will train, see ``ignore_in_worker``)."""
    calls = list(calls)
    gen: Iterable[Any] | None = None
    out = []
    try:
        if n_jobs == 1:
            gen = (fn(*a, **kw) for fn, a, kw in calls)
        else:
            from joblib.parallel import LokyBackend

            start_quiet_resource_tracker()
            with spawning_workers():  # the workers (and loky's threads that start more) inherit the blocked signals
                backend = LokyBackend(initializer=ignore_in_worker, initargs=(os.getpid(), tuple(preload)))
                gen = Parallel(n_jobs=n_jobs, return_as="generator", backend=backend)(calls)
        with progress_bar(unit="jobs", enabled=progress) as bar:
            tid, t0 = add_task(bar, what, total), time.perf_counter()
            for r in gen:
                out.append(r)
                advance(bar, tid, 1, t0, len(out))
    except BaseException:
        if n_jobs != 1:
            stop_workers(gen)
        raise
    return out


def stop_workers(gen: Any) -> None:
    """Kill the loky workers still running ``gen``'s jobs and wait for them (seconds, not their jobs' minutes).

    Closing joblib's generator aborts its run, which kills the workers (SIGKILL) and joins them; joblib's note that
    the generator was left early is not news here."""
    if gen is None or not hasattr(gen, "close"):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen.close()
