"""Pictures of slide stores and slide predictions (PNG): QC (thumbnail, tissue outline, kept tiles), per-slide heatmaps
of predicted probabilities, and a slide-level model's attention per bag. Each kind is written as one folder with a
mito.json manifest, replaced only by the same kind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from mito.core.io import (
    atomic_dir,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    is_mito_folder,
    unique_stems,
    write_manifest,
)
from mito.extract.errors import ExtractError
from mito.heads.base import HeadError
from mito.report.mpl import pyplot
from mito.store import open_store
from mito.wsi.reader import READERS, SlideReadError, slide_file_stems, slide_thumbnail

TOP_K = 8  # tiles a top-k picture shows (bags of tiles without slide boxes)


# ---------------------------------------------------------------- slides qc
def slide_records(store: Any) -> dict[str, Any]:
    """The ``slides`` record mito extract wrote into a slide store (refused for other stores)."""
    rec = store.meta.get("slides")
    if not rec:
        raise ExtractError(f"{store.path} was not made from whole slides (no --mpp/--tile-um extraction)")
    return rec


def _mask_rings(rec: dict[str, Any]) -> list[np.ndarray]:
    p = rec.get("mask_geojson")
    if not p or not os.path.isfile(p):
        return []
    try:
        doc = json.loads(Path(p).read_text(encoding="utf-8"))
        rings = []
        for f in doc.get("features", []):
            for poly in f["geometry"]["coordinates"]:
                rings += [np.asarray(r, np.float64).reshape(-1, 2) for r in poly]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise ExtractError(f"damaged tissue mask {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return rings


def draw_qc(rec: dict[str, Any], tiles: pd.DataFrame, reader: str, out: Path) -> Path:
    """One PNG: thumbnail, tissue outline (cyan), kept tiles (yellow boxes), title with the counts."""
    from matplotlib.collections import PolyCollection

    plt = pyplot()
    thumb, ds = slide_thumbnail(rec["path"], reader)
    h, w = thumb.shape[:2]
    fig, ax = plt.subplots(figsize=(max(4.0, w / 100), max(3.0, h / 100) + 0.5), dpi=100)
    ax.imshow(thumb)
    for ring in _mask_rings(rec):
        ax.plot(ring[:, 0] / ds, ring[:, 1] / ds, color="cyan", linewidth=1.0)
    b = tiles[["x0", "y0", "x1", "y1"]].to_numpy() / ds
    boxes = [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)] for x0, y0, x1, y1 in b]
    ax.add_collection(PolyCollection(boxes, facecolors="none", edgecolors="yellow", linewidths=0.6))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    tissue = rec.get("tissue_fraction")
    ax.set_title(
        f"{rec['slide']}: {len(tiles)} tiles, level-0 {rec['mpp']:g} um/px"
        + (f", tissue {100 * tissue:.0f}% of the slide" if tissue is not None else ""),
        fontsize=9,
    )
    fig.tight_layout()
    path = atomic_write(out, lambda p: fig.savefig(p, format="png"), ".png")
    plt.close(fig)
    return path


QC_KIND = "slides-qc"  # the kind in the folder's mito.json (mito.core.io.write_manifest)


def qc_store(store_path: str, out_dir: str | os.PathLike, reader: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """Write <slide>.png per slide of a slide store (plus skipped.csv and mito.json) as one new folder; returns what
    was written and skipped. Slides whose names collide get distinct pictures (slide_file_stems)."""
    if reader not in READERS:
        raise ExtractError(f"--reader must be one of {', '.join(READERS)}, got {reader!r}")
    out = check_output_dir(out_dir, overwrite, protect=(store_path,), what="QC folder", kind=QC_KIND)
    with open_store(store_path, "r") as s:
        rec = slide_records(s)
        tiles = s.tiles
    stems = slide_file_stems([r["slide"] for r in rec["slides"]])
    drawn: dict[str, str] = {}  # picture -> slide
    failed: list[dict[str, Any]] = []

    def fill(tmp: Path) -> None:
        for r in rec["slides"]:
            try:
                drawn[draw_qc(r, tiles[tiles["slide"] == r["slide"]], reader, tmp / f"{stems[r['slide']]}.png").name] = r["slide"]
            except SlideReadError as e:
                failed.append({"slide": r["slide"], "path": r["path"], "reason": str(e)})
        if rec.get("skipped", []) + failed:
            atomic_write_text(tmp / "skipped.csv", pd.DataFrame(rec.get("skipped", []) + failed).to_csv(index=False))
        write_manifest(tmp, QC_KIND, store=str(store_path), slides=drawn)

    atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_mito_folder(p, QC_KIND)))
    return {"written": [str(out / n) for n in drawn], "skipped": rec.get("skipped", []) + failed}


# ---------------------------------------------------------------- heatmaps of predicted probabilities
def prob_columns(preds: pd.DataFrame) -> list[str]:
    """The p_<class> columns to draw: the positive class of a binary model (recorded in its config, which predict puts
    in ``preds.attrs['positive']``; a model made before it was recorded: the second class), else every class."""
    cols = [c for c in preds.columns if c.startswith("p_")]
    if not cols:
        raise HeadError("the predictions have no p_<class> columns to draw")
    positive = preds.attrs.get("positive")
    if len(cols) == 2 and f"p_{positive}" in cols:
        return [f"p_{positive}"]
    return cols[1:] if len(cols) == 2 else cols


def draw_heatmap(slide_name: str, slide_path: str, tiles: pd.DataFrame, cols: list[str], out: Path, reader: str = "auto") -> Path:
    """One PNG: the thumbnail with each tile's probability painted over it (one panel per class), colour bar, title."""
    plt = pyplot()
    thumb, ds = slide_thumbnail(slide_path, reader, max_side=800)
    h, w = thumb.shape[:2]
    fig, axes = plt.subplots(1, len(cols), figsize=(len(cols) * max(4.0, w / 110) + 1.0, max(3.0, h / 110) + 0.6), dpi=100, squeeze=False)
    b = tiles[["x0", "y0", "x1", "y1"]].to_numpy() / ds
    for ax, col in zip(axes[0], cols):
        heat = np.full((h, w), np.nan)
        p = tiles[col].to_numpy()
        for (x0, y0, x1, y1), v in zip(b, p):  # painted in table order; with a stride < tile, later tiles win
            heat[max(0, round(y0)) : round(y1), max(0, round(x0)) : round(x1)] = v
        ax.imshow(thumb)
        im = ax.imshow(np.ma.masked_invalid(heat), cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{slide_name}: P({col[2:]}), {len(tiles)} tiles", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label=f"P({col[2:]})")
    fig.tight_layout()
    path = atomic_write(out, lambda t: fig.savefig(t, format="png"), ".png")
    plt.close(fig)
    return path


HEATMAP_KIND = "heatmaps"  # the kind in the folder's mito.json (mito.core.io.write_manifest)


def check_heatmap_dir(out_dir: str | os.PathLike, overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse a heatmap folder inside a store or model, on an input, or already written (without ``overwrite``)."""
    return check_output_dir(out_dir, overwrite, protect=protect, what="heatmap folder", kind=HEATMAP_KIND)


SLIDE_COLUMNS = ("slide", "x", "y", "slide_path", "x0", "y0", "x1", "y1")  # what a store tiled from whole slides holds
NOT_SLIDES = "--heatmaps needs a store extracted from whole slides (mito extract --mpp ...)"


def check_heatmap_store(store: str | os.PathLike) -> None:
    """Refuse, before anything is predicted or written, a store whose tiles were not tiled from whole slides."""
    with open_store(store, "r") as s:
        cols = s.tile_column_names
        named_by_path = "path" in cols and s.tile_table(["path"])["path"].notna().any()  # predictions would name tiles by path
    if not set(SLIDE_COLUMNS) <= set(cols) or named_by_path:
        raise HeadError(NOT_SLIDES)


def write_heatmaps(
    preds: pd.DataFrame,
    tiles: pd.DataFrame,
    out_dir: str | os.PathLike,
    reader: str = "auto",
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
) -> list[Path]:
    """Heatmaps for every slide in ``preds`` (rows named slide,x,y) using a slide store's tile table (boxes, paths);
    the folder is written whole (atomically, with mito.json) and replaces an earlier one only with ``overwrite``.
    Slides whose names collide get distinct files (mito.wsi.reader.slide_file_stems)."""
    out = check_heatmap_dir(out_dir, overwrite, protect)

    need = {"slide", "x", "y"}
    if not need <= set(preds.columns) or not {"slide_path", "x0", "y0", "x1", "y1"} <= set(tiles.columns):
        raise HeadError(NOT_SLIDES)
    cols = prob_columns(preds)
    merged = preds.merge(
        tiles[["slide", "x", "y", "slide_path", "x0", "y0", "x1", "y1"]].drop_duplicates(["slide", "x", "y"]),
        on=["slide", "x", "y"],
        how="inner",
    )
    stems = slide_file_stems(sorted(set(tiles["slide"].astype(str))))  # the store's slides: names as slides qc gives them
    drawn: dict[str, str] = {}  # file -> slide

    def fill(tmp: Path) -> None:
        for name, g in merged.groupby("slide", sort=True):
            f = draw_heatmap(name, str(g["slide_path"].iat[0]), g, cols, tmp / f"{stems[str(name)]}.heatmap.png", reader)
            drawn[f.name] = str(name)
        write_manifest(tmp, HEATMAP_KIND, slides=drawn)

    atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_mito_folder(p, HEATMAP_KIND)))
    return [out / n for n in drawn]


# ---------------------------------------------------------------- attention of a slide-level model
PICTURES_KIND = "slide-pictures"  # the kind in the folder's mito.json (mito.core.io.write_manifest)


def check_pictures(tiles: pd.DataFrame) -> bool:
    """True when the pictures are drawn over slide thumbnails, False for top-k tile grids; a HeadError when neither can be."""
    on_slides = {"slide_path", "x0", "y0", "x1", "y1"} <= set(tiles.columns)
    if not on_slides and "path" not in tiles:
        raise HeadError("pictures need tile images: the tile table has neither slide boxes nor a path column")
    return on_slides


def draw_pictures(
    slides: pd.DataFrame, tile_df: pd.DataFrame, tiles: pd.DataFrame, out: str | os.PathLike, overwrite: bool = False, top_k: int = TOP_K
) -> list[Path]:
    """One PNG per bag of a slide-level prediction (``slides``, ``tile_df`` as mito.heads.predict_slides returns them,
    ``tiles`` the store's tile table), written as one folder: attention heatmap over the thumbnail when the tiles came
    from slides (slide_path and x0..y1 columns), else a grid of the top-k tiles by attention read from their paths."""
    on_slides = check_pictures(tiles)
    bag_column, head_name = slides.attrs.get("bag_column", "slide"), str(slides.attrs.get("head", ""))
    written: list[str] = []
    pcols = [c for c in slides.columns if c.startswith("p_")]
    names = slides[bag_column].tolist()
    stems = unique_stems([str(n) for n in names])  # bags 'a b.svs' and 'a_b.svs' get two pictures
    row_of = pd.Index(tiles["tile_id"].astype(str)).get_indexer(tile_df["tile_id"].astype(str))

    def fill(tmp: Path) -> None:
        for i, name in enumerate(names):
            srow = slides.iloc[i]
            title = f"{name}: pred {srow['pred']} ({', '.join(f'{c[2:]} {srow[c]:.2f}' for c in pcols)})" + (
                f", label {srow['label']}" if "label" in slides and srow["label"] else ""
            )
            mine = (tile_df[bag_column] == name).to_numpy()
            t, att = tiles.iloc[row_of[mine]], tile_df["attention"].to_numpy()[mine]
            if on_slides:
                f = tmp / f"{stems[str(name)]}.attention.png"
                _attention_heatmap(str(t["slide_path"].iat[0]), t, att, title, f, head_name)
            else:
                f = tmp / f"{stems[str(name)]}.topk.png"
                _top_tiles(t["path"].astype(str).tolist(), att, title, f, top_k, head_name)
            written.append(f.name)
        write_manifest(tmp, PICTURES_KIND, bags=dict(zip(written, map(str, names))))

    atomic_dir(Path(out), fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_mito_folder(p, PICTURES_KIND)))
    return [Path(out) / n for n in written]


def check_picture_dir(out_dir: str | os.PathLike, overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse a picture folder inside a store or model, on an input, or already written (without ``overwrite``)."""
    return check_output_dir(out_dir, overwrite, protect=protect, what="picture folder", kind=PICTURES_KIND)


ATTENTION_RANGE = 8.0  # the colour scale of attention x n tiles: 1/8 .. 8 times uniform (log), the same for every bag


def relative_attention(a: np.ndarray) -> np.ndarray:
    """A bag's attention weights as multiples of uniform attention (weight x number of tiles, the weights summing to 1):
    1 everywhere for a head that attends to every tile alike, whatever the bag's size."""
    a = np.asarray(a, dtype=float)
    total = float(a.sum())
    return a * len(a) / total if total > 0 else np.ones_like(a)


def _attention_heatmap(slide_path: str, t: pd.DataFrame, a: np.ndarray, title: str, out: Path, head_name: str) -> None:
    from matplotlib.colors import LogNorm

    plt = pyplot()
    thumb, ds = slide_thumbnail(slide_path, "auto", max_side=800)
    h, w = thumb.shape[:2]
    # not scaled to the bag's maximum: that paints a near-uniform bag all in the top colour; x n tiles on a fixed log
    # range shows uniform attention as uniform (the middle colour), above-uniform red, below-uniform blue
    lo, hi = 1 / ATTENTION_RANGE, ATTENTION_RANGE
    rel = np.clip(relative_attention(a), lo, hi)
    heat = np.full((h, w), np.nan)
    for (x0, y0, x1, y1), v in zip(t[["x0", "y0", "x1", "y1"]].to_numpy() / ds, rel):
        heat[max(0, round(y0)) : round(y1), max(0, round(x0)) : round(x1)] = v
    fig, ax = plt.subplots(figsize=(max(4.0, w / 110) + 1.0, max(3.0, h / 110) + 0.6), dpi=100)
    ax.imshow(thumb)
    im = ax.imshow(np.ma.masked_invalid(heat), cmap="coolwarm", norm=LogNorm(lo, hi), alpha=0.6, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    ticks = [2.0**k for k in range(-int(np.log2(hi)), int(np.log2(hi)) + 1)]
    bar = fig.colorbar(
        im, ax=ax, fraction=0.035, pad=0.02, extend="both", ticks=ticks, label=f"{head_name} attention x {len(t)} tiles (1 = uniform)"
    )
    bar.ax.set_yticklabels([f"{v:g}" if v >= 1 else f"1/{1 / v:g}" for v in ticks])
    bar.ax.minorticks_off()
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, format="png"), ".png")
    plt.close(fig)


def _top_tiles(paths: list[str], a: np.ndarray, title: str, out: Path, top_k: int, head_name: str) -> None:
    plt = pyplot()
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
