"""Colour modes of a tile beyond RGB: gray (ITU-R 601 luminance x3) and hema (the haematoxylin channel of a colour
deconvolution, Ruifrok & Johnston 2001, as luminance x3)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from mito.extract.errors import ExtractError


def to_gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance replicated to three channels."""
    lum = np.asarray(Image.fromarray(img).convert("L"))
    return np.repeat(lum[..., None], 3, axis=2)


def skimage_color() -> Any:
    """scikit-image's colour module (colour deconvolution), or a one-line ExtractError when it is not installed."""
    try:
        from skimage import color
    except ImportError:
        raise ExtractError("HED views and --colors hema need scikit-image: pip install scikit-image") from None
    return color


def to_hema(img: np.ndarray) -> np.ndarray:
    """The haematoxylin channel from colour deconvolution, rendered as its RGB image, as luminance x3 (like gray)."""
    color = skimage_color()
    hed = color.rgb2hed(img)
    hed[..., 1:] = 0
    h = np.clip(np.rint(color.hed2rgb(hed) * 255), 0, 255).astype(np.uint8)
    return to_gray(h)
