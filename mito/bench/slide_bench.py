"""Slide-level leaderboards: MIL heads scored on folds of bags (grouped by patient, else by slide), same metrics and CIs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field

from mito.bench.cv import make_folds
from mito.bench.errors import BenchError
from mito.bench.leaderboard import Leaderboard, positive_meta, rank_rows, training_rows
from mito.bench.rows import describe_keys, row_id, score_row
from mito.core.progress import add_task, progress_bar
from mito.core.sections import FoldsSection, PositiveSection, StoreSection
from mito.core.tasks import TaskSpec
from mito.heads import BagReader, BagSet, bag_table, default_features, fit_and_score, left_out, make_bags, make_mil_head, mil_head_names
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


def run_slide_bench(cfg: SlideBenchConfig, progress: bool = True) -> Leaderboard:
    """Fit every slide-level head on every fold of bags (stratified group k-fold) and rank them like tile heads."""
    unknown = [h for h in cfg.heads if h not in mil_head_names()]
    if unknown:
        raise BenchError(f"unknown slide-level head {unknown[0]!r}; use {', '.join(mil_head_names())}")
    for h in cfg.heads:  # bad options fail before any fitting
        make_mil_head(h, **cfg.head_params.get(h, {}))
    with open_store(cfg.store) as store:
        keys = list(cfg.features) or default_features(store)
        bags = make_bags(
            bag_table(store, cfg.task, cfg.bag_column, cfg.group_column),
            cfg.task,
            cfg.bag_column,
            cfg.bag_label,
            cfg.group_column,
            store.unreadable,
            min_per_class=cfg.n_folds,
        )
        table = bags.table()
        y_series = table["label"].astype(object)
        plan = make_folds(table, y_series, n_folds=cfg.n_folds, cv="kfold", seed=cfg.seed, unit="bag")
        y = y_series.to_numpy()
        reader = BagReader(store, keys)
        backbone, fs_name = describe_keys(keys)
        positive, source = bag_positive(bags, training_rows(plan), cfg.bag_label, cfg.positive)
        spec = TaskSpec(bags.task, bags.description, (), lambda t: t["label"], positive=positive, positive_source=source)
        bar = progress_bar(unit="fits", enabled=progress, info=True)
        task_id = add_task(bar, "fitting slide heads", len(cfg.heads) * len(plan.folds))
        rows, preds = [], {}
        with bar:
            for h in cfg.heads:
                results = []
                for f in plan.folds:
                    head = make_mil_head(h, **{"seed": cfg.seed, **cfg.head_params.get(h, {})})
                    r = fit_and_score(head, BagSet(reader, bags), {"train": f.train, "val": f.val, "test": f.test})
                    results.append({"proba": r.scored["test"][1], "train_seconds": r.train_seconds, "predict_seconds": r.predict_seconds})
                    bar.update(task_id, advance=1, info=f"{h} fold {f.index + 1}")
                params = head.params()
                base = {
                    "task": bags.task,
                    "backbone": backbone,
                    "features": fs_name,
                    "head": h,
                    "noise": float(head.noise),
                    "kind": "slide head",
                    "budget": f"{len(plan.folds)} folds of bags, early stopping on whole slides",
                    "params": json.dumps(params, sort_keys=True),
                    "row_id": row_id(bags.task, backbone, fs_name, h, float(head.noise), "slide"),
                    "keys": keys,
                }
                row, arrays = score_row(base, spec, plan, y, bags.classes, results, plan.folds, cfg.n_boot, cfg.seed)
                rows.append(row)
                preds[row["row_id"]] = arrays
        meta = {
            "level": "slide",
            "store": {"path": str(cfg.store), "n_tiles": store.n_tiles, "tile_list_sha256": store.meta.get("tile_list_sha256")},
            "variants": {k: store.variant_info(k) for k in keys},
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
    return Leaderboard(rank_rows(pd.DataFrame(rows)), preds, meta)
