"""Export a slide store to the per-slide HDF5 files TRIDENT / CLAM-style MIL tools read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mito.cache.store import StoreError, open_store

FORMATS = ("trident",)


def export_trident(store_path: str, out_dir: str | os.PathLike, feature: str | None = None) -> list[Path]:
    """One <slide stem>.h5 per slide: ``features`` (N x D float32) and ``coords`` (N x 2 int64, level-0 top-left).

    Attributes follow TRIDENT: coords carry patch_size, patch_size_level0, target and level-0 mpp and the
    slide name; features carry the encoder and mito's variant key. Unreadable tiles are left out.
    """
    import h5py

    from mito.io import atomic_write, safe_name

    out = Path(out_dir)
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
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for rec in slides.get("slides", []):
            rows = np.flatnonzero((tiles["slide"] == rec["slide"]).to_numpy() & ok)
            feats = s.read([key], rows)
            coords = np.stack([np.floor(tiles["x0"].to_numpy()[rows]), np.floor(tiles["y0"].to_numpy()[rows])], axis=1).astype(np.int64)
            stem = rec["slide"].rsplit(".", 1)[0]
            if stem.lower().endswith(".ome"):
                stem = stem[:-4]

            def write(tmp: str, feats: np.ndarray = feats, coords: np.ndarray = coords, rec: dict[str, Any] = rec, stem: str = stem) -> None:
                with h5py.File(tmp, "w") as f:
                    fd = f.create_dataset("features", data=feats.astype(np.float32))
                    fd.attrs.update(encoder=key.split(":")[0], variant=key, store=str(store_path))
                    cd = f.create_dataset("coords", data=coords)
                    cd.attrs.update(
                        patch_size=int(opts.get("tile_px", 0)),
                        patch_size_level0=round(rec["tile_side_level0"]),
                        target_mpp=float(opts.get("mpp", np.nan)),
                        level0_mpp=float(rec["mpp"]),
                        overlap=int(opts.get("tile_px", 0)) - int(opts.get("stride_px") or opts.get("tile_px", 0)),
                        name=stem,
                        slide_path=rec["path"],
                    )

            written.append(atomic_write(out / f"{safe_name(stem)}.h5", write, ".h5"))
    return written


def export(store_path: str, fmt: str, out_dir: str | os.PathLike, feature: str | None = None) -> list[Path]:
    """Export ``store_path`` in format ``fmt`` (trident) to ``out_dir``."""
    if fmt not in FORMATS:
        raise StoreError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return export_trident(store_path, out_dir, feature)
