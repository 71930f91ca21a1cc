"""Slide-level fit and predict: bags from the store -> a MIL head -> model directory; slides.csv, per-tile attention, pictures."""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import mito
from mito.cache import open_store, store_input_files
from mito.errors import MitoError
from mito.heads.bags import BagReader, Bags, bag_table, left_out, left_out_line, make_bags, parse_bag_label
from mito.heads.base import HeadError, read_json_file
from mito.heads.features import check_store_matches, feature_dims
from mito.heads.mil import MILHead, load_mil_head, make_mil_head, mil_head_names
from mito.heads.predict import agreement, agreement_text
from mito.heads.split import make_split, recorded_split, save_split, side_of
from mito.heads.train import CONFIG_FILE, METRICS_FILE, check_model_out, default_features, is_model_dir
from mito.io import (
    atomic_dir, atomic_write, check_output_dir, check_output_file, csv_probabilities, is_mito_folder, unique_stems, write_json,
    write_manifest,
)
from mito.metrics import classification_metrics
from mito.progress import add_task, progress_bar
from mito.tasks import choose_positive, positive_line
from mito.validation import one_line

TOP_K = 8


class SlideFitConfig(BaseModel):
    """One `mito fit-head --level slide` run (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    store: str
    out: str | None = None
    task: str
    head: str = "abmil"
    features: list[str] = Field(default_factory=list)
    bag_column: str | None = None
    bag_label: str | None = None
    group_column: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    head_params: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, lt=2**32)
    overwrite: bool = False
    progress: bool = False
    positive: str | None = None  # two classes: the positive class (default: 'yes' with --bag-label any:VALUE, else the training bags' minority)


def bag_positive(bags: Bags, train: np.ndarray, bag_label: str | None, requested: str | None) -> tuple[str | None, str]:
    """The positive class of a two-class bag task: ``requested``; else with ``--bag-label any:VALUE`` the 'yes' bags
    (the class that option defines); else the minority class of the training bags (see mito.tasks.choose_positive)."""
    if requested is None and bag_label is not None and sorted(map(str, bags.classes)) == ["no", "yes"]:
        return "yes", f"--bag-label {bag_label}: the bags holding a {parse_bag_label(bag_label)!r} tile"
    return choose_positive(bags.labels[train], bags.classes, requested)


def make_slide_fit_config(**kw: Any) -> SlideFitConfig:
    """SlideFitConfig from keyword arguments, with validation problems as one-line HeadErrors."""
    try:
        return SlideFitConfig(**kw)
    except ValidationError as e:
        raise HeadError(one_line(e)) from None


def is_slide_model(path: str | os.PathLike) -> bool:
    """True for a model directory written by fit-head --level slide."""
    p = Path(path)
    if not is_model_dir(p):
        return False
    try:
        return read_json_file(p / CONFIG_FILE, "model config").get("level") == "slide"
    except HeadError:
        return False


def bag_split(bags: Bags, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Bag indices for train/val/test, stratified by label and grouped (patient, else the bag itself)."""
    table = bags.table()
    side = make_split(table, table["label"], np.ones(len(table), bool), None, "group", val_fraction, test_fraction, seed)
    return {name: np.flatnonzero(side == name) for name in ("train", "val", "test")}


