"""Leaderboards: every feature set x head in a store, scored on the same slide-grouped folds, ranked per task."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from mito.bench.cv import CVMode, CVPlan, make_folds, small_test_note
from mito.bench.errors import BenchError
from mito.bench.fewshot import FewShotRows, parse_shots
from mito.bench.proxy import RANDOM_PREFIX, bench_validity
from mito.bench.recipes import write_bench_record
from mito.bench.row import (
    PRODUCERS,
    BenchContext,
    FitJob,
    Producer,
    Row,
    Runner,
    Scored,
    grouped,
    produce,
    register_producer,
    row_base,
    table,
)
from mito.bench.rows import JOB_FEATURE_BUDGET, FeatureSet, describe_keys, row_id, score_row, split_key
from mito.bench.search_rows import SearchRows, search_lines
from mito.bench.shift import LEAVE_GROUP_OUT, add_gaps, cross_group_lines, shift_plans
from mito.bench.stats import PAIRED_COLUMNS, PARTIAL_FOLDS, add_paired_columns, prediction_positive, row_delong_ci
from mito.bench.validate import check_predictions, check_rows
from mito.bench.zeroshot import TEXT_HEADS, ZeroShotRows, job_params, plan_text
from mito.core.artifacts import register_loader
from mito.core.errors import MitoError
from mito.core.interrupts import handle_signals
from mito.core.io import METRIC_CSV_FORMAT, atomic_write, json_default, write_manifest, write_npz
from mito.core.metrics import (
    CALIBRATION_NAMES,
    METRIC_NAMES,
    expected_calibration_error,
    per_class_line,
)
from mito.core.sections import FoldsSection, PositiveSection, StoreSection
from mito.core.tasks import TaskSpec, positive_line, recorded_positive, resolve_task, task_labels, with_positive
from mito.core.validation import as_dict
from mito.datasets import PROXY_TASKS
from mito.heads import HEAD_NAMES, head_class, head_names
from mito.heads.params import check_params
from mito.store import open_store

COLUMNS = [
    "rank",
    "task",
    "backbone",
    "features",
    "head",
    "noise",
    "kind",
    "held_out",
    "shots",
    "positive",
    *[c for m in METRIC_NAMES for c in (m, f"{m}_std")],
    "main_metric",
    "ci_low",
    "ci_high",
    "auroc_delong_low",
    "auroc_delong_high",
    *PAIRED_COLUMNS,
    *CALIBRATION_NAMES,
    "gap",
    "train_seconds",
    "predict_seconds",
    "n_train",
    "n_val",
    "n_test",
    "n_folds",
    "draws",
    "cv",
    "budget",
    "params",
    "row_id",
]


class BenchConfig(PositiveSection, FoldsSection, StoreSection):
    """What to benchmark: tasks, feature sets (None = all), heads (None = all), noise levels, folds (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1, description="Tasks to rank: proxy tasks or label columns.", examples=[["mitosis"]])
    features: list[str] | None = Field(
        None, description="Feature sets: a backbone name (all its sets) or variant keys joined by '+' (null: all)."
    )
    heads: list[str] | None = Field(None, description="Heads to rank (null: every head).")
    noise: list[float] | None = Field(None, description="Feature-noise levels, one row each (null: each head's default).")
    head_params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Head options per head, e.g. {mlp: {hidden: 512}}.")
    cv: CVMode | Literal["leave-group-out"] = Field(
        "auto", description="auto, kfold, split, or leave-group-out (only the shift_column rows)."
    )
    shift_column: str | None = Field(
        None, description="Domain shift: also hold out each value of this column in turn, trained on the others."
    )
    n_jobs: int = Field(0, ge=0, le=1024, description="Parallel worker processes (0 = every core).")
    standardize: bool = Field(False, description="Scale each feature on the training rows first.")
    pca: int | None = Field(None, ge=1, description="Reduce the features to N principal components first.")
    include: list[str] = Field(default_factory=list, description="Other leaderboard folders to merge in (e.g. a mito lora --out).")
    metadata_columns: list[str] = Field(default_factory=list, description="Tile-table columns added as one-hot side inputs.")
    stream: bool | None = Field(
        None, description="Stream a job's features from the store (null: when they would not fit its share of memory_budget)."
    )
    memory_budget: int | None = Field(
        None, ge=1, description="Bytes all workers together may use for features (default: a fixed budget per job)."
    )
    buffer_rows: int | None = Field(None, ge=1, description="Streamed jobs: shuffle-buffer rows (default: the heads' default).")
    zero_shot: str | None = Field(
        None, description="Prompts JSON (or mitosis, tissue): a zero-shot row per vision-language backbone and text-linear."
    )
    few_shot: list[int | str] | None = Field(
        None, description="Learning curve: labelled tiles per class, e.g. [1, 4, 16, all] ('all' = the normal rows)."
    )
    few_shot_draws: int | None = Field(None, ge=1, le=1000, description="Seeded draws per few-shot K (default 5).")
    target: str | None = Field(None, description="Several tasks: the task the others are proxies for (default: the first task).")
    feature_search: bool = Field(
        False, description="Add a row per head whose variants are forward-selected inside each fold, on its training rows only."
    )
    search_folds: int = Field(3, ge=2, description="feature_search: grouped inner folds of each fold's training rows.")
    search_max: int = Field(4, ge=1, description="feature_search: most variants in a selected set.")
    search_margin: float = Field(0.005, ge=0, description="feature_search: least gain in mean inner-fold balanced accuracy to add one.")

    @field_validator("few_shot")
    @classmethod
    def _few_shot(cls, v: list[int | str] | None) -> list[int | str] | None:
        return None if v is None else parse_shots(v)

    @field_validator("noise")
    @classmethod
    def _noise(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(x) and x >= 0 for x in v):
            raise ValueError("noise levels must be finite numbers >= 0")
        return v

    @model_validator(mode="after")
    def _shift(self) -> BenchConfig:
        if self.cv == LEAVE_GROUP_OUT and not self.shift_column:
            raise ValueError("--cv leave-group-out needs --shift-column (e.g. --shift-column dataset)")
        if self.target is not None and self.target not in self.tasks:
            raise ValueError(f"target task {self.target!r} is not among the tasks ({', '.join(self.tasks)})")
        if self.cv == LEAVE_GROUP_OUT and self.few_shot and any(k != "all" for k in self.few_shot):
            raise ValueError(
                "few_shot rows are scored on the in-domain folds, which cv leave-group-out has none of; use --cv auto with --shift-column"
            )
        return self


