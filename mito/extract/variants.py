"""Zoom / colour variants and fitting a region to the backbone's input size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from mito.extract.colors import to_gray, to_hema

COLORS = ("rgb", "gray", "hema")
FITS = ("resize", "pad")
PAD_MODES = ("reflect", "white")


@dataclass(frozen=True)
class Preprocess:
    """How a region becomes a backbone input: central 1/zoom of it, colour mode, fit to size, normalise."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    zoom: float = 1.0
    color: str = "rgb"
    fit: str = "resize"
    pad_mode: str = "reflect"

    def as_dict(self) -> dict[str, object]:
        """JSON-able form, recorded as provenance in the store and in model configs."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def fit_to(img: np.ndarray, size: int, fit: str, pad_mode: str) -> np.ndarray:
    """Bring an HxWx3 region to size x size: ``resize`` scales (aspect kept, then padded), ``pad`` pads at native scale."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    if fit == "resize" or scale < 1:
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
        h, w = nh, nw
    if (h, w) == (size, size):
        return img
    top, left = (size - h) // 2, (size - w) // 2
    pads = ((top, size - h - top), (left, size - w - left), (0, 0))
    if pad_mode == "white":
        return np.pad(img, pads, mode="constant", constant_values=255)
    return np.pad(img, pads, mode="reflect" if min(h, w) > 1 else "edge")


def prepare(img: np.ndarray, p: Preprocess) -> torch.Tensor:
    """uint8 HxWx3 region -> uint8 tensor 3 x S x S (zoom crop, colour, fit); normalise later, e.g. on the GPU."""
    if p.zoom != 1.0:
        side = max(1, round(min(img.shape[:2]) / p.zoom))
        h, w = img.shape[:2]
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top : top + side, left : left + side]
    if p.color == "gray":
        img = to_gray(img)
    elif p.color == "hema":
        img = to_hema(np.ascontiguousarray(img))
    img = fit_to(np.ascontiguousarray(img), p.input_size, p.fit, p.pad_mode)
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 (x / 255 - mean) / std, the same arithmetic on any device."""
    x = x.to(torch.float32).div(255.0)  # a new tensor even when x is already float32
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def preprocess(img: np.ndarray, p: Preprocess) -> torch.Tensor:
    """uint8 HxWx3 region -> normalised float tensor 3 x S x S."""
    return normalize(prepare(img, p), p.mean, p.std)
