"""The peer formats by name: export a store in one, find which one a folder holds, read a folder's slides."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mito.interop.base import InteropError, SourceSlide, open_h5
from mito.interop.clam import clam_layout, export_clam, scan_clam
from mito.interop.eva import is_eva_folder, scan_eva
from mito.interop.stamp import export_stamp, is_stamp_file, scan_stamp
from mito.interop.trident import export_trident, is_trident_file, scan_trident

EXPORTERS: dict[str, Callable[..., tuple[list[Path], list[str]]]] = {"trident": export_trident, "clam": export_clam, "stamp": export_stamp}
FORMATS = tuple(EXPORTERS)  # what mito export writes
SCANNERS: dict[str, Callable[[Path], list[SourceSlide]]] = {
    "trident": scan_trident,
    "clam": scan_clam,
    "stamp": scan_stamp,
    "eva": scan_eva,
}
IMPORT_FORMATS = ("auto", *SCANNERS)  # what mito import reads


def export(
    store_path: str, fmt: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False
) -> tuple[list[Path], list[str]]:
    """Export ``store_path`` in format ``fmt`` to ``out_dir``: the per-slide files written, and notes for the user."""
    if fmt not in EXPORTERS:
        raise InteropError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return EXPORTERS[fmt](store_path, out_dir, feature, overwrite)


def detect_format(folder: Path) -> str:
    """Which peer wrote ``folder``: eva (manifest.csv), CLAM (h5_files/ or pt_files/), else by the first HDF5 file's
    datasets: ``feats`` is STAMP, ``features`` with TRIDENT's attrs TRIDENT, ``features`` without attrs CLAM."""
    if is_eva_folder(folder):
        return "eva"
    if clam_layout(folder):
        return "clam"
    first = next(iter(sorted(folder.glob("*.h5"))), None) or next(iter(sorted(folder.rglob("*.h5"))), None)
    if first is None:
        if any(folder.glob("*.pt")):
            return "clam"
        raise InteropError(
            f"no feature files in {folder}: expected TRIDENT/CLAM/STAMP .h5 files, CLAM h5_files/ or pt_files/, or an eva manifest.csv"
        )
    with open_h5(first) as f:
        if is_stamp_file(f):
            return "stamp"
        if is_trident_file(f):
            return "trident"
        if "features" in f:
            return "clam"
        names = ", ".join(sorted(f.keys())[:6]) or "nothing"
    raise InteropError(f"unknown format: {first} holds {names}, neither 'features' (TRIDENT/CLAM) nor 'feats' (STAMP); pass --format")


def scan(folder: str | os.PathLike, fmt: str = "auto") -> tuple[str, list[SourceSlide]]:
    """(format, slides) of a features folder, each slide opened for its shape, encoder and coordinates."""
    root = Path(folder)
    if not root.is_dir():
        raise InteropError(f"{root} is not a folder of feature files")
    if fmt not in IMPORT_FORMATS:
        raise InteropError(f"unknown format {fmt!r}: --format is one of {', '.join(IMPORT_FORMATS)}")
    fmt = detect_format(root) if fmt == "auto" else fmt
    slides = SCANNERS[fmt](root)
    if not slides:
        raise InteropError(f"no {fmt} feature files in {root}")
    return fmt, slides
