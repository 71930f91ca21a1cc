"""Writing small whole-slide images from real pixels: a mosaic of crops on white glass, saved as a pyramidal
JPEG-tiled Aperio .svs (OpenSlide reads it as Aperio), an OME-TIFF with sub-resolutions, or a plain tiled TIFF,
and QuPath-style GeoJSON annotations of its regions. `mito demo --slides` and the tests build slides with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in level-0 pixels


def mosaic(width: int, height: int, fills: Sequence[tuple[Box, Sequence[str | os.PathLike]]], crop: int = 128) -> np.ndarray:
    """A ``height`` x ``width`` RGB level 0: white glass, each box filled row by row with ``crop``-pixel squares
    of the given image files in turn (resized to ``crop``; a list shorter than the box repeats)."""
    img = np.full((height, width, 3), 255, np.uint8)
    for (x0, y0, x1, y1), files in fills:
        k = 0
        for y in range(y0, y1, crop):
            for x in range(x0, x1, crop):
                with Image.open(files[k % len(files)]) as im:
                    tile = np.asarray(im.convert("RGB").resize((crop, crop)))
                h, w = min(crop, y1 - y, height - y), min(crop, x1 - x, width - x)
                img[y : y + h, x : x + w] = tile[:h, :w]
                k += 1
    return img


def pyramid(img: np.ndarray, n: int = 3) -> list[np.ndarray]:
    """Levels at downsample 1, 2, 4 ... (box filter, as scanners do)."""
    out = [img]
    for _ in range(n - 1):
        a = out[-1].astype(np.float32)
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        out.append(np.round(a).astype(np.uint8))
    return out


def write_svs(path: str | os.PathLike, img: np.ndarray, mpp: float = 0.25, levels: int = 3) -> Path:
    """A pyramidal JPEG-tiled Aperio .svs (OpenSlide detects it as aperio, with ``levels`` levels and ``mpp``)."""
    import tifffile

    desc = f"Aperio Image Library v12.0.0\n{img.shape[1]}x{img.shape[0]} -> mito|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tif:
        for i, lv in enumerate(pyramid(img, levels)):
            tif.write(
                lv,
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": 90},
                photometric="rgb",
                description=desc if i == 0 else f"Aperio Image Library v12.0.0\n{lv.shape[1]}x{lv.shape[0]}",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
    return Path(path)


def write_ome(path: str | os.PathLike, img: np.ndarray, mpp: float = 0.25, levels: int = 3) -> Path:
    """A pyramidal OME-TIFF (SubIFDs) with PhysicalSizeX/Y in um."""
    import tifffile

    lv = pyramid(img, levels)
    meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(lv[0], subifds=len(lv) - 1, tile=(256, 256), compression="zlib", photometric="rgb", metadata=meta)
        for a in lv[1:]:
            tif.write(a, subfiletype=1, tile=(256, 256), compression="zlib", photometric="rgb")
    return Path(path)


def write_plain(path: str | os.PathLike, img: np.ndarray) -> Path:
    """A tiled TIFF without any resolution: no MPP."""
    import tifffile

    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", metadata=None, resolution=None)
    return Path(path)


def write_geojson(
    path: str | os.PathLike, regions: Mapping[str, Box] | Sequence[tuple[str, Box]], shift: tuple[float, float] = (0, 0)
) -> Path:
    """QuPath-style GeoJSON: one rectangular Polygon annotation per (class, box), ``classification.name`` = class."""
    items = list(regions.items()) if isinstance(regions, Mapping) else list(regions)
    dx, dy = shift
    feats = []
    labels = [label for label, _ in items]
    for i, (label, (x0, y0, x1, y1)) in enumerate(items):
        ring = [[x0 + dx, y0 + dy], [x1 + dx, y0 + dy], [x1 + dx, y1 + dy], [x0 + dx, y1 + dy], [x0 + dx, y0 + dy]]
        feats.append(
            {
                "type": "Feature",
                "id": label if labels.count(label) == 1 else f"{label}-{i}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": label, "color": [255, 0, 0]}},
            }
        )
    Path(path).write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return Path(path)
