"""Per-slide heatmaps of predicted probabilities over the slide thumbnail (PNG with a colour bar and the slide name)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mito.heads.base import HeadError


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mito.extract.slide_qc import slide_thumbnail
    from mito.io import atomic_write

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


KIND = "heatmaps"  # the kind in the folder's mito.json (mito.io.write_manifest)


def is_heatmap_dir(path: Path) -> bool:
    """True for a folder write_heatmaps wrote (its mito.json says so and lists everything in it)."""
    from mito.io import is_mito_folder

    return is_mito_folder(path, KIND)


def check_heatmap_dir(out_dir: str | os.PathLike, overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse a heatmap folder inside a store or model, on an input, or already written (without ``overwrite``)."""
    from mito.io import check_output_dir

    return check_output_dir(out_dir, overwrite, protect=protect, what="heatmap folder", kind=KIND)


SLIDE_COLUMNS = ("slide", "x", "y", "slide_path", "x0", "y0", "x1", "y1")  # what a store tiled from whole slides holds
NOT_SLIDES = "--heatmaps needs a store extracted from whole slides (mito extract --mpp ...)"


def check_heatmap_store(store: str | os.PathLike) -> None:
    """Refuse, before anything is predicted or written, a store whose tiles were not tiled from whole slides."""
    from mito.cache import open_store

    with open_store(store, "r") as s:
        cols = s.tile_column_names
        named_by_path = "path" in cols and s.tile_table(["path"])["path"].notna().any()  # predictions would name tiles by path
    if not set(SLIDE_COLUMNS) <= set(cols) or named_by_path:
        raise HeadError(NOT_SLIDES)


def write_heatmaps(preds: pd.DataFrame, tiles: pd.DataFrame, out_dir: str | os.PathLike, reader: str = "auto",
                   overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = ()) -> list[Path]:
    """Heatmaps for every slide in ``preds`` (rows named slide,x,y) using a slide store's tile table (boxes, paths);
    the folder is written whole (atomically, with mito.json) and replaces an earlier one only with ``overwrite``.
    Slides whose names collide get distinct files (mito.extract.slides.slide_file_stems)."""
    from mito.extract.slides import slide_file_stems
    from mito.io import atomic_dir, write_manifest

    out = check_heatmap_dir(out_dir, overwrite, protect)

    need = {"slide", "x", "y"}
    if not need <= set(preds.columns) or not {"slide_path", "x0", "y0", "x1", "y1"} <= set(tiles.columns):
        raise HeadError(NOT_SLIDES)
    cols = prob_columns(preds)
    merged = preds.merge(tiles[["slide", "x", "y", "slide_path", "x0", "y0", "x1", "y1"]].drop_duplicates(["slide", "x", "y"]),
                         on=["slide", "x", "y"], how="inner")
    stems = slide_file_stems(sorted(set(tiles["slide"].astype(str))))  # the store's slides: names as slides qc gives them
    drawn: dict[str, str] = {}  # file -> slide

    def fill(tmp: Path) -> None:
        for name, g in merged.groupby("slide", sort=True):
            f = draw_heatmap(name, str(g["slide_path"].iat[0]), g, cols, tmp / f"{stems[str(name)]}.heatmap.png", reader)
            drawn[f.name] = str(name)
        write_manifest(tmp, KIND, slides=drawn)

    atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_heatmap_dir(p)))
    return [out / n for n in drawn]
