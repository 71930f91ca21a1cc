"""Export a slide store to the per-slide HDF5 files TRIDENT / CLAM-style MIL tools read."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mito.core.io import atomic_dir, check_output_dir, is_mito_folder, write_manifest
from mito.store.store import StoreError, is_view, open_store, parse_variant
from mito.wsi.reader import slide_file_stems

FORMATS = ("trident",)
KIND = "export"  # the kind in the folder's mito.json (mito.core.io.write_manifest)


def export_trident(store_path: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False) -> list[Path]:
    """One <slide stem>.h5 per slide: ``features`` (N x D float32) and ``coords`` (N x 2 int64, level-0 top-left of
    the field the features saw), plus mito.json.

    Attributes follow TRIDENT: coords carry patch_size, patch_size_level0, target and level-0 mpp and the slide
    name, all of the exported variant's own field (a context variant z0.25 saw 4x the tile's side at 1/4 the
    resolution); features carry the encoder and mito's variant key. Unreadable tiles are left out. Slides whose
    names collide (x.svs and x.ome.tif) get distinct files (mito.wsi.reader.slide_file_stems)."""
    import h5py


    out = check_output_dir(out_dir, overwrite, protect=(store_path,), what="export folder", kind=KIND)
    with open_store(store_path, "r") as s:
        slides: dict[str, Any] = s.meta.get("slides") or {}
        if not slides:
            raise StoreError(f"{store_path} was not made from whole slides: nothing to export per slide")
        key = feature or next((k for k in s.variants if not is_view(k) and s.is_complete(k)), None)
        if key is None:
            raise StoreError(f"{store_path} has no complete feature array to export")
        if key not in s.variants:
            raise StoreError(f"feature {key!r} is not in {store_path} (it has: {', '.join(s.variants) or 'none'})")
        if not s.is_complete(key):
            raise StoreError(f"{key} is not complete in {store_path}: finish the extraction first")
        zoom = parse_variant(key).zoom
        tiles = s.tiles
        ok = ~s.unreadable
        opts = slides.get("options", {})
        records = slides.get("slides", [])
        stems = slide_file_stems([r["slide"] for r in records], keep_extension=False)
        names: list[str] = []

        def fill(tmp: Path) -> None:
            for rec in records:
                names.append(_write_slide(h5py, s, key, zoom, tiles, ok, opts, rec, store_path, tmp / f"{stems[rec['slide']]}.h5"))
            if len(set(names)) != len(records):  # never: slide_file_stems keeps names apart; a count must equal the files
                raise StoreError(f"two slides of {store_path} would share an export file")
            write_manifest(tmp, KIND, format="trident", store=str(store_path), feature=key,
                           slides={stems[r["slide"]] + ".h5": r["slide"] for r in records})

        atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_mito_folder(p, KIND)))
    return [out / n for n in names]


def variant_geometry(opts: dict[str, Any], rec: dict[str, Any], zoom: float) -> dict[str, Any]:
    """The field a variant at ``zoom`` saw around each tile of one slide, as TRIDENT records it: the output pixels
    it was read at (patch_size; a field holding fewer level-0 pixels than the tile is read at its own size, as
    mito.extract.slide_tiles.read_views does), its side in level-0 pixels, and its um/px (NaN when the slide's
    level-0 um/px is unknown)."""
    tile_px = int(opts.get("tile_px") or 0)
    field0 = float(rec["tile_side_level0"]) / zoom
    patch = max(1, min(tile_px, round(field0))) if tile_px else round(field0)
    level0 = rec.get("mpp")
    level0 = float(level0) if level0 is not None and math.isfinite(float(level0)) else math.nan
    stride0 = float(opts.get("stride_px") or tile_px) * float(rec["tile_side_level0"]) / max(tile_px, 1)
    return {"patch_size": int(patch), "patch_size_level0": round(field0), "target_mpp": level0 * field0 / patch,
            "level0_mpp": level0, "overlap": round(patch - stride0 * patch / field0), "zoom": float(zoom)}


def _write_slide(h5py: Any, s: Any, key: str, zoom: float, tiles: Any, ok: np.ndarray, opts: dict[str, Any], rec: dict[str, Any],
                 store_path: str, path: Path) -> str:
    rows = np.flatnonzero((tiles["slide"] == rec["slide"]).to_numpy() & ok)
    feats = s.read([key], rows)
    x0, y0 = tiles["x0"].to_numpy()[rows], tiles["y0"].to_numpy()[rows]
    if zoom != 1.0:  # the variant's field: 1/zoom of the tile's side around the tile's centre
        half = (tiles["x1"].to_numpy()[rows] - x0) / zoom / 2
        x0 = (x0 + tiles["x1"].to_numpy()[rows]) / 2 - half
        y0 = (y0 + tiles["y1"].to_numpy()[rows]) / 2 - half
    coords = np.stack([np.floor(x0), np.floor(y0)], axis=1).astype(np.int64).reshape(-1, 2)
    with h5py.File(path, "w") as f:
        fd = f.create_dataset("features", data=feats.astype(np.float32))
        fd.attrs.update(encoder=key.split(":")[0], variant=key, store=str(store_path))
        cd = f.create_dataset("coords", data=coords)
        cd.attrs.update(**variant_geometry(opts, rec, zoom), name=path.stem, slide=rec["slide"], slide_path=rec["path"])
    return path.name


def export(store_path: str, fmt: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False) -> list[Path]:
    """Export ``store_path`` in format ``fmt`` (trident) to ``out_dir``."""
    if fmt not in FORMATS:
        raise StoreError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return export_trident(store_path, out_dir, feature, overwrite)
