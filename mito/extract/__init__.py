"""Tile sources, zoom/colour variants, the backbone registry and the extractor."""

from mito.extract.backbones import (
    BackboneSpec,
    Encoder,
    WeightsSource,
    available,
    create_backbone,
    get_backbone,
    list_backbones,
    register,
    resolve_weights,
    spec_summary,
)
from mito.extract.errors import ExtractError
from mito.extract.extractor import ExtractConfig, extract, pick_device
from mito.extract.grow import growth_lines
from mito.extract.sources import TileSource, open_source
from mito.extract.variants import COLORS, FITS, PAD_MODES, Preprocess, preprocess

__all__ = [
    "COLORS",
    "FITS",
    "PAD_MODES",
    "BackboneSpec",
    "Encoder",
    "ExtractConfig",
    "ExtractError",
    "Preprocess",
    "TileSource",
    "WeightsSource",
    "available",
    "create_backbone",
    "extract",
    "get_backbone",
    "growth_lines",
    "list_backbones",
    "open_source",
    "pick_device",
    "preprocess",
    "register",
    "resolve_weights",
    "spec_summary",
]
