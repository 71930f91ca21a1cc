"""fit_head: store -> features -> split -> pipeline -> head -> model directory (config, weights, metrics)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from mito.core.errors import OutputError
from mito.core.io import atomic_dir, check_output_dir, is_artifact, write_json, write_manifest
from mito.core.metrics import classification_metrics, paired_bootstrap_delta
from mito.core.progress import add_task, progress_bar
from mito.core.runrecord import write_run_record
from mito.core.sections import OutputSection, PositiveSection, SeedSection, StoreSection
from mito.core.tasks import TaskSpec, choose_positive, default_task, group_ids, one_group_per_tile, per_tile_warning
from mito.core.tasks import resolve_task as resolve_spec
from mito.core.validation import one_line
from mito.core.version import __version__
from mito.datasets import PROXY_TASKS
from mito.heads.base import Head, HeadError, head_names, make_head
from mito.heads.calibrate import MIN_CALIBRATION_ROWS, Calibration, calibrate_scored
from mito.heads.engine import FitResult, fit_and_score
from mito.heads.ensemble import Ensemble, fit_ensemble, parse_ensemble
from mito.heads.features import FeaturePipeline, feature_dims, metadata_categories
from mito.heads.fit import StoreRows
from mito.heads.model import CONFIG_FILE, METRICS_FILE, Callback
from mito.heads.recorded import model_extract_settings
from mito.heads.search import SEARCH_METRIC, SearchResult, feature_search, max_fits
from mito.heads.split import (
    AUTO,
    PUBLISHED_SPLIT,
    TEST_FRACTION,
    VAL_FRACTION,
    group_split,
    group_split_description,
    identity_columns,
    make_split,
    published_split,
    save_split,
    split_sides,
)
from mito.heads.stream import DEFAULT_BUFFER_ROWS
from mito.store import Store, is_view, open_store, parse_variant

_VOLATILE = ("added",)


DETERMINISTIC_HEADS = ("knn", "logreg")  # a seed changes nothing: seed ensembles of them are K copies


class FitConfig(PositiveSection, SeedSection, OutputSection, StoreSection):
    """Everything one `mito fit-head` run needs (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, description="Label column or proxy task to learn (default: the store's only task).")
    head: str = Field("mlp", description="The head: mlp, linear, logreg, knn, lightgbm or text-linear.")
    features: list[str] = Field(
        default_factory=list,
        description="Variant keys to concatenate, in order (default: the store's first backbone's variants at zoom 2 and above, else all of its variants).",
    )
    metadata_columns: list[str] = Field(default_factory=list, description="Tile-table columns added as one-hot side inputs.")
    standardize: bool = Field(False, description="Scale each feature to zero mean, unit variance (training rows).")
    pca: int | None = Field(None, description="Reduce the features to N principal components (after standardize).")
    split_column: str | None = Field(
        AUTO,
        description="Column with train/val/test per tile; auto: the store's published 'split' column when it has one; "
        "null: a random split by group.",
    )
    group_column: str | None = Field("group", description="Slide column for grouped splits (null: split tiles independently).")
    val_fraction: float = Field(VAL_FRACTION, description="Share of the training rows held out (by group) for early stopping.")
    test_fraction: float = Field(TEST_FRACTION, description="Share held out (by group) for the metrics when there is no split column.")
    head_params: dict[str, Any] = Field(
        default_factory=dict, description="The head's own options, e.g. {hidden: 512, noise: 0.5} (fit-head -p help lists them)."
    )
    stream: bool | None = Field(
        None, description="mlp/linear: read features chunk by chunk every epoch (null: only when they would fill half the free memory)."
    )
    buffer_rows: int = Field(DEFAULT_BUFFER_ROWS, ge=1, description="stream: rows mixed in the shuffle buffer.")
    progress: bool = Field(False, description="Show progress bars.")
    calibrate: Calibration = Field("none", description="temperature: fit temperature scaling on the validation split; none.")
    test_group: str | None = Field(None, description="Domain shift: test on the tiles of COL=VALUE, train on the other values of COL.")
    train_groups: list[str] = Field(default_factory=list, description="With test_group: train only on these values of COL.")
    ensemble: str | None = Field(None, description="Average K heads' probabilities: K (seeds), folds (5 fold models) or folds:K.")
    feature_search: bool = Field(
        False,
        description="Pick the variants (of features, else every complete one) by forward selection on inner folds of the training rows.",
    )
    search_folds: int = Field(3, ge=2, description="feature_search: grouped inner folds of the non-test rows.")
    search_max: int = Field(4, ge=1, description="feature_search: most variants in the selected set.")
    search_margin: float = Field(0.005, ge=0, description="feature_search: least gain in mean inner-fold balanced accuracy to add one.")

    @field_validator("ensemble")
    @classmethod
    def _ensemble(cls, v: str | None) -> str | None:
        parse_ensemble(v)  # a bad value is a HeadError (a ValueError) -> one validation line
        return v

    @model_validator(mode="after")
    def _groups(self) -> FitConfig:
        if self.train_groups and not self.test_group:
            raise ValueError("train_groups needs test_group (--test-group COL=VALUE)")
        if self.test_group and self.split_column not in (AUTO, None):
            raise ValueError("give either split_column or test_group, not both")
        spec = parse_ensemble(self.ensemble)
        if spec is not None and spec.mode == "seeds" and self.head in DETERMINISTIC_HEADS:
            raise ValueError(
                f"--ensemble {spec.k} trains {self.head} {spec.k} times with other seeds, which changes nothing for {self.head}: "
                "use --ensemble folds (members trained on different data)"
            )
        if self.calibrate == "temperature" and spec is not None and spec.mode == "folds":
            # each fold member trained on the others' validation rows: no held-out rows score the averaged model
            raise ValueError(
                "--calibrate temperature needs validation rows no member trained on; --ensemble folds has none (use --ensemble K)"
            )
        return self

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        """Bench's spelling too: ``a:z2:rgb+b:z2:rgb`` is the same feature set as ``a:z2:rgb,b:z2:rgb`` (any backbones)."""
        keys = [k.strip() for item in v for k in item.split("+") if k.strip()]
        if len(set(keys)) != len(keys):
            raise ValueError(f"feature {next(k for k in keys if keys.count(k) > 1)!r} is named twice")
        return keys

    @field_validator("head")
    @classmethod
    def _head(cls, v: str) -> str:
        if v not in head_names():
            raise ValueError(f"unknown head {v!r}; choose one of {', '.join(head_names())}")
        return v

    @field_validator("pca")
    @classmethod
    def _pca(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("pca must be >= 1 components")
        return v


def make_fit_config(**kw: Any) -> FitConfig:
    """FitConfig from keyword arguments, with validation problems as one-line HeadErrors."""
    try:
        return FitConfig(**kw)
    except ValidationError as e:
        raise HeadError(one_line(e)) from None


MIN_DEFAULT_ZOOM = 2.0  # zooms below it lost on AMi-Br in-domain and on each held-out cohort (docs/backbone-selection.md)


def backbone_variants(store: Store) -> list[str]:
    """Every complete variant of the store's first backbone, in store order (views excluded): the slide heads'
    default."""
    complete = [k for k in store.variants if not is_view(k) and store.is_complete(k)]  # views are not features of their own
    if not complete:
        raise HeadError(f"{store.path} has no complete feature variant; run mito extract first")
    first = parse_variant(complete[0]).backbone
    return [k for k in complete if parse_variant(k).backbone == first]


def default_features(store: Store) -> list[str]:
    """The tile heads' default feature set: the first backbone's variants at zoom 2 and above (z2 rgb+gray from
    mito extract's defaults; z2+z3 from --zooms 2,3; hema when extracted), else every complete variant of it.

    Chosen by benchmarks/frozen_ceiling.py (5 seeds, published split and each cohort held out): z2 rgb+gray matched
    or beat z1+z2 rgb+gray in every setting with half the variants, and z2+z3 beat both on both held-out cohorts;
    one backbone, because mixing backbones is a choice to make.
    """
    keys = backbone_variants(store)
    zoomed = [k for k in keys if parse_variant(k).zoom >= MIN_DEFAULT_ZOOM]
    return zoomed or keys


def resolve_task(store: Store, task: str | None) -> TaskSpec:
    """The task to learn (a proxy task such as phase/atypia/dataset, or a label column), or the store's only task."""
    return resolve_spec(store.tiles, default_task(store.tasks, task), PROXY_TASKS)


def extract_settings(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One ExtractConfig-shaped dict per backbone: what `mito predict <folder>` needs to embed new tiles the same way."""
    out: dict[str, dict[str, Any]] = {}
    for key, info in variants.items():
        v = parse_variant(key)
        prep = info.get("preprocessing") or {}
        cfg = out.setdefault(
            v.backbone,
            {
                "backbones": [v.backbone],
                "zooms": [],
                "colors": [],
                "fit": prep.get("fit", "resize"),
                "pad_mode": prep.get("pad_mode", "reflect"),
                "input_size": prep.get("input_size"),
                **({"tile_size": info["tile_size"]} if info.get("tile_size") else {}),
                **(info.get("slide_tiling") or {}),  # whole slides: mpp and tile_px
            },
        )
        for field_, val in (
            ("fit", prep.get("fit", "resize")),
            ("pad_mode", prep.get("pad_mode", "reflect")),
            ("input_size", prep.get("input_size")),
        ):
            if cfg[field_] != val:
                raise HeadError(f"features of {v.backbone} mix {field_} settings; use variants extracted in one run")
        if v.zoom not in cfg["zooms"]:
            cfg["zooms"].append(v.zoom)
        if v.color not in cfg["colors"]:
            cfg["colors"].append(v.color)
    return list(out.values())


def is_model_folder(path: str | os.PathLike) -> bool:
    """True for a model directory written by fit-head (tile or slide level, ensembles too): what --overwrite may replace."""
    return is_artifact(path, "model", "ensemble")


def check_model_out(out: str | os.PathLike, store: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a model --out that exists (without overwrite), is not a model directory, is or holds the store, or is '.', '/', a file."""
    p = Path(out)
    check_output_dir(
        p, True, is_model_folder, protect=(store,), what="model directory (--out)"
    )  # what --overwrite cannot lift, links resolved
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise HeadError(f"{out} already exists; choose another --out or pass --overwrite")
    return p


def split_description(
    split_column: str | None, group_column: str | None, val_fraction: float, test_fraction: float, per_tile: bool = False
) -> str:
    """How the rows were split, in words (printed by fit-head, saved in metrics.json); ``per_tile``: every tile is its
    own group, so the grouped split is one tile by tile."""
    by = f"by {group_column!r}" if group_column and not per_tile else "tile by tile"
    if group_column and per_tile:
        by += f" (every tile is its own {group_column!r})"
    if split_column is not None:
        return f"the store's {split_column!r} column (val carved from train {by} when it has none; --split-column none to opt out)"
    return f"random {by}: test {test_fraction:g}, val {val_fraction:g} of the rest"


@dataclass
class _Run:
    """What fit-head decided before training: the task, features, split and the provenance it records."""

    task: str
    keys: list[str]
    dims: list[int]
    tiles: pd.DataFrame
    labels: np.ndarray
    split_column: str | None
    side: np.ndarray
    parts: dict[str, np.ndarray]
    positive: str | None
    positive_source: str
    per_tile: bool
    cats: dict[str, list[str]]
    variants: dict[str, dict[str, Any]]
    store_meta: dict[str, Any]
    groups: np.ndarray | None
    extract: tuple[Any, str]  # the model's extract settings and where they came from (mito.heads.recorded)


def fit_head(cfg: FitConfig) -> dict[str, Any]:
    """Train a head from a store as ``cfg`` says; write the model directory when ``cfg.out`` is set; return the metrics."""
    if cfg.out is not None:
        check_model_out(cfg.out, cfg.store, cfg.overwrite)
    head = make_head(cfg.head, **{"seed": cfg.seed, **cfg.head_params})
    t_start = time.perf_counter()
    with open_store(cfg.store, "r") as store:
        run = _plan(store, cfg)
        searched = _search(store, cfg, run) if cfg.feature_search else None
        if searched is not None:
            default_run, run = run, _with_keys(store, run, searched.selected)
        fitted = _fit(store, cfg, run, head)
        if searched is not None:
            search = {**searched.report(), "vs_default": _vs_default(store, cfg, default_run, run, fitted)}
    metrics, calibration = _metrics(cfg, run, fitted, t_start)
    config = _config(cfg, run, fitted, calibration)
    if searched is not None:
        metrics["feature_search"] = config["feature_search"] = search
    if cfg.out is not None:
        split = (run.tiles[identity_columns(run.tiles)], run.side)
        _write_model_dir(Path(cfg.out), fitted.head, fitted.pipeline, config, metrics, cfg.overwrite, split, spec=cfg)
        metrics["model_dir"] = str(cfg.out)
    return metrics


def _plan(store: Store, cfg: FitConfig) -> _Run:
    """Resolve the task and features, and split the labelled readable rows (published split, --test-group or random)."""
    spec = resolve_task(store, cfg.task)
    keys = default_features(store) if cfg.feature_search or not cfg.features else list(cfg.features)
    tiles = store.tiles
    labels = spec.labels(tiles)  # the one task resolver: None where a tile is not in the task
    usable = labels.notna().to_numpy() & ~store.unreadable
    if not usable.any():
        raise HeadError(f"no tile has a {spec.name!r} label (and readable features) in {cfg.store}")
    split_column = cfg.split_column
    if split_column == AUTO:
        split_column = PUBLISHED_SPLIT if published_split(tiles, labels, usable) else None
    if cfg.test_group:
        split_column = None
        args = (cfg.test_group, cfg.train_groups or None, cfg.group_column, cfg.val_fraction, cfg.seed)
        side = group_split(tiles, labels, usable, *args)
    else:
        side = make_split(tiles, labels, usable, split_column, cfg.group_column, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    parts = {name: np.flatnonzero(side == name) for name in ("train", "val", "test")}
    _check_parts(parts, cfg)
    train_labels = labels.to_numpy()[parts["train"]]
    train_classes = sorted({str(v) for v in train_labels})
    positive, positive_source = choose_positive(train_labels, train_classes, cfg.positive) if len(train_classes) > 1 else (None, "")
    carved = _carved(side, tiles, split_column, cfg)
    per_tile = cfg.group_column is not None and one_group_per_tile(group_ids(tiles, cfg.group_column)[carved])
    return _Run(
        task=spec.name,
        **_key_facts(store, keys),
        tiles=tiles,
        labels=labels.to_numpy(),
        split_column=split_column,
        side=side,
        parts=parts,
        positive=positive,
        positive_source=positive_source,
        per_tile=per_tile,
        cats=metadata_categories(tiles, cfg.metadata_columns),
        store_meta={"path": str(cfg.store), "tile_list_sha256": store.meta.get("tile_list_sha256"), "n_tiles": store.n_tiles},
        groups=group_ids(tiles, cfg.group_column) if cfg.group_column is not None and cfg.group_column in tiles else None,
    )


def _key_facts(store: Store, keys: list[str]) -> dict[str, Any]:
    """The _Run fields that follow from the feature keys: dims, variant provenance and extract settings."""
    variants = {k: {f: v for f, v in store.variant_info(k).items() if f not in _VOLATILE} for k in keys}
    extract = model_extract_settings(store.runs, keys, lambda: extract_settings(variants))
    return {"keys": keys, "dims": feature_dims(store, keys), "variants": variants, "extract": extract}


def _with_keys(store: Store, run: _Run, keys: list[str]) -> _Run:
    return dataclasses.replace(run, **_key_facts(store, keys))


def search_candidates(store: Store, features: list[str]) -> list[str]:
    """--feature-search's candidates: ``features`` when given, else every complete variant of the store (views are not)."""
    missing = [k for k in features if k not in store.variants or not store.is_complete(k)]
    if missing:
        raise HeadError(f"--features {missing[0]!r} is not a complete variant of {store.path}")
    return list(features) or [k for k in store.variants if not is_view(k) and store.is_complete(k)]


def _search(store: Store, cfg: FitConfig, run: _Run) -> SearchResult:
    """Forward selection on inner grouped folds of the train + val rows (never the test rows)."""
    rows = np.sort(np.concatenate([run.parts["train"], run.parts["val"]]))
    groups = run.groups if run.groups is not None else np.arange(len(run.labels)).astype(str)
    candidates = search_candidates(store, list(cfg.features))
    bar = progress_bar(unit="", enabled=cfg.progress, transient=True)  # fits of the inner folds, at most max_fits
    task = add_task(bar, "feature search", max_fits(len(candidates), cfg.search_folds, cfg.search_max))
    with bar:
        return feature_search(
            store,
            candidates,
            run.labels,
            rows,
            groups,
            lambda: make_head(cfg.head, **{"seed": cfg.seed, **cfg.head_params}),
            folds=cfg.search_folds,
            max_size=cfg.search_max,
            margin=cfg.search_margin,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            data_kw={"standardize": cfg.standardize, "pca": cfg.pca, "categories": run.cats, "tiles": run.tiles},
            on_fit=lambda: bar.update(task, advance=1),
        )


def _vs_default(
    store: Store, cfg: FitConfig, default_run: _Run, run: _Run, fitted: FitResult[Head] | FitResult[Ensemble]
) -> dict[str, Any]:
    """The selected set vs fit-head's default set on the test rows (else val), both trained the same way at the same seed."""
    name = "test" if len(run.parts["test"]) else "val"
    if name not in fitted.scored:
        return {"skipped": "no test or validation rows to compare on"}
    same = list(default_run.keys) == list(run.keys)
    base = (
        fitted
        if same
        else _fit(
            store, cfg.model_copy(update={"progress": False}), default_run, make_head(cfg.head, **{"seed": cfg.seed, **cfg.head_params})
        )
    )
    (y, pa), (_, pb) = fitted.scored[name], base.scored[name]
    index = {c: i for i, c in enumerate(fitted.head.classes_.tolist())}
    yi = np.array([index[v] for v in np.asarray(y).tolist()], dtype=np.int64)
    pos = index.get(run.positive, 1) if run.positive is not None else 1
    stats = paired_bootstrap_delta(yi, pa, pb, SEARCH_METRIC, seed=cfg.seed, positive=pos)
    return {
        "default": list(default_run.keys),
        "on": name,
        "metric": SEARCH_METRIC,
        "n_boot": 1000,
        **{k: round(v, 4) for k, v in stats.items()},
    }


def _check_parts(parts: dict[str, np.ndarray], cfg: FitConfig) -> None:
    if len(parts["train"]) == 0:
        raise HeadError("the split left no training rows")
    if cfg.calibrate == "temperature" and 0 < len(parts["val"]) < MIN_CALIBRATION_ROWS:
        raise HeadError(
            f"--calibrate temperature needs at least {MIN_CALIBRATION_ROWS} validation rows to fit a temperature; "
            f"this split has {len(parts['val'])} (raise --val-fraction, or drop --calibrate)"
        )


def _fit(store: Store, cfg: FitConfig, run: _Run, head: Head) -> FitResult[Head] | FitResult[Ensemble]:
    """One head through the engine (mito.heads.engine on StoreRows), or an ensemble of them (--ensemble)."""
    pipeline = {"standardize": cfg.standardize, "pca": cfg.pca, "categories": run.cats, "tiles": run.tiles}
    data = StoreRows(store, run.keys, run.labels, **pipeline, stream=cfg.stream, seed=cfg.seed, buffer_rows=cfg.buffer_rows)
    ens = parse_ensemble(cfg.ensemble)
    if ens is None:
        with _epoch_progress(cfg.progress, head) as callbacks:
            return fit_and_score(head, data, run.parts, callbacks=callbacks)
    base_seed = int(cfg.head_params.get("seed", cfg.seed))
    return fit_ensemble(
        ens, lambda s: make_head(cfg.head, **{**cfg.head_params, "seed": s}), base_seed, data, run.parts, run.groups, cfg.progress
    )


def _metrics(
    cfg: FitConfig, run: _Run, fitted: FitResult[Head] | FitResult[Ensemble], t_start: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """metrics.json: the scores on test (else val), calibration, split and training facts."""
    head = fitted.head
    scored, calibration = fitted.scored, None
    if cfg.calibrate == "temperature":
        raw = {name: classification_metrics(ys, proba, head.classes_, run.positive) for name, (ys, proba) in scored.items()}
        scored, calibration = calibrate_scored(scored, head.classes_.tolist(), run.positive)
        calibration.update({f"{n}_{k}_before": raw[n][k] for n in ("test",) if n in raw for k in ("ece", "brier", "balanced_accuracy")})
    evals = {name: classification_metrics(ys, proba, head.classes_, run.positive) for name, (ys, proba) in scored.items()}
    if not evals:
        raise HeadError("no validation or test rows to measure the head on")
    main = "test" if "test" in evals else "val"
    metrics = {
        **evals[main],
        **({"positive_source": run.positive_source} if run.positive is not None else {}),
        "evaluated_on": main,
        "train_seconds": round(fitted.train_seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "n_train": len(run.parts["train"]),
        "n_val": len(run.parts["val"]),
        "n_test": len(run.parts["test"]),
        "groups_shared_between_sides": _shared_groups(run),
        "streamed": fitted.streamed,
        "features": run.keys,
        "features_default": not cfg.features and not cfg.feature_search,
        "split_column": run.split_column,
        "split": _split_text(cfg, run),
        **({"warnings": [per_tile_warning(cfg.group_column or "group")]} if run.per_tile else {}),
        **({"val": evals["val"]} if main == "test" and "val" in evals else {}),
        **({"ensemble": head.report} if isinstance(head, Ensemble) else {}),
        **{
            k: getattr(head, k)
            for k in ("best_epoch_", "epochs_run_", "best_iteration_", "C_", "precision_", "threads_")
            if hasattr(head, k)
        },
    }
    metrics = {k.rstrip("_"): v for k, v in metrics.items()}
    if calibration is not None:
        metrics["calibration"] = calibration
    return metrics, calibration


def _shared_groups(run: _Run) -> int:
    """Groups found on two sides of the split (0 when rows have no group)."""
    if run.groups is None:
        return 0
    g = {name: set(run.groups[r]) for name, r in run.parts.items()}
    return len(g["train"] & g["test"]) + len(g["train"] & g["val"]) + len(g["val"] & g["test"])


def _split_text(cfg: FitConfig, run: _Run) -> str:
    if cfg.test_group:
        return group_split_description(cfg.test_group, cfg.train_groups, cfg.group_column, cfg.val_fraction)
    return split_description(run.split_column, cfg.group_column, cfg.val_fraction, cfg.test_fraction, run.per_tile)


def _config(cfg: FitConfig, run: _Run, fitted: FitResult[Head] | FitResult[Ensemble], calibration: dict[str, Any] | None) -> dict[str, Any]:
    """config.json: what the model is, what it needs to predict, and how it was trained."""
    head, streamed = fitted.head, fitted.streamed
    ensembled = isinstance(head, Ensemble)
    return {
        "mito_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": run.task,
        "classes": head.classes_.tolist(),
        **({"positive": run.positive, "positive_source": run.positive_source} if run.positive is not None else {}),
        "features": run.keys,
        "feature_dims": run.dims,
        "variants": run.variants,
        "metadata_columns": list(cfg.metadata_columns),
        "metadata_categories": run.cats,
        "pipeline": fitted.pipeline.config(),
        "n_features_in": int(fitted.n_features_in),
        "head": {"name": head.name, "params": head.get_params()},
        **(
            {"calibration": {k: calibration[k] for k in ("method", "temperature", "fitted_on", "n_val")}}
            if calibration and calibration["method"] == "temperature"
            else {}
        ),
        "extract": run.extract[0],
        "extract_from": run.extract[1],
        "training": {
            "store": run.store_meta,
            "split_column": run.split_column,
            "split": _split_text(cfg, run),
            "group_column": cfg.group_column,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
            "streamed": streamed,
            **({"test_group": cfg.test_group, "train_groups": cfg.train_groups} if cfg.test_group else {}),
            **({"ensemble": cfg.ensemble} if ensembled else {}),
            **({"buffer_rows": cfg.buffer_rows} if streamed else {}),
        },
    }


def _carved(side: np.ndarray, tiles: Any, split_column: str | None, cfg: FitConfig) -> np.ndarray:
    """The rows a random grouped split divided (the others came from a split column): all used rows without a split
    column, else the train and val rows when val was carved from train, else none; with --test-group the rows it
    trained on (val carved from them)."""
    used = side != ""
    if cfg.test_group or split_column is None:
        return np.flatnonzero(used & (side != "test")) if cfg.test_group else np.flatnonzero(used)

    had_val = split_sides(tiles, split_column) == "val"
    return np.zeros(0, np.int64) if (had_val & used).any() else np.flatnonzero(np.isin(side, ["train", "val"]))


@contextmanager
def _epoch_progress(enabled: bool, head: Any) -> Iterator[list[Callback]]:
    """The fit callbacks: a rich progress bar over epochs (rate in epochs/s, ETA) for heads that train in epochs."""
    if not enabled or "epochs" not in head.get_params():
        yield []
        return
    bar = progress_bar(unit="epochs", transient=True, info=True)
    task = add_task(bar, f"training {head.name}", None)
    with bar:
        yield [EpochBar(bar, task)]


class EpochBar:
    """A Callback that moves a progress bar one epoch at a time, showing the loss and the validation score."""

    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task, self.t0 = bar, task, time.perf_counter()

    def on_epoch(self, rec: dict[str, float], max_epochs: int) -> None:
        """Advance the bar to this epoch."""
        info = f"loss {rec['train_loss']:.4f}"
        if "val_balanced_accuracy" in rec:
            info += f", val bal acc {rec['val_balanced_accuracy']:.3f}"
        rate = rec["epoch"] / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, total=max_epochs, completed=rec["epoch"], info=info, rate=f"{rate:.2f}")


def _write_model_dir(
    out: Path,
    head: Any,
    pipe: FeaturePipeline,
    config: dict,
    metrics: dict,
    overwrite: bool,
    split: tuple[Any, np.ndarray] | None = None,
    spec: FitConfig | None = None,
) -> None:
    """Write into a hidden sibling, then move it into place (mito.core.io.atomic_dir): a crash never leaves a half-written
    model, and only a model directory (or an empty folder) is ever replaced. ``split``: (identity columns, side per
    row), recorded so that predict can tell the tiles the model was fitted on from the others."""

    def fill(tmp: Path) -> None:
        head.save(tmp)
        if split is not None:
            save_split(tmp, *split)
        sha = pipe.save(tmp)
        doc = {**config, "pipeline": {**config["pipeline"], **({"sha256": sha} if sha else {})}}
        write_json(tmp / CONFIG_FILE, doc)
        write_json(tmp / METRICS_FILE, metrics)
        if spec is not None:  # run.yaml: how to make this model again (mito rerun)
            write_run_record(tmp, "fit-head", spec, config["training"]["store"].get("tile_list_sha256"))
        write_manifest(tmp, "ensemble" if config["head"]["name"] == "ensemble" else "model", "tile", head=config["head"]["name"])

    def replace(p: Path) -> bool:
        return overwrite and (is_model_folder(p) or (p.is_dir() and not p.is_symlink() and not any(p.iterdir())))

    try:
        atomic_dir(out, fill, replace)
    except OutputError as e:
        raise HeadError(f"{e}; only a model directory made by mito fit-head is replaced (with --overwrite)") from None
