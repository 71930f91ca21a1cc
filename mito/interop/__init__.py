"""Peer formats: a slide store's features exported for other tools (TRIDENT / CLAM per-slide HDF5)."""

from mito.interop.trident import FORMATS, export, export_trident

__all__ = ["FORMATS", "export", "export_trident"]