@dataclass
class Leaderboard:
    """Ranked rows, each row's test-set predictions per fold, and how the run was made."""

    rows: pd.DataFrame
    predictions: dict[str, dict[str, np.ndarray]]
    meta: dict[str, Any]


# ------------------------------------------------------------------ feature sets
def _fs(keys: Sequence[str]) -> FeatureSet:
    bb, name = describe_keys(keys)
    return FeatureSet(bb, name, tuple(keys))


def all_feature_sets(variants: Sequence[str]) -> list[FeatureSet]:
    """Every variant alone, RGB+gray per zoom, multi-zoom per colour, everything per backbone, and the backbones concatenated."""
    by_bb: dict[str, list[tuple[str, str]]] = {}
    for k in variants:
        if k.count(":") == 3:  # augmented views (mito extract --augment) are views of a feature, not feature sets
            continue
        bb, z, c = split_key(k)
        by_bb.setdefault(bb, []).append((z, c))
    out = [fs for bb, parts in by_bb.items() for fs in backbone_sets(bb, parts)]
    trained = {bb: parts for bb, parts in by_bb.items() if not bb.startswith(RANDOM_PREFIX)}
    if len(trained) > 1 and (common := [zc for zc in next(iter(trained.values())) if all(zc in p for p in trained.values())]):
        z, c = ("z1", "rgb") if ("z1", "rgb") in common else common[0]
        out.append(_fs([f"{bb}:{z}:{c}" for bb in trained]))
    return out


def backbone_sets(bb: str, parts: Sequence[tuple[str, str]]) -> list[FeatureSet]:
    """The feature sets of one backbone's (zoom, colour) variants: each alone, the colours of each zoom, the zooms of
    each colour (where all are there), and all of them when they make the full grid."""
    zooms = list(dict.fromkeys(z for z, _ in parts))
    colors = list(dict.fromkeys(c for _, c in parts))
    have = set(parts)

    def fs(zcs: Sequence[tuple[str, str]]) -> FeatureSet:
        return _fs([f"{bb}:{z}:{c}" for z, c in zcs])

    out = [fs([zc]) for zc in parts]
    if len(colors) > 1:
        out += [fs([(z, c) for c in colors]) for z in zooms if all((z, c) in have for c in colors)]
    if len(zooms) > 1:
        out += [fs([(z, c) for z in zooms]) for c in colors if all((z, c) in have for z in zooms)]
    if len(zooms) > 1 and len(colors) > 1 and len(have) == len(zooms) * len(colors):
        out.append(fs([(z, c) for z in zooms for c in colors]))
    return out


def parse_feature_sets(specs: Sequence[str] | None, variants: Sequence[str]) -> list[FeatureSet]:
    """User feature sets: ``all``, a backbone name (all its sets), or variant keys joined by ``+``."""
    if not specs or list(specs) == ["all"]:
        return all_feature_sets(variants)
    out: list[FeatureSet] = []
    for spec in specs:
        if ":" not in spec:
            sets = list(all_feature_sets([v for v in variants if v.startswith(spec + ":")]))
            if not sets:
                raise BenchError(f"no features of backbone {spec!r} in the store (it has: {', '.join(variants)})")
            out += sets
            continue
        keys = [k.strip() for k in spec.split("+") if k.strip()]
        missing = [k for k in keys if k not in variants]
        if missing:
            raise BenchError(f"feature {missing[0]!r} is not in the store (it has: {', '.join(variants)})")
        out.append(_fs(keys))
    return list(dict.fromkeys(out))