def fit_slide_head(cfg: SlideFitConfig) -> dict[str, Any]:
    """Train a slide-level head from a store's bags as ``cfg`` says; write the model directory; return the metrics."""
    if cfg.head not in mil_head_names():
        raise HeadError(f"unknown slide-level head {cfg.head!r}; choose one of {', '.join(mil_head_names())}")
    if cfg.out is not None:
        check_model_out(cfg.out, cfg.store, cfg.overwrite)
    head = make_mil_head(cfg.head, **{"seed": cfg.seed, **cfg.head_params})
    t0 = time.perf_counter()
    with open_store(cfg.store, "r") as store:
        keys = list(cfg.features) or default_features(store)
        dims = feature_dims(store, keys)
        tiles = bag_table(store, cfg.task, cfg.bag_column, cfg.group_column)
        bags = make_bags(tiles, cfg.task, cfg.bag_column, cfg.bag_label, cfg.group_column, store.unreadable)
        parts = bag_split(bags, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        positive, positive_source = bag_positive(bags, parts["train"], cfg.bag_label, cfg.positive)
        reader = BagReader(store, keys)
        bar = progress_bar(unit="epochs", transient=True, info=True, enabled=cfg.progress)
        task_id = add_task(bar, f"training {head.name} on {len(parts['train'])} bags", head.epochs)

        def on_epoch(rec: dict[str, float], max_epochs: int) -> None:
            info = f"loss {rec['train_loss']:.4f}" + (f", val bal acc {rec['val_balanced_accuracy']:.3f}" if "val_balanced_accuracy" in rec else "")
            bar.update(task_id, completed=rec["epoch"], info=info)

        head.on_epoch = on_epoch
        with bar:
            head.fit(reader, bags, parts["train"], parts["val"])
        head.on_epoch = None
        t_train = time.perf_counter() - t0
        evals = {}
        for name in ("val", "test"):
            if len(parts[name]):
                proba, _, _ = head.predict_proba(reader, bags, parts[name])
                evals[name] = classification_metrics(bags.labels[parts[name]], proba, bags.classes, positive)
        variants = {k: {f: v for f, v in store.variant_info(k).items() if f != "added"} for k in keys}
        store_meta = {"path": str(cfg.store), "tile_list_sha256": store.meta.get("tile_list_sha256"), "n_tiles": store.n_tiles}
        dropped = left_out(bags, store.meta, cfg.bag_column)
    if not evals:
        raise HeadError("no validation or test bags to measure the head on")
    main = "test" if "test" in evals else "val"
    bag_column = cfg.bag_column or "slide"
    metrics = {
        **evals[main], **({"positive_source": positive_source} if positive is not None else {}), "evaluated_on": main, "level": "slide", "task": bags.task, "task_description": bags.description,
        "n_train": len(parts["train"]), "n_val": len(parts["val"]), "n_test": len(parts["test"]),
        "n_left_out": len(dropped), "left_out": dropped,
        "n_tiles_per_bag_median": float(np.median(bags.sizes)), "train_seconds": round(t_train, 3),
        "best_epoch": head.best_epoch_, "epochs_run": len(head.history_), "features": keys, "features_default": not cfg.features,
        "split": f"random by {cfg.group_column or bag_column!r}: test {cfg.test_fraction:g}, val {cfg.val_fraction:g}",
        **({"val": evals["val"]} if main == "test" and "val" in evals else {}),
    }
    config = {
        "mito_version": mito.__version__, "level": "slide",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": cfg.task, "bag_column": bag_column, "bag_label": cfg.bag_label, "group_column": cfg.group_column,
        "task_description": bags.description, "classes": list(bags.classes),
        **({"positive": positive, "positive_source": positive_source} if positive is not None else {}), "features": keys, "feature_dims": dims,
        "variants": variants, "n_features_in": reader.d, "head": {"name": head.name, "params": head.params()},
        "training": {"store": store_meta, "seed": cfg.seed, "split": metrics["split"]},
    }
    side = np.full(len(bags), "", dtype=object)
    for name, idx in parts.items():
        side[idx] = name
    if cfg.out is not None:
        def fill(tmp: Path) -> None:
            head.save(tmp)
            save_split(tmp, pd.DataFrame({bag_column: bags.names}), side)  # predict tells the bags fitted on from the others
            write_json(tmp / CONFIG_FILE, config)
            write_json(tmp / METRICS_FILE, metrics)

        atomic_dir(Path(cfg.out), fill, lambda p: cfg.overwrite and (is_model_dir(p) or (p.is_dir() and not any(p.iterdir()))))
        metrics["model_dir"] = str(cfg.out)
    return metrics


def tiles_csv_path(out_csv: str | os.PathLike) -> Path:
    """Where predict writes the per-tile weights beside ``slides.csv``: ``slides.tiles.csv``."""
    p = Path(out_csv)
    return p.with_name(p.stem + ".tiles.csv")


def predict_slides(model_dir: str | os.PathLike, store_path: str | os.PathLike, out_csv: str | os.PathLike | None = None,
                   pictures: str | os.PathLike | None = None, overwrite: bool = False, top_k: int = TOP_K) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per bag of the store (pred, p_<class>, label when the store has it) and one row per tile with its
    attention weight; written as ``out_csv`` and ``<stem>.tiles.csv``; with ``pictures``, one PNG per bag:
    attention over the slide thumbnail (slide stores), else its top-k tiles."""
    model_dir = Path(model_dir)
    cfg = read_json_file(model_dir / CONFIG_FILE, "model config")
    head = load_mil_head(model_dir)
    if out_csv is not None:
        inputs = store_input_files(store_path)
        check_output_file(out_csv, overwrite, protect=(store_path,), inputs=inputs)
        check_output_file(tiles_csv_path(out_csv), overwrite, protect=(store_path,), inputs=inputs)
    if pictures is not None:
        check_output_dir(pictures, overwrite, protect=(store_path, model_dir), what="picture folder", kind=PICTURES_KIND)
    with open_store(store_path, "r") as store:
        check_store_matches(store, cfg["variants"])
        tiles = store.tiles
        if pictures is not None:  # before anything is written
            check_pictures(tiles)
        bags = make_bags(tiles, None, cfg["bag_column"], None, None, store.unreadable)
        dropped = left_out(bags, store.meta, cfg["bag_column"])
        proba, rows, att = head.predict_proba(BagReader(store, cfg["features"]), bags)
    classes = [str(c) for c in head.classes_]
    slides = pd.DataFrame({cfg["bag_column"]: bags.names, "n_tiles": bags.sizes})
    known = _known_labels(tiles, cfg, bags)
    if known is not None:
        slides["label"] = known
    slides["split"] = side_of(slides[[cfg["bag_column"]]], recorded_split(model_dir))
    slides["pred"] = np.asarray(classes)[proba.argmax(1)]
    for j, c in enumerate(classes):
        slides[f"p_{c}"] = proba[:, j]
    slides.attrs["left_out"] = dropped  # bags with no readable tile (or slides with no tile): not predicted
    per_tile = []
    for name, r, a in zip(bags.names, rows, att):
        rank = np.empty(len(a), np.int64)
        rank[np.argsort(-a, kind="stable")] = np.arange(1, len(a) + 1)
        per_tile.append(pd.DataFrame({"bag": name, "row": r, "attention": a, "rank": rank}))
    tile_df = pd.concat(per_tile, ignore_index=True)
    extra = [c for c in ("tile_id", "path", "x", "y", "slide_x", "slide_y") if c in tiles]
    tile_df = pd.concat([tile_df.rename(columns={"bag": cfg["bag_column"]}), tiles.iloc[tile_df["row"].to_numpy()][extra].reset_index(drop=True)], axis=1)
    tile_df = tile_df.drop(columns="row")
    if out_csv is not None:
        atomic_write(out_csv, lambda p: csv_probabilities(slides).to_csv(p, index=False), ".csv")
        atomic_write(tiles_csv_path(out_csv), lambda p: tile_df.to_csv(p, index=False), ".csv")
    if pictures is not None:
        draw_pictures(slides, tile_df, tiles, bags, rows, att, cfg["bag_column"], Path(pictures), overwrite, top_k, head.name)
    return slides, tile_df


def _known_labels(tiles: pd.DataFrame, cfg: dict[str, Any], bags: Bags) -> np.ndarray | None:
    """Bag labels when the store has the task (bags whose label is not defined get '')."""
    try:
        labelled = make_bags(tiles, cfg["task"], cfg["bag_column"], cfg.get("bag_label"), None, None, min_per_class=1)
    except MitoError:  # the store lacks the task's column, or its bags are not labelled the model's way
        return None
    by_name = dict(zip(labelled.names, labelled.labels))
    return np.array([by_name.get(n, "") for n in bags.names], dtype=object)


PICTURES_KIND = "slide-pictures"  # the kind in the folder's mito.json (mito.io.write_manifest)


def is_picture_dir(path: Path) -> bool:
    """True for a folder predict wrote with --heatmaps for a slide-level model (its mito.json says so and lists everything in it)."""
    return is_mito_folder(path, PICTURES_KIND)


def check_pictures(tiles: pd.DataFrame) -> bool:
    """True when the pictures are drawn over slide thumbnails, False for top-k tile grids; a HeadError when neither can be."""
    on_slides = {"slide_path", "x0", "y0", "x1", "y1"} <= set(tiles.columns)
    if not on_slides and "path" not in tiles:
        raise HeadError("pictures need tile images: the tile table has neither slide boxes nor a path column")
    return on_slides


def draw_pictures(slides: pd.DataFrame, tile_df: pd.DataFrame, tiles: pd.DataFrame, bags: Bags, rows: list[np.ndarray],
                  att: list[np.ndarray], bag_column: str, out: Path, overwrite: bool, top_k: int, head_name: str) -> list[Path]:
    """One PNG per bag, written as one folder: attention heatmap over the thumbnail when the tiles came from slides
    (slide_path and x0..y1 columns), else a grid of the top-k tiles by attention read from their paths."""
    on_slides = check_pictures(tiles)
    written: list[str] = []
    pcols = [c for c in slides.columns if c.startswith("p_")]
    stems = unique_stems([str(n) for n in bags.names])  # bags 'a b.svs' and 'a_b.svs' get two pictures

    def fill(tmp: Path) -> None:
        for i, name in enumerate(bags.names):
            srow = slides.iloc[i]
            title = f"{name}: pred {srow['pred']} ({', '.join(f'{c[2:]} {srow[c]:.2f}' for c in pcols)})" + (
                f", label {srow['label']}" if "label" in slides and srow["label"] else "")
            t = tiles.iloc[rows[i]]
            if on_slides:
                f = tmp / f"{stems[str(name)]}.attention.png"
                _attention_heatmap(str(t["slide_path"].iat[0]), t, att[i], title, f, head_name)
            else:
                f = tmp / f"{stems[str(name)]}.topk.png"
                _top_tiles(t["path"].astype(str).tolist(), att[i], title, f, top_k, head_name)
            written.append(f.name)
        write_manifest(tmp, PICTURES_KIND, bags=dict(zip(written, map(str, bags.names))))

    atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_picture_dir(p)))
    return [out / n for n in written]


def _attention_heatmap(slide_path: str, t: pd.DataFrame, a: np.ndarray, title: str, out: Path, head_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mito.extract.slide_qc import slide_thumbnail

    thumb, ds = slide_thumbnail(slide_path, "auto", max_side=800)
    h, w = thumb.shape[:2]
    rel = a / max(float(a.max()), 1e-12)  # 1 = the bag's most attended tile
    heat = np.full((h, w), np.nan)
    for (x0, y0, x1, y1), v in zip(t[["x0", "y0", "x1", "y1"]].to_numpy() / ds, rel):
        heat[max(0, round(y0)) : round(y1), max(0, round(x0)) : round(x1)] = v
    fig, ax = plt.subplots(figsize=(max(4.0, w / 110) + 1.0, max(3.0, h / 110) + 0.6), dpi=100)
    ax.imshow(thumb)
    im = ax.imshow(np.ma.masked_invalid(heat), cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label=f"{head_name} attention / bag max ({len(t)} tiles)")
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, format="png"), ".png")
    plt.close(fig)


def _top_tiles(paths: list[str], a: np.ndarray, title: str, out: Path, top_k: int, head_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    order = np.argsort(-a, kind="stable")[:top_k]
    cols = min(4, len(order))
    nrows = int(np.ceil(len(order) / cols))
    # at least two tile widths, so the title line (bag, prediction, label) fits above a bag of one tile
    fig, axes = plt.subplots(nrows, cols, figsize=(max(2.2 * cols, 4.4), 2.4 * nrows + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, j in zip(axes.flat, order):
        try:
            with Image.open(paths[j]) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
        except OSError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(f"#{list(order).index(j) + 1} {head_name} w={a[j]:.3f}\n{Path(paths[j]).name}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, format="png"), ".png")
    plt.close(fig)


def describe_head(head: MILHead) -> str:
    """A one-line summary of a slide-level head's main options."""
    return f"{head.name} (max_tiles {head.max_tiles}, tile_dropout {head.tile_dropout}, loss {head.loss}, noise {head.noise})"


def refuse_ignored(ignored: dict[str, Any], level: str = "--level slide") -> None:
    """One-line HeadError naming the first option given that ``level`` does not use."""
    given = [k for k, v in ignored.items() if v is not None]
    if given:
        raise HeadError(f"{given[0]} does not apply to {level}")


def fit_slide_head_cli(console: Any, *, store: str, out: Path, task: str | None, head: str, features: list[str],
                       bag_column: str | None, bag_label: str | None, group_column: str | None, val_fraction: float,
                       test_fraction: float, seed: int, overwrite: bool, as_json: bool, ignored: dict[str, Any],
                       head_params: dict[str, Any], positive: str | None = None) -> dict[str, Any]:
    """`mito fit-head --level slide`: check options, train, print the metrics (``group`` = the CLI default: by bag)."""
    import json as _json

    refuse_ignored(ignored)
    if task is None:
        raise HeadError("--level slide needs --task (the tile-table column giving the bag label, or with --bag-label any:VALUE the tile label)")
    if head == "mlp":  # the tile-level default
        head = "abmil"
    cfg = make_slide_fit_config(
        store=store, out=str(out), task=task, head=head, features=features, bag_column=bag_column, bag_label=bag_label,
        group_column=None if group_column in ("group", "none") else group_column, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, overwrite=overwrite, progress=not as_json, head_params=head_params, positive=positive,
    )
    m = fit_slide_head(cfg)
    if as_json:
        print(_json.dumps(m, indent=2, default=str))
        return m
    console.print(f"task: {m['task']} ({m['task_description']}); classes {', '.join(m['classes'])}", highlight=False, markup=False)
    console.print(f"bags: train {m['n_train']}, val {m['n_val']}, test {m['n_test']} (median {m['n_tiles_per_bag_median']:g} tiles); split {m['split']}", highlight=False, markup=False)
    if m["left_out"]:
        console.print(left_out_line(m["left_out"]), style="yellow", highlight=False, markup=False)
    console.print(
        f"{m['evaluated_on']}: balanced acc {m['balanced_accuracy']:.3f}, AUROC {m['auroc']:.3f}, kappa {m['kappa']:.3f}, "
        f"weighted F1 {m['weighted_f1']:.3f}; {m['epochs_run']} epochs (best {m['best_epoch']}), {m['train_seconds']:.1f} s",
        highlight=False, markup=False,
    )
    console.print(f"confusion matrix (rows = true {', '.join(m['classes'])}): {m['confusion_matrix']}", highlight=False, markup=False)
    if m.get("positive"):
        console.print(positive_line(m["positive"], m.get("positive_source", "")) + f"; PR-AUC {m['pr_auc']:.3f}", highlight=False, markup=False)
    console.print(f"model: {out}", highlight=False, markup=False)
    return m


def predict_slides_cli(console: Any, model: Path, store: str | None, source: str | None, out: Path,
                       pictures: Path | None, overwrite: bool) -> None:
    """`mito predict` with a slide-level model: slides.csv, slides.tiles.csv, optional pictures; prints a summary."""
    if store is None or source is not None:
        raise HeadError(f"{model} is a slide-level model: predict the bags of a store with --store (new tiles: mito extract them first)")
    slides, tile_df = predict_slides(model, store, out, pictures, overwrite)
    counts = ", ".join(f"{k} {v}" for k, v in slides["pred"].value_counts().items())
    console.print(f"{len(slides)} bags predicted ({counts}) -> {out}; tile weights -> {tiles_csv_path(out)}", highlight=False, markup=False)
    said = agreement_text(agreement(slides), unit="bags")
    if said:
        console.print(said, highlight=False, markup=False)
    if slides.attrs.get("left_out"):
        console.print(left_out_line(slides.attrs["left_out"], "not predicted"), style="yellow", highlight=False, markup=False)
    if pictures is not None:
        console.print(f"wrote {len(slides)} pictures to {pictures}", highlight=False, markup=False)
