"""Slide-level leaderboards: MIL heads scored on folds of bags (grouped by patient, else by slide), same metrics and CIs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ConfigDict, Field

from mito.bench.cv import CVPlan, Fold, make_folds
from mito.bench.errors import BenchError
from mito.bench.leaderboard import Leaderboard, positive_meta, rank_rows, training_rows, unique_rows
from mito.bench.row import FitJob, Producer, Runner, grouped, produce, scored, table
from mito.bench.rows import describe_keys, row_id, score_row
from mito.core.sections import FoldsSection, PositiveSection, StoreSection
from mito.core.tasks import TaskSpec
from mito.heads import BagReader, BagSet, backbone_variants, bag_table, fit_and_score, left_out, make_bags, make_mil_head, mil_head_names
from mito.heads.slide import bag_positive
from mito.store import open_store

DEFAULT_SLIDE_HEADS = ("mean-linear", "abmil")


class SlideBenchConfig(PositiveSection, FoldsSection, StoreSection):
    """What `mito bench --level slide` ranks (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="The bag label column, or the tile label with bag_label any:VALUE.", examples=["label"])
    features: list[str] = Field(default_factory=list, description="Variant keys to concatenate (default: as fit-head).")
    heads: list[str] = Field(default_factory=lambda: list(DEFAULT_SLIDE_HEADS), description="Slide-level heads to rank.")
    head_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Head options per head, e.g. {abmil: {max_tiles: 256}}."
    )
    bag_column: str | None = Field(None, description="Column grouping tiles into bags (default: slide).")
    bag_label: str | None = Field(None, description="any:VALUE = a bag is 'yes' when any tile's task label is VALUE.")
    group_column: str | None = Field(None, description="Keep bags of one group (e.g. patient) in one fold (default: by bag).")


@dataclass
class SlideContext:
    """What the slide-level producers plan from: the config, the bags and their reader, the folds of bags, the task."""

    cfg: SlideBenchConfig
    reader: Any  # mito.heads.BagReader over the store (open while the rows are made)
    bags: Any  # mito.heads.Bags
    plan: CVPlan
    spec: TaskSpec
    keys: list[str]
    y: np.ndarray  # each bag's label


def fit_slide_fold(h: str, params: dict[str, Any], reader: Any, bags: Any, f: Fold) -> dict[str, Any]:
    """Fit MIL head ``h`` on one fold of bags (early stopping on its validation bags), predict its test bags."""
    head = make_mil_head(h, **params)
    r = fit_and_score(head, BagSet(reader, bags), {"train": f.train, "val": f.val, "test": f.test})
    return {
        "proba": r.scored["test"][1],
        "train_seconds": r.train_seconds,
        "predict_seconds": r.predict_seconds,
        "params": head.params(),
        "noise": head.noise,
    }


class SlideHeadRows(Producer):
    """A row per slide-level (MIL) head: fitted on every fold of bags in this process, scored like a tile head's row."""

    fit_label = "fitting slide heads"

    def plan(self, ctx: SlideContext) -> list[FitJob]:
        cfg = ctx.cfg
        return [
            FitJob((h,), (fit_slide_fold, (h, {"seed": cfg.seed, **cfg.head_params.get(h, {})}, ctx.reader, ctx.bags, f), {}), f)
            for h in cfg.heads
            for f in ctx.plan.folds
        ]

    def score(self, ctx: SlideContext, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        cfg, bags, out = ctx.cfg, ctx.bags, []
        backbone, fs_name = describe_keys(ctx.keys)
        for (h,), items in grouped(jobs, results).items():
            last = items[-1][1]
            base = {
                "task": bags.task,
                "backbone": backbone,
                "features": fs_name,
                "head": h,
                "noise": float(last["noise"]),
                "kind": "slide head",
                "budget": f"{len(ctx.plan.folds)} folds of bags, early stopping on whole slides",
                "params": json.dumps(last["params"], sort_keys=True),
                "row_id": row_id(bags.task, backbone, fs_name, h, float(last["noise"]), "slide"),
                "keys": ctx.keys,
            }
            fits = [r for _, r in items]
            out.append(
                scored(
                    score_row(
                        base,
                        ctx.spec,
                        ctx.plan,
                        ctx.y,
                        bags.classes,
                        fits,
                        ctx.plan.folds,
                        cfg.n_boot,
                        cfg.seed,
                    )
                )
            )
        return out


SLIDE_PRODUCERS: list[type] = [SlideHeadRows]  # the row kinds of `mito bench --level slide`, in order


def slide_context(cfg: SlideBenchConfig, store: Any) -> SlideContext:
    """Bags of the store's tiles, their folds (stratified group k-fold of bags) and the task with its positive class."""
    keys = list(cfg.features) or backbone_variants(store)
    table = bag_table(store, cfg.task, cfg.bag_column, cfg.group_column)
    bags = make_bags(table, cfg.task, cfg.bag_column, cfg.bag_label, cfg.group_column, store.unreadable, min_per_class=cfg.n_folds)
    units = bags.table()
    plan = make_folds(units, units["label"].astype(object), n_folds=cfg.n_folds, cv="kfold", seed=cfg.seed, unit="bag")
    positive, source = bag_positive(bags, training_rows(plan), cfg.bag_label, cfg.positive)
    spec = TaskSpec(bags.task, bags.description, (), lambda t: t["label"], positive=positive, positive_source=source)
    return SlideContext(cfg, BagReader(store, keys), bags, plan, spec, keys, units["label"].astype(object).to_numpy())


def slide_meta(ctx: SlideContext, store: Any) -> dict[str, Any]:
    """leaderboard.json's meta of a slide-level bench."""
    cfg, bags, plan, spec = ctx.cfg, ctx.bags, ctx.plan, ctx.spec
    return {
        "level": "slide",
        "store": {"path": str(cfg.store), "n_tiles": store.n_tiles, "tile_list_sha256": store.meta.get("tile_list_sha256")},
        "variants": {k: store.variant_info(k) for k in ctx.keys},
        "tasks": {
            bags.task: {
                "description": bags.description,
                "main_metric": spec.main_metric,
                "classes": bags.classes,
                **positive_meta(spec),
                "cv": plan.mode,
                "cv_description": plan.description.replace("by slide", f"by {cfg.group_column or 'slide'}")
                + f" (units: {len(bags)} bags, median {float(np.median(bags.sizes)):g} tiles)",
                "n_folds": len(plan.folds),
                "fold_fingerprint": plan.fingerprint,
                "left_out": left_out(bags, store.meta, cfg.bag_column),
            }
        },
        "skipped_tasks": {},
        "config": cfg.model_dump(),
        "tile_ids": bags.names.tolist(),
    }


def run_slide_bench(cfg: SlideBenchConfig, progress: bool = True) -> Leaderboard:
    """Fit every slide-level head on every fold of bags (stratified group k-fold) and rank them like tile heads."""
    unknown = [h for h in cfg.heads if h not in mil_head_names()]
    if unknown:
        raise BenchError(f"unknown slide-level head {unknown[0]!r}; use {', '.join(mil_head_names())}")
    for h in cfg.heads:  # bad options fail before any fitting
        make_mil_head(h, **cfg.head_params.get(h, {}))
    with open_store(cfg.store) as store:
        ctx = slide_context(cfg, store)
        producers = [cls() for cls in SLIDE_PRODUCERS]
        rows, preds = unique_rows(produce(ctx, producers, Runner(1, progress)))  # MIL heads fit in this process
        meta = slide_meta(ctx, store)
        for p in producers:
            meta = p.meta(ctx, meta)
    return Leaderboard(rank_rows(table(rows)), preds, meta)
