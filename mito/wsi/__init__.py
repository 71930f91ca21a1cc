"""Whole-slide images: reading them (OpenSlide, tifffile) at a true micron-per-pixel, tissue detection, and writing
small test slides from real pixels."""

from mito.wsi.reader import (
    OPENSLIDE_EXTS,
    READERS,
    TIFF_EXTS,
    WSI_EXTS,
    Slide,
    SlideReadError,
    close_slide,
    open_slide,
    read_box,
    read_region,
    resolve_mpp,
    slide_file_stems,
    slide_thumbnail,
    thumbnail,
)
from mito.wsi.tissue import mask_downsample, mask_geojson, tissue_fraction, tissue_mask

__all__ = [
    "OPENSLIDE_EXTS",
    "READERS",
    "TIFF_EXTS",
    "WSI_EXTS",
    "Slide",
    "SlideReadError",
    "close_slide",
    "mask_downsample",
    "mask_geojson",
    "open_slide",
    "read_box",
    "read_region",
    "resolve_mpp",
    "slide_file_stems",
    "slide_thumbnail",
    "thumbnail",
    "tissue_fraction",
    "tissue_mask",
]
