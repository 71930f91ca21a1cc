"""TRIDENT (mahmoodlab/TRIDENT): per-slide HDF5 files of patch features, written and read as TRIDENT does.

Writer matched: ``trident/IO.py::coords_to_h5`` (coords attrs) and ``WSI.extract_patch_features`` (features attrs
``name``, ``savetodir``, ``encoder``; the coords file's attrs copied onto ``coords``). Readers matched:
``IO.read_coords`` + ``WSI.extract_patch_features`` (``patch_size``, ``level0_magnification``,
``target_magnification`` required) and ``WSI.extract_slide_features`` (``features``, ``coords``, the coords attrs,
``int(patch_size_level0)``). See docs/interop.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mito.interop.base import (
    InteropError,
    SlideExport,
    SourceSlide,
    StoreExport,
    attr_text,
    coords_of,
    export_folder,
    feature_shape,
    h5_rows,
    is_export_dir,
    open_h5,
    plain,
)

FORMAT = "trident"
__all__ = ["FORMAT", "export_trident", "is_export_dir", "nominal_magnification", "scan_trident", "trident_coords_attrs"]


def nominal_magnification(mpp: float) -> int | None:
    """TRIDENT's level-0 magnification for a level-0 um/px (``WSI._fetch_magnification``: a 0.2527 um/px slide is
    40x); None where TRIDENT raises (>= 2.4 um/px) or the um/px is unknown."""
    if not math.isfinite(mpp) or mpp <= 0:
        return None
    for bound, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < bound:
            return mag
    return None


def trident_coords_attrs(sl: SlideExport, savetodir: str) -> tuple[dict[str, Any], list[str]]:
    """The ``coords`` attributes of ``coords_to_h5`` for one slide (plus mito's exact field), and notes on what
    cannot be written. ``target_magnification`` is chosen so that TRIDENT's own 10/mag pixel size reproduces the
    field mito read (``level0_mag * patch_size / field0``; an int when whole); ``patch_size_level0`` is TRIDENT's
    floor ``patch_size * level0_mag // target_mag``."""
    g = sl.geometry
    attrs: dict[str, Any] = {"patch_size": int(g["patch_size"]), "overlap": int(g["overlap"]), "name": sl.stem, "savetodir": savetodir}
    notes = []
    src = nominal_magnification(float(g["level0_mpp"]))
    if src is None:
        attrs["patch_size_level0"] = round(sl.field0)
        why = "records no um/px" if not math.isfinite(float(g["level0_mpp"])) else f"has {g['level0_mpp']:g} um/px (TRIDENT stops at 2.4)"
        notes.append(f"{sl.slide} {why}: its coords lack level0_magnification/target_magnification, which TRIDENT's patch readers need")
    else:
        target: float = src * g["patch_size"] / sl.field0
        target = int(round(target)) if abs(target - round(target)) < 1e-9 else round(target, 6)
        attrs.update(patch_size_level0=int(g["patch_size"] * src // target), level0_magnification=int(src), target_magnification=target)
    if sl.size is not None:
        attrs.update(level0_width=int(sl.size[0]), level0_height=int(sl.size[1]))
    attrs.update(
        mito_field_level0=float(sl.field0),
        target_mpp=float(g["target_mpp"]),
        level0_mpp=float(g["level0_mpp"]),
        zoom=float(g["zoom"]),
        slide=sl.slide,
        slide_path=sl.path,
    )
    return attrs, notes


def _write(tmp: Path, out: Path, head: StoreExport, sl: SlideExport) -> list[str]:
    import h5py

    attrs, notes = trident_coords_attrs(sl, str(out))
    with h5py.File(tmp / f"{sl.stem}.h5", "w") as f:
        fd = f.create_dataset("features", data=sl.features.astype(np.float32), maxshape=(None, sl.features.shape[1]))
        fd.attrs.update(name=sl.stem, savetodir=str(out), encoder=head.key.split(":")[0], variant=head.key, store=head.store)
        cd = f.create_dataset("coords", data=sl.coords.astype(np.int64), maxshape=(None, 2))
        cd.attrs.update(**attrs)
    return notes


def export_trident(
    store_path: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False
) -> tuple[list[Path], list[str]]:
    """One ``<slide stem>.h5`` per slide as ``WSI.extract_patch_features`` writes it: ``features`` (N x D float32) and
    ``coords`` (N x 2 int64, level-0 top-left of the field the features saw) with every attribute TRIDENT writes,
    plus mito.json. Unreadable tiles are left out; slides whose names collide get distinct files."""
    return export_folder(store_path, out_dir, FORMAT, feature, overwrite, _write)


# ---------------------------------------------------------------- import


def is_trident_file(f: Any) -> bool:
    """A TRIDENT features file: ``features`` + ``coords``, with TRIDENT's attrs on either."""
    if "features" not in f or "coords" not in f:
        return False
    fa, ca = f["features"].attrs, f["coords"].attrs
    return "encoder" in fa or "savetodir" in fa or "level0_magnification" in ca or "patch_size_level0" in ca


def scan_trident(folder: Path) -> list[SourceSlide]:
    """Every ``*.h5`` in ``folder`` read as TRIDENT's readers do: ``features``, ``coords`` and the coords attrs
    (``patch_size_level0`` gives the level-0 box, ``level0_width/height`` the slide's size); the encoder from
    ``features.attrs['encoder']``, the slide from mito's ``slide`` attr, else ``name``, else the file stem."""
    files = sorted(p for p in folder.glob("*.h5") if p.is_file())
    return [_scan_file(p) for p in files]


def _scan_file(path: Path) -> SourceSlide:
    with open_h5(path) as f:
        if "features" not in f:
            raise InteropError(f"{path} has no 'features' dataset: not a TRIDENT features file (a patches/ coords file?)")
        n, d = feature_shape(path, f["features"], "features")
        coords = coords_of(path, f, n)
        ca = {k: plain(v) for k, v in f["coords"].attrs.items()}
        fa = {k: plain(v) for k, v in f["features"].attrs.items()}
    slide = attr_text(ca.get("slide")) or attr_text(ca.get("name")) or attr_text(fa.get("name")) or path.stem
    side = ca.get("patch_size_level0")
    width, height = ca.get("level0_width"), ca.get("level0_height")
    keep = {k: ca[k] for k in ("patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap") if k in ca}
    return SourceSlide(
        slide,
        [path],
        n,
        d,
        h5_rows(path, "features"),
        encoder=attr_text(fa.get("encoder")),
        coords=coords,
        side=float(side) if isinstance(side, (int, float)) and side > 0 else None,
        size=(int(width), int(height)) if isinstance(width, (int, float)) and isinstance(height, (int, float)) else None,
        attrs=keep,
    )
