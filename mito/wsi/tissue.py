"""Tissue detection on a slide thumbnail, and the tissue mask as GeoJSON.

The mask (documented, deliberately simple): a thumbnail is converted to HSV; pixels whose saturation is above
Otsu's threshold clipped into 20..40 /255 (never lower, so blank glass is not split into noise; never higher, so a
slide that is all tissue is not split into pale and dark tissue) and whose value is above 30/255 (black pen, dust,
scanner borders) are tissue; the mask is opened once, holes are filled and specks smaller than 0.05% of the
thumbnail are dropped. mito extract keeps a grid tile when at least ``min_tissue`` of the mask pixels under its box
are tissue (:func:`tissue_fraction`).
"""

from __future__ import annotations

import itertools
from typing import Any, cast

import numpy as np
from PIL import Image

from mito.wsi.reader import Slide

SAT_MIN, SAT_MAX = 20.0, 40.0  # Otsu's saturation threshold is clipped into this range (0..255)
MASK_TILE_PX = 16  # a tile spans at least this many mask pixels (when the slide allows)
MASK_MAX_SIDE = 8192


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (between-class variance maximised over the 256-bin histogram)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * np.arange(256))
    w1 = total - w0
    mean0 = np.divide(m0, w0, out=np.zeros(256), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros(256), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(np.argmax(between))


def tissue_mask(thumb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail (see the module docstring for the recipe)."""
    from scipy import ndimage

    hsv = np.asarray(Image.fromarray(thumb).convert("HSV"))
    sat, val = hsv[..., 1], hsv[..., 2]
    t = min(max(otsu(sat), SAT_MIN), SAT_MAX)
    mask = (sat > t) & (val > 30)
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        small = sizes < max(4, 0.0005 * mask.size)
        small[0] = False
        mask[small[labels]] = False
    return mask


def mask_downsample(slide: Slide, tile_side0: float) -> float:
    """Level-0 pixels per mask pixel: tiles span >= MASK_TILE_PX mask pixels, the mask stays <= MASK_MAX_SIDE."""
    big = max(slide.dimensions)
    return max(1.0, min(tile_side0 / MASK_TILE_PX, big / 1024), big / MASK_MAX_SIDE)


def mask_geojson(mask: np.ndarray, downsample: float, name: str) -> dict[str, Any]:
    """The mask as a GeoJSON FeatureCollection of tissue polygons (with holes) in level-0 pixels."""
    import contourpy

    z = np.pad(mask.astype(np.float64), 1)
    gen = contourpy.contour_generator(z=z, fill_type=contourpy.FillType.OuterOffset)
    points, offsets = cast(Any, gen.filled(0.5, 1.5))  # OuterOffset: (points, offsets)
    polys = []
    for pts, offs in zip(points, offsets):
        rings = []
        for a, b in itertools.pairwise(offs):
            ring = (pts[a:b] - 1 + 0.5) * downsample  # mask pixel centres -> level-0 pixels
            rings.append(np.round(ring, 1).tolist())
        polys.append(rings)
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": polys},
                "properties": {"objectType": "annotation", "name": f"tissue {name}", "classification": {"name": "Tissue"}},
            }
        ],
    }


def tissue_fraction(mask: np.ndarray, downsample: float, boxes: np.ndarray) -> np.ndarray:
    """Share of mask pixels (by centre) inside each level-0 box (N x 4: x0, y0, x1, y1) that are tissue."""
    ii = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    c0 = np.clip(np.ceil(boxes[:, 0] / downsample - 0.5), 0, w).astype(int)
    c1 = np.clip(np.ceil(boxes[:, 2] / downsample - 0.5), 0, w).astype(int)
    r0 = np.clip(np.ceil(boxes[:, 1] / downsample - 0.5), 0, h).astype(int)
    r1 = np.clip(np.ceil(boxes[:, 3] / downsample - 0.5), 0, h).astype(int)
    n = (c1 - c0) * (r1 - r0)
    s = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
    return np.where(n > 0, s / np.maximum(n, 1), 0.0)
