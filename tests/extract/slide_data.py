"""Small real slides for the tests: real AMi-Br H&E crops mosaicked on white glass into two class regions.

Level 0 is 1536 x 1024 px at 0.25 um/px. Region "Atypical" fills x 128..640, y 128..896 with Atypical crops,
region "Normal" fills x 896..1408 with Normal crops; everything else is white. At --mpp 0.5 --tile-px 64
a tile is 128 level-0 px, so the regions hold exactly 4 x 6 grid tiles each. The writers are the library's
(mito.wsi.writer, which `mito demo --slides` uses too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mito.wsi import writer as slide_writer
from mito.wsi.writer import pyramid, write_ome, write_plain, write_svs  # noqa: F401  (the tests' names)
from tests.conftest import AMIBR

W, H = 1536, 1024
CROP = 128
REGIONS = {"Atypical": (128, 128, 640, 896), "Normal": (896, 128, 1408, 896)}  # x0, y0, x1, y1


def mosaic() -> np.ndarray:
    """The level-0 RGB image."""
    return slide_writer.mosaic(W, H, [(box, sorted((AMIBR / label).glob("*.jpg"))) for label, box in REGIONS.items()], CROP)


def write_corrupt(path: Path) -> Path:
    """A file named .svs that holds no image at all."""
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    return path


def write_geojson(path: Path, shift: tuple[float, float] = (0, 0)) -> Path:
    """QuPath-style GeoJSON: one Polygon per region with classification.name."""
    return slide_writer.write_geojson(path, REGIONS, shift)


def slide_folder(dest: Path) -> Path:
    """A folder with an .svs, an OME-TIFF, a TIFF without MPP and a corrupt .svs."""
    dest.mkdir(parents=True, exist_ok=True)
    img = mosaic()
    write_svs(dest / "a.svs", img)
    write_ome(dest / "b.ome.tif", img[:, ::-1].copy())  # mirrored: Normal on the left
    write_plain(dest / "nompp.tif", img)
    write_corrupt(dest / "broken.svs")
    return dest
