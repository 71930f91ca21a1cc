"""QC pictures of a slide store: each slide's thumbnail with its tissue mask outlined and the kept tiles drawn."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.extract.errors import ExtractError
from mito.extract.slides import (
    READERS,
    SlideReadError,
    close_slide,
    open_slide,
    slide_file_stems,
    thumbnail,
)


def slide_thumbnail(path: str, reader: str = "auto", max_side: int = 1024) -> tuple[np.ndarray, float]:
    """(RGB thumbnail at most ``max_side`` px, level-0 pixels per thumbnail pixel)."""
    slide = open_slide(path, reader)
    try:
        ds = max(1.0, max(slide.dimensions) / max_side)
        return thumbnail(slide, ds), ds
    finally:
        close_slide(slide)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from mito.io import atomic_write

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


KIND = "slides-qc"  # the kind in the folder's mito.json (mito.io.write_manifest)


def is_qc_dir(path: Path) -> bool:
    """True for a folder mito slides qc wrote (its mito.json says so and lists everything in it)."""
    from mito.io import is_mito_folder

    return is_mito_folder(path, KIND)


def qc_store(store_path: str, out_dir: str | os.PathLike, reader: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """Write <slide>.png per slide of a slide store (plus skipped.csv and mito.json) as one new folder; returns what
    was written and skipped. Slides whose names collide get distinct pictures (slide_file_stems)."""
    from mito.cache import open_store
    from mito.io import atomic_dir, atomic_write_text, check_output_dir, write_manifest

    if reader not in READERS:
        raise ExtractError(f"--reader must be one of {', '.join(READERS)}, got {reader!r}")
    out = check_output_dir(out_dir, overwrite, protect=(store_path,), what="QC folder", kind=KIND)
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
        write_manifest(tmp, KIND, store=str(store_path), slides=drawn)

    atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_qc_dir(p)))
    return {"written": [str(out / n) for n in drawn], "skipped": rec.get("skipped", []) + failed}
