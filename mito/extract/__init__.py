"""Tile sources, zoom/colour variants and the extractor (backbones: mito.backbones; slide reading: mito.wsi)."""

from mito.extract.errors import ExtractError
from mito.extract.extractor import ExtractConfig, extract, pick_device
from mito.extract.grow import growth_lines
from mito.extract.sources import TileSource, open_source
from mito.extract.variants import COLORS, FITS, PAD_MODES, Preprocess, preprocess

__all__ = [
    "COLORS",
    "FITS",
    "PAD_MODES",
    "ExtractConfig",
    "ExtractError",
    "Preprocess",
    "TileSource",
    "extract",
    "growth_lines",
    "open_source",
    "pick_device",
    "preprocess",
]
