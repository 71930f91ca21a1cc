"""Export a slide store to the per-slide HDF5 files TRIDENT / CLAM-style MIL tools read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mito.cache.store import StoreError, open_store

FORMATS = ("trident",)


def export_trident(store_path: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False) -> list[Path]:
    """One <slide stem>.h5 per slide: ``features`` (N x D float32) and ``coords`` (N x 2 int64, level-0 top-left).

    Attributes follow TRIDENT: coords carry patch_size, patch_size_level0, target and level-0 mpp and the
    slide name; features carry the encoder and mito's variant key. Unreadable tiles are left out.
    """
    import h5py

    from mito.extract.slides import stem as slide_stem
    from mito.io import atomic_dir, check_output_dir, safe_name

    out = check_output_dir(out_dir, overwrite, is_ours=is_export_dir, protect=(store_path,), what="export folder")
    with open_store(store_path, "r") as s:
        slides: dict[str, Any] = s.meta.get("slides") or {}
        if not slides:
            raise StoreError(f"{store_path} was not made from whole slides: nothing to export per slide")
        key = feature or next((k for k in s.variants if s.is_complete(k)), None)
        if key is None:
            raise StoreError(f"{store_path} has no complete feature array to export")
        if key not in s.variants:
            raise StoreError(f"feature {key!r} is not in {store_path} (it has: {', '.join(s.variants) or 'none'})")
        if not s.is_complete(key):
            raise StoreError(f"{key} is not complete in {store_path}: finish the extraction first")
        tiles = s.tiles
        ok = ~s.unreadable
        opts = slides.get("options", {})
        names: list[str] = []

        def fill(tmp: Path) -> None:
            for rec in slides.get("slides", []):
                names.append(_write_slide(h5py, s, key, tiles, ok, opts, rec, store_path, tmp / f"{safe_name(slide_stem(rec['slide']))}.h5"))

        atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_export_dir(p)))
    return [out / n for n in names]


def is_export_dir(path: Path) -> bool:
    """True for a folder holding only <slide>.h5 files (what export writes)."""
    return path.is_dir() and all(f.is_file() and f.suffix == ".h5" for f in path.iterdir())


def _write_slide(h5py: Any, s: Any, key: str, tiles: Any, ok: np.ndarray, opts: dict[str, Any], rec: dict[str, Any],
                 store_path: str, path: Path) -> str:
    from mito.extract.slides import stem as slide_stem

    rows = np.flatnonzero((tiles["slide"] == rec["slide"]).to_numpy() & ok)
    feats = s.read([key], rows)
    coords = np.stack([np.floor(tiles["x0"].to_numpy()[rows]), np.floor(tiles["y0"].to_numpy()[rows])], axis=1).astype(np.int64)
    with h5py.File(path, "w") as f:
        fd = f.create_dataset("features", data=feats.astype(np.float32))
        fd.attrs.update(encoder=key.split(":")[0], variant=key, store=str(store_path))
        cd = f.create_dataset("coords", data=coords)
        cd.attrs.update(
            patch_size=int(opts.get("tile_px", 0)),
            patch_size_level0=round(rec["tile_side_level0"]),
            target_mpp=float(opts.get("mpp", np.nan)),
            level0_mpp=float(rec["mpp"]),
            overlap=int(opts.get("tile_px", 0)) - int(opts.get("stride_px") or opts.get("tile_px", 0)),
            name=slide_stem(rec["slide"]),
            slide_path=rec["path"],
        )
    return path.name


def export(store_path: str, fmt: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False) -> list[Path]:
    """Export ``store_path`` in format ``fmt`` (trident) to ``out_dir``."""
    if fmt not in FORMATS:
        raise StoreError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return export_trident(store_path, out_dir, feature, overwrite)
