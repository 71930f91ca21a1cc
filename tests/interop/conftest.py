"""A small slide store from real pixels with slide labels and patients: what the export and round-trip tests start from.

Eight 384 x 384 px Aperio slides (0.25 um/px) cut from the AMi-Br mosaic of tests/extract/slide_data.py: four from the
Atypical region, four from the Normal one; extracted at 0.5 um/px, 64 px tiles (128 level-0 px, 9 per slide) from a
slide manifest (path, label, patient), so every tile carries its slide's label and patient.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.extract.slide_data import REGIONS, mosaic, write_svs

KEY = "efficientnet_lite0:z1:rgb"
SIDE = 384


@pytest.fixture(scope="session")
def slide_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slides' folder (with manifest.csv: path,label,patient) and labels.csv (slide,label,patient)."""
    root = tmp_path_factory.mktemp("interop-slides")
    img = mosaic()
    rows = []
    for label, (x0, y0, _x1, _y1) in REGIONS.items():
        for i, (dx, dy) in enumerate(((0, 0), (128, 128), (0, 384), (128, 256))):
            name = f"{label.lower()}{i}.svs"
            write_svs(root / name, img[y0 + dy : y0 + dy + SIDE, x0 + dx : x0 + dx + SIDE].copy())
            rows.append((name, label.lower(), f"P{label[0]}{i // 2}"))
    (root / "manifest.csv").write_text("path,label,patient\n" + "".join(f"{n},{lab},{p}\n" for n, lab, p in rows))
    (root / "labels.csv").write_text("slide,label,patient\n" + "".join(f"{n},{lab},{p}\n" for n, lab, p in rows))
    return root


@pytest.fixture(scope="session")
def slide_store(slide_labels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mito.extract import ExtractConfig, extract

    store = tmp_path_factory.mktemp("interop-store") / "s.zarr"
    extract(
        ExtractConfig(
            source=str(slide_labels / "manifest.csv"),
            store=str(store),
            mpp=0.5,
            tile_px=64,
            input_size=64,
            zooms=[1.0],
            colors=["rgb"],
            chunk_rows=32,
            batch_size=32,
            num_workers=0,
            progress=False,
        )
    )
    return store