def fit_options(cfg: BenchConfig, n_jobs: int) -> dict[str, Any]:
    """fit_one's keyword options from a BenchConfig: each job's feature budget (JOB_FEATURE_BUDGET, or its share of
    ``cfg.memory_budget`` over ``n_jobs`` workers)."""
    budget = JOB_FEATURE_BUDGET if cfg.memory_budget is None else cfg.memory_budget // max(1, n_jobs)
    return {
        "metadata_columns": list(cfg.metadata_columns),
        "stream": cfg.stream,
        "memory_budget": budget,
        "buffer_rows": cfg.buffer_rows,
    }


# ------------------------------------------------------------------ rows
def rank_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Sort by task, then the task's main metric (best first), and number the rows per task (K-shot rows: per task and K, after the normal rows)."""
    if rows.empty:
        return rows
    rows = rows.copy()
    rows["_score"] = [r[r["main_metric"]] for _, r in rows.iterrows()]
    by = ["task", "held_out"] if "held_out" in rows else ["task"]  # shift rows rank among rows of their held-out group
    if "held_out" in rows:
        rows["held_out"] = rows["held_out"].fillna("").astype(str)
    shots = (
        rows["shots"].map(lambda v: "all" if v is None or str(v) in ("", "nan", "None") else str(v))
        if "shots" in rows
        else pd.Series("all", index=rows.index)
    )
    rows["shots"] = shots
    rows["_k"] = [int(v) if v.isdigit() else 0 for v in shots]  # K-shot rows rank among rows of the same K
    by = [*by, "_k"]
    rows = rows.sort_values([*by, "_score", "auroc"], ascending=[True] * len(by) + [False, False], na_position="last", kind="stable")
    rows["rank"] = rows.groupby(by).cumcount() + 1
    return add_gaps(rows.drop(columns=["_score", "_k"]).reset_index(drop=True))


# ------------------------------------------------------------------ the run
def task_plan(
    tiles: pd.DataFrame, task: str, n_folds: int, cv: str, seed: int, exclude: np.ndarray | None, positive: str | None = None
) -> tuple[TaskSpec, np.ndarray, list[str], CVPlan]:
    """Resolve a task on a tile table: its spec (with the positive class of a two-class task: ``positive``, else the
    minority class of the folds' training rows), labels (object array, None = out), classes and folds."""
    spec = resolve_task(tiles, task, PROXY_TASKS)
    y, classes = task_labels(tiles, spec, min_per_class=n_folds)
    plan = make_folds(tiles, y, n_folds=n_folds, cv=cv, seed=seed, exclude=exclude)
    y = y.astype(object).to_numpy()
    return plan_positive(spec, y, classes, plan, positive), y, classes, plan


