"""Slide-level fit and predict: bags from the store -> a MIL head -> model directory; slides.csv, per-tile attention, pictures."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, ValidationError

from mito.core.artifacts import register_loader
from mito.core.errors import MitoError
from mito.core.io import (
    artifact_kind,
    atomic_dir,
    atomic_write,
    check_output_file,
    csv_probabilities,
    write_json,
    write_manifest,
)
from mito.core.metrics import classification_metrics
from mito.core.progress import add_task, progress_bar
from mito.core.runrecord import write_run_record
from mito.core.sections import OutputSection, PositiveSection, SeedSection, StoreSection
from mito.core.tasks import choose_positive
from mito.core.validation import one_line
from mito.core.version import __version__
from mito.heads.bags import BagReader, Bags, BagSet, bag_table, left_out, make_bags, parse_bag_label
from mito.heads.base import HeadError, read_json_file
from mito.heads.engine import fit_and_score
from mito.heads.features import check_store_matches, feature_dims
from mito.heads.mil import MILHead, load_mil_head, make_mil_head
from mito.heads.model import CONFIG_FILE, METRICS_FILE, Callback, lookup
from mito.heads.split import TEST_FRACTION, VAL_FRACTION, make_split, recorded_split, save_split, side_of
from mito.heads.train import backbone_variants, check_model_out, is_model_folder
from mito.store import open_store, store_input_files


class SlideFitConfig(PositiveSection, SeedSection, OutputSection, StoreSection):
    """One `mito fit-head --level slide` run (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(
        description="Tile-table column giving the bag label (or, with bag_label any:VALUE, the tile label).", examples=["label"]
    )
    head: str = Field("abmil", description="The slide-level head: mean-linear, mean-mlp or abmil.")
    features: list[str] = Field(default_factory=list, description="Variant keys to concatenate (default: as fit-head).")
    bag_column: str | None = Field(None, description="Tile-table column grouping tiles into bags (default: slide).")
    bag_label: str | None = Field(
        None, description="any:VALUE = the bag is 'yes' when any tile's task label is VALUE (default: task is constant per bag)."
    )
    group_column: str | None = Field(None, description="Keep bags of one group (e.g. patient) on one side (default: by bag).")
    val_fraction: float = Field(VAL_FRACTION, description="Share of the bags left after the test bags held out for early stopping.")
    test_fraction: float = Field(TEST_FRACTION, description="Share of the bags held out for the metrics.")
    head_params: dict[str, Any] = Field(
        default_factory=dict, description="The head's own options, e.g. {max_tiles: 256} (fit-head --level slide -p help lists them)."
    )
    progress: bool = Field(False, description="Show progress bars.")


def bag_positive(bags: Bags, train: np.ndarray, bag_label: str | None, requested: str | None) -> tuple[str | None, str]:
    """The positive class of a two-class bag task: ``requested``; else with ``--bag-label any:VALUE`` the 'yes' bags
    (the class that option defines); else the minority class of the training bags (see mito.core.tasks.choose_positive)."""
    if requested is None and bag_label is not None and sorted(map(str, bags.classes)) == ["no", "yes"]:
        return "yes", f"--bag-label {bag_label}: the bags holding a {parse_bag_label(bag_label)!r} tile"
    return choose_positive(bags.labels[train], bags.classes, requested)


def make_slide_fit_config(**kw: Any) -> SlideFitConfig:
    """SlideFitConfig from keyword arguments, with validation problems as one-line HeadErrors."""
    try:
        return SlideFitConfig(**kw)
    except ValidationError as e:
        raise HeadError(one_line(e)) from None


@dataclass
class SlideModel:
    """A slide-level model directory loaded whole: its config and its MIL head (``predict_proba`` takes a BagSet)."""

    config: dict[str, Any]
    head: MILHead
    path: Path
    level: ClassVar[str] = "slide"

    @property
    def name(self) -> str:
        """The head's name."""
        return self.head.name

    @property
    def classes_(self) -> np.ndarray:
        """The classes, in the order of predict_proba's columns."""
        if self.head.classes_ is None:
            raise HeadError(f"the slide-level head in {self.path} is not fitted")
        return self.head.classes_

    def fit(self, X: BagSet, y: Any = None, *, eval_set: Any = None, views: Any = None, callbacks: Sequence[Callback] = ()) -> SlideModel:
        """Re-fit the head on the bags of ``X`` (fit_slide_head makes a model directory from a store)."""
        self.head.fit(X, y, eval_set=eval_set, views=views, callbacks=callbacks)
        return self

    def predict_proba(self, X: BagSet) -> np.ndarray:
        """Class probabilities per bag of ``X``."""
        return self.head.predict_proba(X)

    def save(self, path: str | Path) -> None:
        """The head, its config and the manifest (a model directory predict can load)."""
        path = Path(path)
        self.head.save(path)
        write_json(path / CONFIG_FILE, self.config)
        write_manifest(path, "model", "slide", head=self.head.name)

    @classmethod
    def load(cls, path: str | Path) -> SlideModel:
        """A slide-level model directory (load_slide_model)."""
        return load_slide_model(path)


def load_slide_model(model_dir: str | os.PathLike) -> SlideModel:
    """The SlideModel in a directory written by fit-head --level slide; damaged files are one-line HeadErrors."""
    path = Path(model_dir)
    if artifact_kind(path) != ("model", "slide"):
        raise HeadError(f"{path} is not a slide-level model directory (made by mito fit-head --level slide)")
    return SlideModel(read_json_file(path / CONFIG_FILE, "model config"), load_mil_head(path), path)


register_loader("model", "slide", lambda a: load_slide_model(a.path))
register_loader("head", "slide", lambda a: load_mil_head(a.path))


def bag_split(bags: Bags, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Bag indices for train/val/test, stratified by label and grouped (patient, else the bag itself)."""
    table = bags.table()
    side = make_split(table, table["label"], np.ones(len(table), bool), None, "group", val_fraction, test_fraction, seed)
    return {name: np.flatnonzero(side == name) for name in ("train", "val", "test")}


def fit_slide_head(cfg: SlideFitConfig) -> dict[str, Any]:
    """Train a slide-level head from a store's bags as ``cfg`` says; write the model directory; return the metrics."""
    lookup("slide", cfg.head)  # an unknown head is one line before anything else is checked
    if cfg.out is not None:
        check_model_out(cfg.out, cfg.store, cfg.overwrite)
    head = make_mil_head(cfg.head, **{"seed": cfg.seed, **cfg.head_params})
    t0 = time.perf_counter()
    with open_store(cfg.store, "r") as store:
        keys = list(cfg.features) or backbone_variants(store)
        tiles = bag_table(store, cfg.task, cfg.bag_column, cfg.group_column)
        bags = make_bags(tiles, cfg.task, cfg.bag_column, cfg.bag_label, cfg.group_column, store.unreadable)
        parts = bag_split(bags, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        positive = bag_positive(bags, parts["train"], cfg.bag_label, cfg.positive)
        bar = progress_bar(unit="epochs", transient=True, info=True, enabled=cfg.progress)
        task_id = add_task(bar, f"training {head.name} on {len(parts['train'])} bags", head.epochs)
        t_fit = time.perf_counter()
        with bar:
            fitted = fit_and_score(head, BagSet(BagReader(store, keys), bags), parts, callbacks=[_BagEpochBar(bar, task_id)])
        seconds = t_fit - t0 + fitted.train_seconds  # bags made and head trained (scoring not counted)
        evals = {name: classification_metrics(ys, proba, bags.classes, positive[0]) for name, (ys, proba) in fitted.scored.items()}
        provenance = {
            "dims": feature_dims(store, keys),
            "variants": {k: {f: v for f, v in store.variant_info(k).items() if f != "added"} for k in keys},
            "store": {"path": str(cfg.store), "tile_list_sha256": store.meta.get("tile_list_sha256"), "n_tiles": store.n_tiles},
            "dropped": left_out(bags, store.meta, cfg.bag_column),
        }
    if not evals:
        raise HeadError("no validation or test bags to measure the head on")
    metrics = _slide_metrics(cfg, head, bags, parts, evals, positive, keys, provenance, seconds)
    config = _slide_config(cfg, head, bags, positive, keys, provenance, fitted.n_features_in, metrics["split"])
    if cfg.out is not None:
        _write_slide_model(cfg, head, bags, parts, config, metrics)
        metrics["model_dir"] = str(cfg.out)
    return metrics


class _BagEpochBar:
    """A Callback moving the slide-level fit's progress bar one epoch at a time."""

    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def on_epoch(self, rec: dict[str, float], max_epochs: int) -> None:
        """Advance the bar to this epoch, showing the loss and the validation score."""
        info = f"loss {rec['train_loss']:.4f}" + (
            f", val bal acc {rec['val_balanced_accuracy']:.3f}" if "val_balanced_accuracy" in rec else ""
        )
        self.bar.update(self.task, completed=rec["epoch"], info=info)


def _slide_metrics(
    cfg: SlideFitConfig,
    head: MILHead,
    bags: Bags,
    parts: dict[str, np.ndarray],
    evals: dict[str, dict[str, Any]],
    positive: tuple[str | None, str],
    keys: list[str],
    provenance: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """metrics.json of a slide-level model: scores on the test (else val) bags, the split and training facts."""
    main = "test" if "test" in evals else "val"
    dropped = provenance["dropped"]
    return {
        **evals[main],
        **({"positive_source": positive[1]} if positive[0] is not None else {}),
        "evaluated_on": main,
        "level": "slide",
        "task": bags.task,
        "task_description": bags.description,
        "n_train": len(parts["train"]),
        "n_val": len(parts["val"]),
        "n_test": len(parts["test"]),
        "n_left_out": len(dropped),
        "left_out": dropped,
        "n_tiles_per_bag_median": float(np.median(bags.sizes)),
        "train_seconds": round(seconds, 3),
        "best_epoch": head.best_epoch_,
        "epochs_run": len(head.history_),
        "features": keys,
        "features_default": not cfg.features,
        "split": f"random by {cfg.group_column or cfg.bag_column or 'slide'!r}: test {cfg.test_fraction:g}, val {cfg.val_fraction:g} of the rest",
        **({"val": evals["val"]} if main == "test" and "val" in evals else {}),
    }


def _slide_config(
    cfg: SlideFitConfig,
    head: MILHead,
    bags: Bags,
    positive: tuple[str | None, str],
    keys: list[str],
    provenance: dict[str, Any],
    width: int,
    split: str,
) -> dict[str, Any]:
    """config.json of a slide-level model: what it is, what predict needs, how it was trained."""
    return {
        "mito_version": __version__,
        "level": "slide",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": cfg.task,
        "bag_column": cfg.bag_column or "slide",
        "bag_label": cfg.bag_label,
        "group_column": cfg.group_column,
        "task_description": bags.description,
        "classes": list(bags.classes),
        **({"positive": positive[0], "positive_source": positive[1]} if positive[0] is not None else {}),
        "features": keys,
        "feature_dims": provenance["dims"],
        "variants": provenance["variants"],
        "n_features_in": width,
        "head": {"name": head.name, "params": head.params()},
        "training": {"store": provenance["store"], "seed": cfg.seed, "split": split},
    }


def _write_slide_model(
    cfg: SlideFitConfig, head: MILHead, bags: Bags, parts: dict[str, np.ndarray], config: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """The model directory, written into a hidden sibling and moved into place (mito.core.io.atomic_dir)."""
    side = np.full(len(bags), "", dtype=object)
    for name, idx in parts.items():
        side[idx] = name
    bag_column = config["bag_column"]

    def fill(tmp: Path) -> None:
        head.save(tmp)
        save_split(tmp, pd.DataFrame({bag_column: bags.names}), side)  # predict tells the bags fitted on from the others
        write_json(tmp / CONFIG_FILE, config)
        write_json(tmp / METRICS_FILE, metrics)
        sha = str(config["training"]["store"].get("tile_list_sha256") or "")
        write_run_record(tmp, "fit-slide", cfg, sha)  # how to make it again (mito rerun)
        write_manifest(tmp, "model", "slide", head=head.name)

    atomic_dir(Path(cfg.out or ""), fill, lambda p: cfg.overwrite and (is_model_folder(p) or (p.is_dir() and not any(p.iterdir()))))


def tiles_csv_path(out_csv: str | os.PathLike) -> Path:
    """Where predict writes the per-tile weights beside ``slides.csv``: ``slides.tiles.csv``."""
    p = Path(out_csv)
    return p.with_name(p.stem + ".tiles.csv")


def predict_slides(
    model_dir: str | os.PathLike, store_path: str | os.PathLike, out_csv: str | os.PathLike | None = None, overwrite: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per bag of the store (pred, p_<class>, label when the store has it) and one row per tile with its
    attention weight; written as ``out_csv`` and ``<stem>.tiles.csv``. The bag table's ``attrs`` name the bag column,
    the head and the bags left out (pictures of them: mito.report.slides.draw_pictures)."""
    model_dir = Path(model_dir)
    model = load_slide_model(model_dir)
    cfg, head = model.config, model.head
    if out_csv is not None:
        inputs = store_input_files(store_path)
        check_output_file(out_csv, overwrite, protect=(store_path,), inputs=inputs)
        check_output_file(tiles_csv_path(out_csv), overwrite, protect=(store_path,), inputs=inputs)
    with open_store(store_path, "r") as store:
        check_store_matches(store, cfg["variants"])
        tiles = store.tiles
        bags = make_bags(tiles, None, cfg["bag_column"], None, None, store.unreadable)
        dropped = left_out(bags, store.meta, cfg["bag_column"])
        proba, rows, att = head.predict_bags(BagSet(BagReader(store, cfg["features"]), bags))
    classes = [str(c) for c in model.classes_]
    slides = pd.DataFrame({cfg["bag_column"]: bags.names, "n_tiles": bags.sizes})
    known = _known_labels(tiles, cfg, bags)
    if known is not None:
        slides["label"] = known
    slides["split"] = side_of(slides[[cfg["bag_column"]]], recorded_split(model_dir))
    slides["pred"] = np.asarray(classes)[proba.argmax(1)]
    for j, c in enumerate(classes):
        slides[f"p_{c}"] = proba[:, j]
    slides.attrs["left_out"] = dropped  # bags with no readable tile (or slides with no tile): not predicted
    slides.attrs["bag_column"], slides.attrs["head"] = cfg["bag_column"], head.name
    per_tile = []
    for name, r, a in zip(bags.names, rows, att):
        rank = np.empty(len(a), np.int64)
        rank[np.argsort(-a, kind="stable")] = np.arange(1, len(a) + 1)
        per_tile.append(pd.DataFrame({"bag": name, "row": r, "attention": a, "rank": rank}))
    tile_df = pd.concat(per_tile, ignore_index=True)
    extra = [c for c in ("tile_id", "path", "x", "y", "slide_x", "slide_y") if c in tiles]
    tile_df = pd.concat(
        [tile_df.rename(columns={"bag": cfg["bag_column"]}), tiles.iloc[tile_df["row"].to_numpy()][extra].reset_index(drop=True)], axis=1
    )
    tile_df = tile_df.drop(columns="row")
    if out_csv is not None:
        atomic_write(out_csv, lambda p: csv_probabilities(slides).to_csv(p, index=False), ".csv")
        atomic_write(tiles_csv_path(out_csv), lambda p: tile_df.to_csv(p, index=False), ".csv")
    return slides, tile_df


def _known_labels(tiles: pd.DataFrame, cfg: dict[str, Any], bags: Bags) -> np.ndarray | None:
    """Bag labels when the store has the task (bags whose label is not defined get '')."""
    try:
        labelled = make_bags(tiles, cfg["task"], cfg["bag_column"], cfg.get("bag_label"), None, None, min_per_class=1)
    except MitoError:  # the store lacks the task's column, or its bags are not labelled the model's way
        return None
    by_name = dict(zip(labelled.names, labelled.labels))
    return np.array([by_name.get(n, "") for n in bags.names], dtype=object)


def describe_head(head: MILHead) -> str:
    """A one-line summary of a slide-level head's main options."""
    return f"{head.name} (max_tiles {head.max_tiles}, tile_dropout {head.tile_dropout}, loss {head.loss}, noise {head.noise})"
