"""Small real slides for the tests: real AMi-Br H&E crops mosaicked on white glass into two class regions.

Level 0 is 1536 x 1024 px at 0.25 um/px. Region "Atypical" fills x 128..640, y 128..896 with Atypical crops,
region "Normal" fills x 896..1408 with Normal crops; everything else is white. At --mpp 0.5 --tile-px 64
a tile is 128 level-0 px, so the regions hold exactly 4 x 6 grid tiles each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import AMIBR

W, H = 1536, 1024
CROP = 128
REGIONS = {"Atypical": (128, 128, 640, 896), "Normal": (896, 128, 1408, 896)}  # x0, y0, x1, y1


def mosaic() -> np.ndarray:
    """The level-0 RGB image."""
    img = np.full((H, W, 3), 255, np.uint8)
    for label, (x0, y0, x1, y1) in REGIONS.items():
        crops = sorted((AMIBR / label).glob("*.jpg"))
        k = 0
        for y in range(y0, y1, CROP):
            for x in range(x0, x1, CROP):
                with Image.open(crops[k % len(crops)]) as im:
                    img[y : y + CROP, x : x + CROP] = np.asarray(im.convert("RGB").resize((CROP, CROP)))
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


def write_svs(path: Path, img: np.ndarray, mpp: float = 0.25) -> Path:
    """A pyramidal JPEG-tiled Aperio .svs (OpenSlide detects it as aperio with 3 levels)."""
    import tifffile

    levels = pyramid(img)
    desc = f"Aperio Image Library v12.0.0\n{img.shape[1]}x{img.shape[0]} -> test|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tif:
        for i, lv in enumerate(levels):
            tif.write(
                lv, tile=(256, 256), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                description=desc if i == 0 else f"Aperio Image Library v12.0.0\n{lv.shape[1]}x{lv.shape[0]}",
                subfiletype=0 if i == 0 else 1, metadata=None,
            )
    return path


def write_ome(path: Path, img: np.ndarray, mpp: float = 0.25) -> Path:
    """A pyramidal OME-TIFF (SubIFDs) with PhysicalSizeX/Y in um."""
    import tifffile

    levels = pyramid(img)
    meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, tile=(256, 256), compression="zlib", photometric="rgb", metadata=meta)
        for lv in levels[1:]:
            tif.write(lv, subfiletype=1, tile=(256, 256), compression="zlib", photometric="rgb")
    return path


def write_plain(path: Path, img: np.ndarray) -> Path:
    """A tiled TIFF without any resolution: no MPP."""
    import tifffile

    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", metadata=None, resolution=None)
    return path


def write_corrupt(path: Path) -> Path:
    """A file named .svs that holds no image at all."""
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    return path


def write_geojson(path: Path, shift: tuple[float, float] = (0, 0)) -> Path:
    """QuPath-style GeoJSON: one Polygon per region with classification.name."""
    feats = []
    for label, (x0, y0, x1, y1) in REGIONS.items():
        dx, dy = shift
        ring = [[x0 + dx, y0 + dy], [x1 + dx, y0 + dy], [x1 + dx, y1 + dy], [x0 + dx, y1 + dy], [x0 + dx, y0 + dy]]
        feats.append({"type": "Feature", "id": label, "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "annotation", "classification": {"name": label, "color": [255, 0, 0]}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def slide_folder(dest: Path) -> Path:
    """A folder with an .svs, an OME-TIFF, a TIFF without MPP and a corrupt .svs."""
    dest.mkdir(parents=True, exist_ok=True)
    img = mosaic()
    write_svs(dest / "a.svs", img)
    write_ome(dest / "b.ome.tif", img[:, ::-1].copy())  # mirrored: Normal on the left
    write_plain(dest / "nompp.tif", img)
    write_corrupt(dest / "broken.svs")
    return dest
