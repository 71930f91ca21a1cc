"""The leaderboard's row, typed, and the row producers a bench is a loop over.

A bench plans its fits with every producer (heads, shift, zero-shot, few-shot, rows of other leaderboards, slide
heads, ...), fits the planned jobs (producers that share a ``pool`` share one run of worker processes), turns each
producer's fits into scored :class:`Row` s and only then builds the table: ranks, gaps and paired statistics are
columns of the whole table (mito.bench.leaderboard). Adding a row kind is one producer class, registered with
:func:`register_producer`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mito.bench.cv import CVPlan, Fold
from mito.bench.rows import FeatureSet, fit_one, run_parallel
from mito.core.tasks import TaskSpec
from mito.heads import head_modules

ALWAYS = ("noise", "kind")  # fields every row's record has, set or default (rank_rows and add_gaps key on them)


class Row(BaseModel):
    """One leaderboard row: what was fitted (task, feature set, head, noise, kind), how (budget, params, folds) and its
    scores (mean/std per metric over folds, CIs, timings). Fields a row kind does not have stay unset and are absent
    from its record (the table shows NaN there), as in leaderboards written before this model."""

    model_config = ConfigDict(extra="allow")  # columns of leaderboards from other mito versions are kept

    # what: declared in the order of the table's columns (the order of leaderboard.json's keys)
    task: str
    backbone: str
    features: str
    head: str
    noise: float = 0.0
    kind: str = "head"
    held_out: str | None = None  # shift rows: the held-out group ("" = in-domain)
    shots: str | None = None  # K-shot rows: K ("all" = every training tile)
    budget: str = ""
    params: str = "{}"  # JSON of the head's parameters
    row_id: str
    keys: list[str] = Field(default_factory=list)
    # scores: mean and std over folds (K-shot rows: over draws x folds, std over draws)
    balanced_accuracy: float = math.nan
    balanced_accuracy_std: float = math.nan
    auroc: float = math.nan
    auroc_std: float = math.nan
    kappa: float = math.nan
    kappa_std: float = math.nan
    weighted_f1: float = math.nan
    weighted_f1_std: float = math.nan
    pr_auc: float = math.nan
    pr_auc_std: float = math.nan
    ece: float = math.nan
    ece_std: float = math.nan
    ece_equal_mass: float = math.nan
    ece_equal_mass_std: float = math.nan
    brier: float = math.nan
    brier_std: float = math.nan
    main_metric: str
    ci_low: float = math.nan
    ci_high: float = math.nan
    auroc_delong_low: float = math.nan
    auroc_delong_high: float = math.nan
    train_seconds: float = math.nan
    predict_seconds: float = math.nan
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    n_folds: int = 0
    cv: str | None = None
    fold_fingerprint: str | None = None
    classes: list[Any] = Field(default_factory=list)
    positive: Any = None  # two classes: the positive class
    confusion_matrix: list[list[int]] = Field(default_factory=list)
    per_class: dict[str, Any] = Field(default_factory=dict)
    per_fold: list[dict[str, Any]] = Field(default_factory=list)
    short_classes: dict[str, int] | None = None  # K-shot rows: classes with fewer than K training tiles
    draws: int | None = None  # K-shot rows: seeded draws per fold
    search: list[dict[str, Any]] | None = None  # search rows: per fold, the selected variants and the search path
    # columns of the ranked table (rank, gap, paired statistics): set on rows read back from a leaderboard
    rank: int | None = None
    gap: float | None = None
    delta_vs_best: float | None = None
    p_vs_best: float | None = None
    tied_with_best: bool | None = None
    auroc_delta_vs_best: float | None = None
    auroc_p_vs_best: float | None = None
    paired_note: str | None = None

    def record(self) -> dict[str, Any]:
        """The row as the table holds it: the fields that were set (and what every row has: noise, kind), in column order."""
        return {k: v for k, v in self.model_dump().items() if k in self.model_fields_set or k in ALWAYS}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Row:
        """A row read back from a leaderboard table: an empty cell (None, or NaN where the field is no number) is a
        field the row does not have."""
        return cls(**{k: v for k, v in record.items() if not _missing(k, v)})


_NAN_OK = {k for k, f in Row.model_fields.items() if f.annotation in (float, float | None, Any)}
_NONE_OK = {k for k, f in Row.model_fields.items() if f.annotation is Any or type(None) in get_args(f.annotation)}


def _missing(field: str, v: Any) -> bool:
    """Whether a cell read back for ``field`` is empty (and not a value the field holds, like NaN for a metric)."""
    if v is None:
        return field in Row.model_fields and field not in _NONE_OK
    return isinstance(v, float) and math.isnan(v) and field in Row.model_fields and field not in _NAN_OK


@dataclass
class Scored:
    """A scored row and its test predictions (arrays keyed fold/row/y/proba[/draw/positive], see predictions.npz)."""

    row: Row
    arrays: dict[str, np.ndarray] | None  # None: a row read back without its predictions


def scored(pair: tuple[dict[str, Any], dict[str, np.ndarray]]) -> Scored:
    """(row dict, arrays) as score_row returns them -> a typed :class:`Scored`."""
    return Scored(Row(**pair[0]), pair[1])


@dataclass(frozen=True)
class FitJob:
    """One fit a producer planned: ``key`` groups the fits of one row, ``call`` is a joblib call (fn, args, kwargs)."""

    key: tuple[Any, ...]
    call: tuple[Any, tuple[Any, ...], dict[str, Any]]
    unit: Any = None  # what the fit was scored on: its fold (K-shot rows: (draw, fold))
    head: str = ""  # the head it fits (its workers import the head's module first)


@dataclass
class BenchContext:
    """What every tile-level producer plans from: the config, the feature sets, heads and noise levels, each task's
    (spec, labels, classes, folds), the folds rows are scored on by (task, held-out group; "" = in-domain), the
    zero-shot text plan and the fit options."""

    cfg: Any  # the run's mito.bench.leaderboard.BenchConfig
    sets: list[FeatureSet]
    heads: list[str]
    noises: list[float | None]
    plans: dict[str, tuple[TaskSpec, np.ndarray, list[str], CVPlan]]
    evals: dict[tuple[str, str], CVPlan]
    text: Any  # mito.bench.zeroshot.TextPlan
    options: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # what one producer alone needs (e.g. the shift plans)

    def fit_call(self, fs: FeatureSet, head: str, params: dict[str, Any], fold: Fold, task: str) -> Any:
        """The joblib call fitting ``head`` on ``fs`` for one fold of ``task`` (mito.bench.rows.fit_one)."""
        from joblib import delayed

        cfg, (_, y, classes, _) = self.cfg, self.plans[task]
        return delayed(fit_one)(str(cfg.store), fs.keys, head, params, fold, y, classes, cfg.standardize, cfg.pca, **self.options)

    def budget_suffix(self) -> str:
        """What the budget line of every trained row adds about the feature pipeline."""
        return (", standardised" if self.cfg.standardize else "") + (f", pca {self.cfg.pca}" if self.cfg.pca else "")


class RowProducer(Protocol):
    """A kind of leaderboard row. ``plan`` checks its part of the config and lists its fits (it runs before any fit,
    so a bad option fails early); ``score`` turns them into rows: scoring calls (run in the ``pool``'s workers) or
    rows already scored; ``meta`` adds what leaderboard.json records about the kind to the bench's meta."""

    pool: ClassVar[str]  # producers with the same pool fit (and score) in one run of workers
    fit_label: ClassVar[str]  # progress bar of the fits
    score_label: ClassVar[str]  # progress bar of the scoring

    def plan(self, ctx: Any) -> list[FitJob]: ...

    def score(self, ctx: Any, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]: ...

    def meta(self, ctx: Any, meta: dict[str, Any]) -> dict[str, Any]: ...


class Producer:
    """Defaults for a :class:`RowProducer`: no fits, no meta, a pool of its own."""

    pool: ClassVar[str] = ""
    fit_label: ClassVar[str] = "fitting heads"
    score_label: ClassVar[str] = "scoring rows"

    def plan(self, ctx: Any) -> list[FitJob]:
        return []

    def score(self, ctx: Any, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        return []

    def meta(self, ctx: Any, meta: dict[str, Any]) -> dict[str, Any]:
        return meta


def row_base(task: str, fs: FeatureSet, head: str, noise: float, params: dict[str, Any]) -> dict[str, Any]:
    """The fields every trained row has: what was fitted on what, with which parameters."""
    return {
        "task": task,
        "backbone": fs.backbone,
        "features": fs.name,
        "head": head,
        "noise": noise,
        "params": json.dumps(params, sort_keys=True),
        "keys": list(fs.keys),
    }


def grouped(jobs: Sequence[FitJob], results: Sequence[Any]) -> dict[tuple[Any, ...], list[tuple[FitJob, Any]]]:
    """Each row's fits (jobs with one key), in the order they were planned."""
    out: dict[tuple[Any, ...], list[tuple[FitJob, Any]]] = {}
    for j, r in zip(jobs, results):
        out.setdefault(j.key, []).append((j, r))
    return out


@dataclass
class Runner:
    """How a bench runs its calls: joblib's Parallel over ``n_jobs`` workers (1: in this process), a progress bar."""

    n_jobs: int
    progress: bool = True

    def run(self, calls: Sequence[Any], what: str, preload: Sequence[str] = ()) -> list[Any]:
        from joblib import Parallel

        return run_parallel(Parallel, calls, len(calls), self.n_jobs, self.progress, what, preload=preload)


def produce(ctx: Any, producers: Sequence[RowProducer], runner: Runner) -> list[Scored]:
    """Plan every producer (all before any fit), then pool by pool: fit the pool's jobs in one run of workers (each
    worker imports the heads' modules first), turn them into rows and score those."""
    plans = [(p, p.plan(ctx)) for p in producers]
    out: list[Scored] = []
    for pool in dict.fromkeys(p.pool or f"#{i}" for i, p in enumerate(producers)):
        members = [(p, jobs) for i, (p, jobs) in enumerate(plans) if (p.pool or f"#{i}") == pool]
        calls = [j.call for _, jobs in members for j in jobs]
        preload = head_modules({j.head for _, jobs in members for j in jobs if j.head})
        results = runner.run(calls, members[0][0].fit_label, preload) if calls else []
        pending: list[Any] = []
        at = 0
        for p, jobs in members:
            pending += p.score(ctx, jobs, results[at : at + len(jobs)])
            at += len(jobs)
        delayed = [c for c in pending if not isinstance(c, Scored)]
        done = iter(runner.run(delayed, members[0][0].score_label) if delayed else [])
        out += [c if isinstance(c, Scored) else scored(next(done)) for c in pending]
    return out


def table(rows: Iterable[Row]) -> pd.DataFrame:
    """The rows as a table: one column per field any row has, in the order the fields are declared (then columns of
    other mito versions)."""
    frame = pd.DataFrame([r.record() for r in rows])
    return frame[[c for c in Row.model_fields if c in frame] + [c for c in frame if c not in Row.model_fields]]


# Tile-level producers of `mito bench`, in the order their rows are made (mito.bench.leaderboard fills it).
PRODUCERS: list[type] = []


def register_producer(cls: type) -> type:
    """Add a row kind to `mito bench` (a class whose instances are :class:`RowProducer` s, built with no argument)."""
    if cls not in PRODUCERS:
        PRODUCERS.append(cls)
    return cls
