"""Peer formats: a slide store's features exported for TRIDENT / CLAM / STAMP, and their features (or eva's) imported."""

from mito.interop.base import InteropError, is_export_dir
from mito.interop.formats import FORMATS, IMPORT_FORMATS, detect_format, export, scan
from mito.interop.importing import ImportResult, import_features

__all__ = [
    "FORMATS",
    "IMPORT_FORMATS",
    "ImportResult",
    "InteropError",
    "detect_format",
    "export",
    "import_features",
    "is_export_dir",
    "scan",
]