def training_rows(plan: CVPlan) -> np.ndarray:
    """Every row some fold trains on (its training and early-stopping parts)."""
    parts = [np.asarray(p, dtype=np.int64) for f in plan.folds for p in (f.train, f.val)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def plan_positive(spec: TaskSpec, y: np.ndarray, classes: Sequence[str], plan: CVPlan, requested: str | None = None) -> TaskSpec:
    """``spec`` with its positive class: ``requested`` (--positive), else the minority class of the rows the folds
    train on (mito.core.tasks.choose_positive)."""
    return with_positive(spec, y[training_rows(plan)], classes, requested)


def task_positive_lines(meta: dict[str, Any]) -> list[str]:
    """One line per two-class task of a leaderboard: its positive class and why (task named when there are several)."""
    tasks: dict[str, Any] = meta["tasks"] if isinstance(meta.get("tasks"), dict) else {}
    out = []
    for t, info in tasks.items():
        pos, source = recorded_positive(info)
        if pos is not None:
            out.append(positive_line(pos, source, t if len(tasks) > 1 else None))
    return out


def task_summary_lines(lb: Leaderboard) -> list[str]:
    """Lines printed under the leaderboard table: each two-class task's positive class, each multi-class task's
    per-class recall and precision of its best in-domain row, a note on each task whose test folds are too small to
    rank, the sets each search row selected per fold, and which rows were paired with #1 on fewer folds."""
    out = task_positive_lines(lb.meta)
    rows = lb.rows
    if rows.empty:
        return out
    for t in rows["task"].unique():
        sel = rows[rows["task"] == t]
        sel = sel[sel["shots"].astype(str).isin(["all", "", "nan", "None"])] if "shots" in sel else sel
        sel = sel[sel["held_out"].fillna("") == ""] if "held_out" in sel else sel
        if sel.empty:
            continue
        best = sel.sort_values("rank").iloc[0]
        classes = best.get("classes")
        if isinstance(classes, list) and len(classes) > 2 and isinstance(best.get("per_class"), dict):
            out.append(
                f"task {t}, #1 {best['backbone']} {best['features']} {best['head']}: "
                + per_class_line(best["per_class"])
                + " (mean over folds)"
            )
    tasks = as_dict(lb.meta.get("tasks"))
    for t, tm in tasks.items():
        if isinstance(tm, dict) and tm.get("small_test"):
            out.append(f"note ({t}): {tm['small_test']}")
    shift_meta = as_dict(lb.meta.get("shift"))
    out += cross_group_lines(rows, str(shift_meta.get("column") or "group"))
    out += search_lines(rows)
    partial = rows[rows["paired_note"].fillna("").astype(str).str.startswith(PARTIAL_FOLDS)] if "paired_note" in rows else rows.iloc[:0]
    for _, r in partial.iterrows():
        out.append(f"† {r['task']} #{r['rank']} {r['backbone']} {r['features']} {r['head']}: {r['paired_note']}")
    return out


def check_positive_agrees(task: str, ours: TaskSpec, info: Any, where: str) -> None:
    """Refuse to put rows of ``task`` scored with another positive class (recorded, or an older folder's) beside ours."""
    theirs, source = recorded_positive(info)
    if ours.positive is None or theirs is None or theirs == ours.positive:
        return
    raise BenchError(
        f"task {task!r}: {where} scored {theirs!r} as the positive class ({source}), this run {ours.positive!r} "
        f"({ours.positive_source}); pass --positive {theirs}, or re-run it with --positive {ours.positive}"
    )


@dataclass
class StoreView:
    """What a bench reads of its store once: the tile table, unreadable rows, complete variants and their info."""

    tiles: pd.DataFrame
    exclude: np.ndarray
    complete: list[str]
    meta: dict[str, Any]
    variant_info: dict[str, dict[str, Any]]


def read_store(path: str) -> StoreView:
    """The store's tiles and complete variants (views too: ``--features`` may name them); none complete is an error."""
    with open_store(path) as store:
        complete = [k for k in store.variants if store.is_complete(k)]
        view = StoreView(
            store.tiles,
            store.unreadable,
            complete,
            {"path": str(path), "n_tiles": store.n_tiles, "tile_list_sha256": store.meta.get("tile_list_sha256")},
            {k: store.variant_info(k) for k in complete},
        )
    if not complete:
        raise BenchError(f"{path} has no complete feature variant; run mito extract first")
    return view


def bench_heads(cfg: BenchConfig) -> list[str]:
    """The heads a bench fits: ``cfg.heads``, else every head (and the text heads with --zero-shot); unknown ones refused."""
    heads = list(cfg.heads or [*HEAD_NAMES, *(TEXT_HEADS if cfg.zero_shot else ())])
    unknown = [h for h in heads if h not in head_names()]
    if unknown:
        raise BenchError(f"unknown head {unknown[0]!r}; use {', '.join(head_names())}")
    for h in heads:  # a wrong head option is one line before any fit starts (not in a worker, after the bars); values
        if cfg.head_params.get(h):  # only: what the bench adds itself (text-linear's text embeddings) comes later
            check_params(h, head_class(h).param_spec, cfg.head_params[h])
    return heads


@dataclass
class TaskPlans:
    """Each usable task's (spec, labels, classes, folds), its shift plans, and why the other tasks (or shift rows) were left out."""

    plans: dict[str, Any]
    skipped: dict[str, str]
    shifts: dict[str, tuple[dict[str, CVPlan], dict[str, str]]]
    shifts_skipped: dict[str, str]


def plan_tasks(cfg: BenchConfig, view: StoreView) -> TaskPlans:
    """Folds of every task (and its shift plans with --shift-column); with several tasks an unusable one is left out
    with its reason, with one it is the error."""
    out = TaskPlans({}, {}, {}, {})
    lgo = cfg.cv == LEAVE_GROUP_OUT
    for t in dict.fromkeys(cfg.tasks):
        try:
            out.plans[t] = task_plan(view.tiles, t, cfg.n_folds, "auto" if lgo else cfg.cv, cfg.seed, view.exclude)
            if cfg.shift_column:
                y = pd.Series(out.plans[t][1], index=view.tiles.index)
                out.shifts[t] = shift_plans(view.tiles, y, cfg.shift_column, cfg.n_folds, cfg.seed, view.exclude)
        except MitoError as e:
            if len(cfg.tasks) == 1:
                raise
            if t in out.plans and not lgo:  # no shift rows for this task (e.g. task dataset, shift column dataset)
                out.shifts_skipped[t] = str(e)
                continue
            out.plans.pop(t, None)
            out.skipped[t] = str(e)  # several tasks: rank the usable ones, say why the others were left out
    if not out.plans:
        raise BenchError("no usable task: " + "; ".join(f"{t}: {why}" for t, why in out.skipped.items()))
    resolve_positives(out.plans, cfg.positive)
    if lgo:
        for t in out.plans:  # the leaderboard's folds are the shift folds
            sps = out.shifts[t][0]
            fp = hashlib.sha256("".join(sp.fingerprint for sp in sps.values()).encode()).hexdigest()
            desc = "; ".join(f"held out {g}: {sp.description}" for g, sp in sps.items())
            out.plans[t] = (*out.plans[t][:3], CVPlan(LEAVE_GROUP_OUT, [], fp, desc))
    return out


def bench_context(cfg: BenchConfig, view: StoreView, tasks: TaskPlans, heads: list[str], n_jobs: int, progress: bool) -> BenchContext:
    """What the producers plan from; the folds rows are scored on: (task, "") in-domain, (task, group) per shift plan."""
    evals = {} if cfg.cv == LEAVE_GROUP_OUT else {(t, ""): p[3] for t, p in tasks.plans.items()}
    evals.update({(t, g): sp for t, (sps, _) in tasks.shifts.items() for g, sp in sps.items()})
    return BenchContext(
        cfg,
        parse_feature_sets(cfg.features, view.complete),
        heads,
        list(cfg.noise) if cfg.noise else [None],
        tasks.plans,
        evals,
        plan_text(str(cfg.store), cfg.zero_shot, view.complete, view.variant_info, heads, progress),
        fit_options(cfg, n_jobs),
        extra={"shifts": tasks.shifts, "shifts_skipped": tasks.shifts_skipped},
    )


def run_bench(cfg: BenchConfig, progress: bool = True) -> Leaderboard:
    """Every row producer (mito.bench.row.PRODUCERS: heads with their noise levels, shift, zero-shot, few-shot, rows
    of --with leaderboards) plans its fits, fits them in parallel and scores its rows; the rows are ranked per task
    with paired statistics against each ranking's best row."""
    heads = bench_heads(cfg)
    view = read_store(cfg.store)
    tasks = plan_tasks(cfg, view)
    n_jobs = cfg.n_jobs or os.cpu_count() or 1
    ctx = bench_context(cfg, view, tasks, heads, n_jobs, progress)
    producers = [cls() for cls in PRODUCERS]
    rows, preds = unique_rows(produce(ctx, producers, Runner(n_jobs, progress)))
    meta = bench_meta(cfg, ctx, view, tasks)
    for p in producers:
        meta = p.meta(ctx, meta)
    lb = Leaderboard(add_paired_columns(rank_rows(table(rows)), preds, cfg.n_boot, cfg.seed), preds, meta)
    validity = bench_validity(lb.rows, lb.predictions, cfg.target or cfg.tasks[0], cfg.n_boot, cfg.seed)
    if validity is not None:
        lb.meta["proxy_validity"] = validity
    return lb


def unique_rows(scored: Sequence[Scored]) -> tuple[list[Row], dict[str, dict[str, np.ndarray]]]:
    """The rows and their predictions by row id; a row id made twice keeps its first row (a --with leaderboard's rows
    never replace this run's)."""
    rows: dict[str, Row] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for s in scored:
        rows.setdefault(s.row.row_id, s.row)
        if s.arrays is not None:
            preds.setdefault(s.row.row_id, s.arrays)
    return list(rows.values()), preds


def task_meta(plans: dict[str, Any]) -> dict[str, Any]:
    """leaderboard.json's ``tasks``: each task's description, metric, classes, positive class and folds."""
    return {
        t: {
            "description": s.description,
            "main_metric": s.main_metric,
            "classes": c,
            **positive_meta(s),
            "cv": p.mode,
            "cv_description": p.description,
            "n_folds": len(p.folds),
            "fold_fingerprint": p.fingerprint,
            **({"cv_warning": p.warning} if p.warning else {}),
            **({"small_test": note} if (note := small_test_note(p, yy, c)) else {}),
        }
        for t, (s, yy, c, p) in plans.items()
    }


def bench_meta(cfg: BenchConfig, ctx: BenchContext, view: StoreView, tasks: TaskPlans) -> dict[str, Any]:
    """How the run was made (the producers add theirs): store, variants, tasks, skipped tasks, zero-shot, config, tile ids."""
    text = ctx.text
    return {
        "store": view.meta,
        "variants": view.variant_info,
        "tasks": task_meta(tasks.plans),
        "skipped_tasks": tasks.skipped,
        "zero_shot": {"prompts": text.prompts, "text_embeddings": text.files, "skipped": text.skipped},
        "config": cfg.model_dump(),
        "tile_ids": view.tiles["tile_id"].astype(str).tolist(),
    }


# ------------------------------------------------------------------ row producers of `mito bench`
class HeadRows(Producer):
    """A row per (task, feature set, head, noise level): the head fitted on every fold, scored on the fold's test tiles."""

    pool = "heads"
    shift = False  # ShiftRows: the same fits on the held-out groups of --shift-column

    def plan(self, ctx: BenchContext) -> list[FitJob]:
        jobs = []
        evals = {k: p for k, p in ctx.evals.items() if bool(k[1]) == self.shift}
        for fs in ctx.sets:  # grouped by feature set so each worker reads a matrix once
            for (t, g), plan in evals.items():
                for head in ctx.heads:
                    for nz in ctx.noises:
                        params = job_params(head, fs.backbone, ctx.cfg.head_params, nz, ctx.text)
                        if params is None:  # a text head on features without text embeddings
                            continue
                        jobs += [FitJob((t, g, fs, head, nz), ctx.fit_call(fs, head, params, f, t), f, head) for f in plan.folds]
        return jobs

    def score(self, ctx: BenchContext, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        from joblib import delayed

        cfg, calls = ctx.cfg, []
        for (t, g, fs, head, nz), items in grouped(jobs, results).items():
            spec, y, classes, _ = ctx.plans[t]
            plan = ctx.evals[(t, g)]
            fits = [r for _, r in items]
            noise = float(fits[0]["params"].get("noise", nz if nz is not None else 0.0) or 0.0)
            trained_on = f", trained on {cfg.shift_column} other than {g}, tested on {g}" if g else ""
            base = {
                **row_base(t, fs, head, noise, fits[0]["params"]),
                "kind": "head",
                "held_out": g,
                "shots": "all",
                "budget": f"{len(items)}/{len(plan.folds)} folds{trained_on}, head's own stopping rule" + ctx.budget_suffix(),
                "row_id": row_id(t, fs.backbone, fs.name, head, noise, f"shift:{cfg.shift_column}={g}" if g else ""),
            }
            calls.append(delayed(score_row)(base, spec, plan, y, classes, fits, [j.unit for j, _ in items], cfg.n_boot, cfg.seed))
        return calls


class ShiftRows(HeadRows):
    """--shift-column: a row per (task, held-out group, feature set, head, noise), trained on the other groups."""

    shift = True

    def meta(self, ctx: BenchContext, meta: dict[str, Any]) -> dict[str, Any]:
        if not ctx.cfg.shift_column:
            return meta
        shifts, skipped = ctx.extra["shifts"], ctx.extra["shifts_skipped"]
        tasks = {
            t: {
                g: {"cv_description": sp.description, "n_folds": len(sp.folds), "fold_fingerprint": sp.fingerprint} for g, sp in sps.items()
            }
            for t, (sps, _) in shifts.items()
        }
        why = {**{f"{t}/{g}": w for t, (_, sk) in shifts.items() for g, w in sk.items()}, **skipped}
        return {**meta, "shift": {"column": ctx.cfg.shift_column, "tasks": tasks, "skipped": why}}


class IncludedRows(Producer):
    """--with: the rows of other leaderboard folders (e.g. mito lora runs) scored on the same folds; this run's rows
    win over theirs with the same id, their tasks and sources join the meta."""

    def plan(self, ctx: BenchContext) -> list[FitJob]:
        self.others = [load_leaderboard(p) for p in ctx.cfg.include]
        seen: dict[str, Any] = {}  # tasks of --with leaderboards that this run does not score
        for other in self.others:  # fail before fitting anything (leave-group-out: against its shift folds)
            where = other.meta.get("source") or "the --with leaderboard"
            for t, info in other.meta.get("tasks", {}).items():
                if t in ctx.plans:
                    if info.get("fold_fingerprint") != ctx.plans[t][3].fingerprint:
                        raise BenchError(
                            f"task {t!r} was scored on different folds in {where} (tiles, labels, --folds, --cv or --seed differ, or its k-fold folds come from a mito before the one splitter, "
                            "which held out 15% of each training part for early stopping, 20% now)"
                        )
                    check_positive_agrees(t, ctx.plans[t][0], info, where)
                elif t in seen:  # a task of two --with leaderboards only
                    check_same_task(t, seen[t], info, where)
                seen.setdefault(t, info)
        return []

    def score(self, ctx: BenchContext, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        return [
            Scored(Row.from_record(r), other.predictions.get(str(r["row_id"])))
            for other in self.others
            for r in other.rows.to_dict("records")
        ]

    def meta(self, ctx: BenchContext, meta: dict[str, Any]) -> dict[str, Any]:
        for other in self.others:
            meta = merge_meta(meta, other.meta)
        return meta


for _producer in (HeadRows, ShiftRows, SearchRows, ZeroShotRows, FewShotRows, IncludedRows):  # the row kinds of `mito bench`, in order
    register_producer(_producer)


def positive_meta(spec: TaskSpec) -> dict[str, Any]:
    """The positive class of a task and how it was chosen, as recorded in leaderboard.json (nothing when multi-class)."""
    return {"positive": spec.positive, "positive_source": spec.positive_source} if spec.positive is not None else {}


def resolve_positives(plans: dict[str, Any], requested: str | None) -> None:
    """Give each planned task its positive class (in place): ``requested`` (--positive) for the two-class tasks that
    have that class, the minority class of the training rows for the others. With one task a class that is not
    its own is refused (mito.core.tasks.choose_positive); with several, a class no two-class task has."""
    binary = {t: p for t, p in plans.items() if len(p[2]) == 2}
    if requested is not None and len(plans) > 1 and not any(requested in p[2] for p in binary.values()):
        have = "; ".join(f"{t}: {', '.join(p[2])}" for t, p in binary.items()) or "none has two classes"
        raise BenchError(f"--positive {requested!r} is not a class of any two-class task ({have})")
    for t, (spec, y, classes, plan) in plans.items():
        ask = requested if len(plans) == 1 or (len(classes) == 2 and requested in classes) else None
        plans[t] = (plan_positive(spec, y, classes, plan, ask), y, classes, plan)


def sigterm_as_interrupt() -> Any:
    """Within the block, SIGTERM (like Ctrl-C) raises KeyboardInterrupt once, so an interrupted run cleans up (workers,
    temporary folders) and a second signal cannot cut that short (see :mod:`mito.core.interrupts`; the CLI does this)."""
    return handle_signals()


# ------------------------------------------------------------------ save / load / merge
def save_leaderboard(lb: Leaderboard, out: str | os.PathLike) -> Path:
    """Write leaderboard.csv (flat columns), leaderboard.json (rows + meta) and predictions.npz into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = lb.rows
    flat = rows[[c for c in COLUMNS if c in rows]]
    atomic_write(out / "leaderboard.csv", lambda p: flat.to_csv(p, index=False, float_format=METRIC_CSV_FORMAT), ".csv")
    records = json.loads(rows.to_json(orient="records"))
    doc = {"meta": lb.meta, "rows": records}
    atomic_write(out / "leaderboard.json", lambda p: Path(p).write_text(json.dumps(doc, indent=1, default=json_default)), ".json")
    arrays = {f"{rid}.{k}": v for rid, a in lb.predictions.items() for k, v in a.items()}
    write_npz(out / "predictions.npz", arrays)
    write_bench_record(out, rows, lb.meta)  # run.yaml and rows/<ROW_ID>.yaml: re-run it, train a row (mito.bench.recipes)
    write_manifest(out, "lora-run" if "finetune" in lb.meta else "bench", str(lb.meta.get("level", "tile")))
    return out


NUMERIC_COLUMNS = [
    c
    for c in COLUMNS
    if c
    not in (
        "task",
        "backbone",
        "features",
        "head",
        "kind",
        "held_out",
        "shots",
        "positive",
        "main_metric",
        "cv",
        "budget",
        "params",
        "row_id",
        "tied_with_best",
        "paired_note",
    )
]
TEXT_COLUMNS = ("task", "backbone", "features", "head", "kind", "held_out", "shots", "main_metric", "row_id", "paired_note")


def load_leaderboard(path: str | os.PathLike) -> Leaderboard:
    """Read a directory written by :func:`save_leaderboard`; a damaged or malformed file is refused in one line naming it."""
    d = Path(path)
    lj, npz = d / "leaderboard.json", d / "predictions.npz"
    if not lj.is_file():
        raise BenchError(f"no leaderboard.json in {d}: run mito bench (or mito lora) with --out {d} first")
    doc = read_leaderboard_json(lj)
    records = doc.get("rows", [])
    check_rows(records, doc.get("meta", {}), lj)
    rows = typed_columns(pd.DataFrame(records), lj)
    typed_rows(rows, lj)
    preds = read_predictions(npz, records) if npz.is_file() else {}
    return Leaderboard(upgrade_rows(rows, preds), preds, {**doc.get("meta", {}), "source": str(d)})


def read_leaderboard_json(lj: Path) -> dict[str, Any]:
    """leaderboard.json: an object with a 'rows' list of objects and a 'meta' object, else one line naming the file."""
    try:
        doc = json.loads(lj.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise BenchError(f"{lj} is not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows", []), list) or not isinstance(doc.get("meta", {}), dict):
        raise BenchError(f"{lj} is not a leaderboard (expected an object with a 'rows' list and a 'meta' object)")
    records = doc.get("rows", [])
    if not all(isinstance(r, dict) for r in records):
        raise BenchError(f"{lj} is not a leaderboard (every row must be an object)")
    required = ("task", "backbone", "features", "head", "kind", "main_metric", "row_id", "rank")
    missing = [c for c in required if records and not any(c in r for r in records)]
    if missing:
        raise BenchError(f"{lj} is not a leaderboard: rows lack {', '.join(missing)}")
    return doc


def typed_columns(rows: pd.DataFrame, lj: Path) -> pd.DataFrame:
    """The table with its number columns as numbers and its text columns as text; a cell that cannot be is refused."""
    for c in NUMERIC_COLUMNS:
        if c in rows:
            try:
                rows[c] = pd.to_numeric(rows[c], errors="raise")
            except (ValueError, TypeError):
                raise BenchError(f"{lj} is not a leaderboard: column {c!r} holds a value that is not a number") from None
    for c in TEXT_COLUMNS:
        if c in rows:
            rows[c] = rows[c].map(lambda v: "" if v is None else str(v))
    if len(rows) and not rows["main_metric"].isin(METRIC_NAMES).all():
        raise BenchError(f"{lj} is not a leaderboard: main_metric must be one of {', '.join(METRIC_NAMES)}")
    return rows


def typed_rows(rows: pd.DataFrame, lj: Path) -> list[Row]:
    """The table's rows as :class:`Row` s; a cell of the wrong type is refused in one line naming the row and field."""
    out = []
    for i, r in enumerate(rows.to_dict("records")):
        try:
            out.append(Row.from_record(r))
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise BenchError(f"{lj}: row {i + 1} ({str(r.get('row_id', '?'))[:12]}): {field}: {err['msg']}") from None
    return out


def read_predictions(npz: Path, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """predictions.npz: each row's arrays by row id, checked against the rows (mito.bench.validate)."""
    preds: dict[str, dict[str, np.ndarray]] = {}
    try:
        with np.load(npz, allow_pickle=False) as z:
            for k in z.files:
                rid, sep, part = k.partition(".")
                if not sep:
                    raise ValueError(f"unexpected entry {k!r}")
                preds.setdefault(rid, {})[part] = np.asarray(z[k])
    except Exception as e:  # numpy and zipfile raise many kinds for a truncated or tampered file
        raise BenchError(f"cannot read {npz} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'damaged'})") from None
    check_predictions(preds, records, npz)
    return preds


register_loader("bench", None, lambda a: load_leaderboard(a.path))
register_loader("lora-run", None, lambda a: load_leaderboard(a.path))


def upgrade_rows(rows: pd.DataFrame, preds: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Rows of a folder written before ECE meant equal-width bins: their ``ece`` (equal-mass) becomes ``ece_equal_mass``
    and ``ece`` is recomputed per fold (and draw) from the kept predictions; DeLong's AUROC CI is added where missing.
    A row without predictions gets NaN."""
    if rows.empty:
        return rows
    rows = rows.copy()
    if "ece" in rows and "ece_equal_mass" not in rows:
        rows["ece_equal_mass"] = rows["ece"]
        if "ece_std" in rows:
            rows["ece_equal_mass_std"] = rows["ece_std"]
            rows["ece_std"] = math.nan
        rows["ece"] = [predictions_ece(preds[rid]) if rid in preds else math.nan for rid in rows["row_id"]]
    if "auroc_delong_low" not in rows:
        ci = [row_delong_ci(preds[rid]) if rid in preds else (math.nan, math.nan) for rid in rows["row_id"]]
        rows["auroc_delong_low"], rows["auroc_delong_high"] = [c[0] for c in ci], [c[1] for c in ci]
    return rows


def predictions_ece(p: dict[str, np.ndarray]) -> float:
    """A row's ECE (equal-width bins) from its kept predictions: per fit (fold, and draw for K-shot rows), averaged."""
    proba = np.asarray(p["proba"], np.float64)
    pos = prediction_positive(p) if proba.shape[1] == 2 else 1
    fit = (
        np.asarray(p["fold"], np.int64) * (int(np.max(p["draw"], initial=0)) + 1) + np.asarray(p["draw"], np.int64)
        if "draw" in p
        else np.asarray(p["fold"])
    )
    vals = [expected_calibration_error(np.asarray(p["y"])[fit == f], proba[fit == f], positive=pos) for f in np.unique(fit)]
    return float(np.nanmean(vals)) if vals and not np.all(np.isnan(vals)) else math.nan


def check_same_task(t: str, ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    """Refuse to merge two leaderboards' rows of task ``t`` scored on other folds or with another positive class."""
    if ours.get("fold_fingerprint") != theirs.get("fold_fingerprint"):
        raise BenchError(
            f"task {t!r} was scored on different folds in the two leaderboards (tiles, labels, --folds, --cv or --seed differ)"
        )
    pa, sa = recorded_positive(ours)
    if pa is not None:
        check_positive_agrees(t, TaskSpec(t, "", (), lambda x: x, positive=pa, positive_source=sa), theirs, where)


def merge_meta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The meta of leaderboard ``a`` with ``b`` merged in: ``a`` wins, tasks of both, ``b``'s source added to ``merged``."""
    return {
        **b,
        **a,
        "tasks": {**b.get("tasks", {}), **a.get("tasks", {})},
        "merged": [*a.get("merged", []), *b.get("merged", []), b.get("source", "")],
    }


def merge_leaderboards(a: Leaderboard, b: Leaderboard) -> Leaderboard:
    """Rows of both, re-ranked; a task present in both must have been scored on identical folds."""
    ta, tb = a.meta.get("tasks", {}), b.meta.get("tasks", {})
    for t in set(ta) & set(tb):
        check_same_task(t, ta[t], tb[t], b.meta.get("source") or "the other leaderboard")
    rows = pd.concat([a.rows, b.rows[~b.rows["row_id"].isin(a.rows["row_id"])]], ignore_index=True) if len(b.rows) else a.rows
    meta = merge_meta(a.meta, b.meta)
    preds = {**b.predictions, **a.predictions}
    cfg = a.meta.get("config") or {}
    return Leaderboard(add_paired_columns(rank_rows(rows), preds, int(cfg.get("n_boot", 1000)), int(cfg.get("seed", 0))), preds, meta)
