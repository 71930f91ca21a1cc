"""predict: a saved model applied to a store (checked to match the model's provenance) or to new tiles, extracted on the fly."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mito.core.artifacts import register_loader
from mito.core.errors import TaskError
from mito.core.io import artifact_kind, atomic_write, check_output_file, csv_probabilities, write_json, write_manifest
from mito.core.progress import add_task, advance, progress_bar
from mito.core.tasks import resolve_task as resolve_spec
from mito.datasets import PROXY_TASKS
from mito.heads.base import HEAD_FILE, FittedHead, Head, HeadError, read_json_file
from mito.heads.calibrate import apply_temperature, model_temperature
from mito.heads.ensemble import Ensemble, load_any_head
from mito.heads.features import PIPELINE_FILE, FeaturePipeline, check_store_matches, one_hot
from mito.heads.model import CONFIG_FILE, Callback
from mito.heads.split import UNKNOWN, UNSEEN, identity_columns, recorded_split, side_of
from mito.store import open_store, store_input_files


@dataclass
class TileModel:
    """A tile-level model directory loaded whole: config, head and the saved standardise/PCA pipeline.

    ``predict_proba(X)`` takes the RAW store features (the variants of ``config['features']`` side by side, as
    ``select_features`` reads them) and applies the pipeline and metadata one-hots exactly as ``mito predict`` does.
    ``config, head, pipeline = load_model(d)`` still unpacks.
    """

    config: dict[str, Any]
    head: FittedHead
    pipeline: FeaturePipeline
    path: Path

    level: ClassVar[str] = "tile"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.config, self.head, self.pipeline))

    @property
    def name(self) -> str:
        """The head's name (``ensemble`` for an ensemble)."""
        return str(self.head.name)

    def fit(
        self, X: Any, y: Any = None, *, eval_set: Any = None, views: np.ndarray | None = None, callbacks: Sequence[Callback] = ()
    ) -> TileModel:
        """Re-fit the pipeline and the head on raw store features (fit_head makes a model directory from a store);
        the model's metadata columns are not refitted (a model with metadata columns is refused)."""
        if self.config.get("metadata_categories"):
            raise HeadError("this model also takes metadata columns: re-train it with mito fit-head")
        X = np.asarray(X, dtype=np.float32)
        self.pipeline.fit(X, seed=int(self.config.get("training", {}).get("seed", 0)))
        ev = None if eval_set is None else (self.pipeline.transform(np.asarray(eval_set[0], dtype=np.float32)), eval_set[1])
        self.head.fit(self.pipeline.transform(X), y, eval_set=ev, views=views, callbacks=callbacks)
        return self

    def save(self, path: str | Path) -> None:
        """The head, the pipeline, config.json and the manifest: a model directory load_model reads back."""
        path = Path(path)
        self.head.save(path)
        sha = self.pipeline.save(path)
        write_json(path / CONFIG_FILE, {**self.config, "pipeline": {**self.pipeline.config(), **({"sha256": sha} if sha else {})}})
        write_manifest(path, "ensemble" if self.name == "ensemble" else "model", "tile", head=self.name)

    @classmethod
    def load(cls, path: str | Path) -> TileModel:
        """A tile-level model directory (load_model)."""
        return load_model(path)

    @property
    def classes_(self) -> np.ndarray:
        """The classes, in the order of predict_proba's columns."""
        return self.head.classes_

    @property
    def n_features_in_(self) -> int:
        """Width of the raw features the model takes (before its pipeline)."""
        return int(sum(self.config["feature_dims"]))

    def transform(self, X: Any, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """Raw features (float32) -> what the head takes: the pipeline, then metadata one-hots from ``metadata`` (a
        table with one row per row of X and the model's metadata columns)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise HeadError(
                f"the model takes {self.n_features_in_} raw feature columns ({', '.join(self.config['features'])}), got shape {X.shape}"
            )
        X = self.pipeline.transform(X)
        cats = self.config.get("metadata_categories") or {}
        if cats:
            if metadata is None or len(metadata) != len(X):
                raise HeadError(
                    f"the model also needs metadata columns {', '.join(cats)}: pass metadata=, a table with one row per row of X"
                )
            X = np.concatenate([X, one_hot(metadata, np.arange(len(X)), cats).astype(X.dtype)], axis=1)
        return X

    def predict_proba(self, X: Any, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """Class probabilities from raw store features, as mito predict computes them (temperature-scaled when the
        model was fitted with --calibrate temperature)."""
        proba = self.head.predict_proba(self.transform(X, metadata))
        t = model_temperature(self.config)
        return proba if t is None else apply_temperature(proba, t)

    def predict(self, X: Any, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """The most probable class of each row of raw store features."""
        return self.classes_[self.predict_proba(X, metadata).argmax(axis=1)]


def load_model(model_dir: str | os.PathLike) -> TileModel:
    """The TileModel in a directory written by fit_head; a missing or damaged file is a one-line HeadError naming it."""
    path = Path(model_dir)
    if not (path / CONFIG_FILE).is_file() or not (path / HEAD_FILE).is_file():
        raise HeadError(f"{path} is not a mito model directory (needs {CONFIG_FILE} and {HEAD_FILE}; made by mito fit-head)")
    config = read_json_file(path / CONFIG_FILE, "model config")
    missing = [k for k in ("task", "features", "feature_dims", "variants", "pipeline") if k not in config]
    if missing or not isinstance(config.get("pipeline"), dict) or not isinstance(config.get("features"), list):
        raise HeadError(f"{path / CONFIG_FILE} is not a valid model config (missing or bad: {', '.join(missing) or 'pipeline/features'})")
    head = load_any_head(path)  # a head, or an Ensemble of heads (mito.heads.ensemble)
    pipeline = FeaturePipeline.load(path, config["pipeline"])
    raw_d = int(sum(config["feature_dims"]))
    if pipeline.in_dim is not None and pipeline.in_dim != raw_d:
        raise HeadError(f"{path / PIPELINE_FILE} expects {pipeline.in_dim} features, {CONFIG_FILE} says {raw_d}")
    width = pipeline.out_dim(raw_d) + sum(len(c) for c in (config.get("metadata_categories") or {}).values())
    if width != head.n_features_in_:
        raise HeadError(f"{path / CONFIG_FILE} describes {width} head inputs, {path / HEAD_FILE} says {head.n_features_in_}")
    return TileModel(config, head, pipeline, path)


def load_head(path: str | os.PathLike) -> Head | Ensemble | TileModel:
    """Load what ``path`` holds: a model directory made by fit-head -> its TileModel (predicts from raw store features,
    pipeline applied, like mito predict); a folder written by ``head.save`` -> the bare head."""
    p = Path(path)
    if artifact_kind(p) in (("model", "tile"), ("ensemble", "tile")):
        return load_model(p)
    return load_any_head(p)


register_loader("model", "tile", lambda a: load_model(a.path))
register_loader("ensemble", "tile", lambda a: load_model(a.path))
register_loader("head", "tile", lambda a: load_any_head(a.path))


def id_columns(tiles: pd.DataFrame) -> list[str]:
    """How a prediction row names its tile: path, else slide,x,y, else tile_id."""
    if "path" in tiles and tiles["path"].notna().any():
        return ["path"]
    for cols in (["slide", "x", "y"], ["slide", "slide_x", "slide_y"]):
        if all(c in tiles for c in cols):
            return cols
    return ["tile_id"]


def check_store_out(out_csv: str | os.PathLike, store: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a predictions CSV inside a model directory or the store, on a file the store was made from (even with
    overwrite), or on an existing file (unless overwrite)."""
    protect = (store,) if not Path(store).is_dir() else ()  # model dirs and stores: always
    return check_output_file(out_csv, overwrite=overwrite, protect=protect, inputs=store_input_files(store))


def write_predictions(df: pd.DataFrame, out_csv: str | os.PathLike) -> Path:
    """The predictions CSV (probabilities to 6 significant digits), written atomically."""
    return atomic_write(out_csv, lambda p: csv_probabilities(df).to_csv(p, index=False), ".csv")


def predict(
    model_dir: str | os.PathLike,
    store: str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict every readable tile of ``store`` (checked to match the model's provenance); optionally write a CSV (never
    over an existing file unless ``overwrite``). New tiles (a folder, CSV or slide): mito.app.predict."""
    model = load_model(model_dir)
    if out_csv is not None:
        check_store_out(out_csv, store, overwrite)
    df = predict_store(model, str(store), progress)
    df.attrs["skipped_slides"] = []
    if out_csv is not None:
        write_predictions(df, out_csv)
    return df


def predict_store(model: TileModel, store_path: str, progress: bool = False) -> pd.DataFrame:
    """A loaded model's predictions for every readable tile of a store: tile_id and the id columns, label and split when
    known, pred, p_<class>."""
    config = model.config
    keys = config["features"]
    with open_store(store_path, "r") as s:
        check_store_matches(s, config["variants"])
        tiles = s.tiles
        unreadable = np.asarray(s.unreadable, bool)
        rows = np.flatnonzero(~unreadable)
        if len(rows) == 0:
            raise HeadError(f"{store_path} has no readable tile to predict")
        probs, order = [], []
        cats = config.get("metadata_categories") or {}
        with progress_bar("tiles", enabled=progress, transient=True) as bar:
            task = add_task(bar, "scoring", len(rows))
            t0, done = time.perf_counter(), 0
            for idx, block in s.iter_chunks(keys, rows):
                meta = tiles.iloc[idx].reset_index(drop=True) if cats else None
                probs.append(model.predict_proba(block, meta))
                order.append(idx)
                done += len(idx)
                advance(bar, task, len(idx), t0, done)
    idx = np.concatenate(order)
    proba = np.concatenate(probs)
    classes = model.classes_
    ids = ["tile_id", *(c for c in id_columns(tiles) if c != "tile_id")]  # tile_id first: joins with the store's tile table
    df = tiles.iloc[idx][ids].reset_index(drop=True)
    bad = np.flatnonzero(unreadable)
    df.attrs["unreadable"] = tiles.iloc[bad[:10]][id_columns(tiles)].astype(str).agg(":".join, axis=1).tolist() if len(bad) else []
    df.attrs["n_unreadable"] = len(bad)
    known = task_labels_or_none(tiles, config["task"])
    if known is not None and known.iloc[idx].notna().any():
        df["label"] = known.iloc[idx].to_numpy()
    picked = tiles.iloc[idx]
    df["split"] = side_of(picked[identity_columns(picked)], recorded_split(model.path))
    df["pred"] = classes[proba.argmax(axis=1)]
    for j, c in enumerate(classes.tolist()):
        df[f"p_{c}"] = proba[:, j]
    if isinstance(config.get("positive"), str):
        df.attrs["positive"] = config["positive"]  # the class heatmaps draw (mito.report.slides.prob_columns)
    return df


def not_predicted_lines(df: pd.DataFrame) -> list[str]:
    """What predict left out, one line each: slides of SOURCE that could not be tiled (as extract lists them), and
    the count of unreadable tiles (with a few of them)."""
    lines = [f"slide skipped: {s['reason']}" for s in df.attrs.get("skipped_slides") or []]
    n = int(df.attrs.get("n_unreadable") or 0)
    if n:
        shown = ", ".join(df.attrs.get("unreadable") or [])
        lines.append(f"{n} unreadable tile{'s' if n != 1 else ''} not predicted: {shown}{' ...' if n > 10 else ''}")
    return lines


def task_labels_or_none(tiles: pd.DataFrame, task: str) -> pd.Series | None:
    """The model's task labels on a tile table (through the one task resolver), or None when the table lacks them."""
    try:
        return resolve_spec(tiles, task, PROXY_TASKS).labels(tiles)
    except TaskError:
        return None


def agreement(preds: pd.DataFrame) -> dict[str, Any]:
    """Agreement of ``pred`` with known ``label`` where it means something: on the test rows of the model's split and
    on labelled rows it never saw, each on its own (n, agreement, balanced accuracy); ``seen``: labelled train/val rows
    left out. A model that records no split is scored over every labelled row (``all``), training rows included."""
    from sklearn.metrics import balanced_accuracy_score

    if "label" not in preds:
        return {}
    label = preds["label"]
    known = (label.notna() & (label.astype(str) != "")).to_numpy()
    side = preds["split"].astype(str).to_numpy() if "split" in preds else np.full(len(preds), UNKNOWN)

    def score(rows: np.ndarray) -> dict[str, Any]:
        y, p = label[rows].astype(str).to_numpy(), preds["pred"][rows].astype(str).to_numpy()
        return {"n": int(rows.sum()), "agreement": float((y == p).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, p))}

    if (side[known] == UNKNOWN).all():
        return {"all": score(known)} if known.any() else {}
    out: dict[str, Any] = {}
    for part in ("test", UNSEEN):
        rows = known & (side == part)
        if rows.any():
            out[part] = score(rows)
    out["seen"] = int((known & np.isin(side, ["train", "val"])).sum())
    return out


def agreement_text(a: dict[str, Any], unit: str = "tiles") -> str:
    """The agreement summary in words, saying which rows each number is computed on."""

    def nums(s: dict[str, Any]) -> str:
        return f"balanced accuracy {s['balanced_accuracy']:.3f}, agreement {s['agreement']:.3f}"

    if not a:
        return ""
    if "all" in a:
        return (
            f"agreement with known labels over all {a['all']['n']} labelled {unit}, training {unit} included (this model "
            f"records no split): {nums(a['all'])}"
        )
    parts = []
    if "test" in a:
        parts.append(f"{a['test']['n']} test {unit} of the model's split: {nums(a['test'])}")
    if UNSEEN in a:
        parts.append(f"{a[UNSEEN]['n']} labelled {unit} it never saw: {nums(a[UNSEEN])}")
    if not parts:
        return f"no agreement reported: every labelled {unit[:-1]} here ({a['seen']}) was used to fit the model"
    seen = f"; {a['seen']} training and validation {unit} not scored (the model learned from them)" if a.get("seen") else ""
    return "agreement with known labels on " + "; on ".join(parts) + seen
