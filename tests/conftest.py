"""Shared fixtures: real AMi-Br crops from ../shared and small real embedding stores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MITO_SHARED", ROOT.parent / "shared"))
SAMPLE = ROOT / "mito" / "data" / "sample" / "amibr"
# the full AMi-Br set when ../shared is beside the clone, else the 300-crop sample bundled with the package
AMIBR = SHARED / "data" / "amibr" if (SHARED / "data" / "amibr").is_dir() else SAMPLE
FULL_AMIBR = AMIBR != SAMPLE


def needs_full_amibr() -> None:
    """Skip a test that needs all 3,720 crops when only the bundled sample is here."""
    if not FULL_AMIBR:
        pytest.skip(f"needs the full AMi-Br set at {SHARED / 'data' / 'amibr'}")


torch.set_num_threads(min(2, os.cpu_count() or 1))


def amibr_subset(dest: Path, n_per_class: int, seed: int = 0) -> Path:
    """Copy n crops per class (train and test split mixed) into an AMi-Br-shaped folder at ``dest``."""
    meta = pd.read_csv(AMIBR / "amibr_train_split.csv")
    train_stems = set(meta["dataset_uid"].str.rsplit(".", n=1).str[0])
    for label in ("Atypical", "Normal"):
        files = sorted((AMIBR / label).glob("*.jpg"))
        tr = [f for f in files if f.stem in train_stems]
        te = [f for f in files if f.stem not in train_stems]
        g = torch.Generator().manual_seed(seed)
        n_te = n_per_class // 4
        pick = [tr[i] for i in torch.randperm(len(tr), generator=g)[: n_per_class - n_te].tolist()]
        pick += [te[i] for i in torch.randperm(len(te), generator=g)[:n_te].tolist()]
        (dest / label).mkdir(parents=True, exist_ok=True)
        for f in pick:
            shutil.copy(f, dest / label / f.name)
    shutil.copy(AMIBR / "amibr_train_split.csv", dest / "amibr_train_split.csv")
    return dest


@pytest.fixture(scope="session")
def amibr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 real AMi-Br crops (24 Atypical, 24 Normal) with the published metadata CSV."""
    return amibr_subset(tmp_path_factory.mktemp("amibr") / "amibr", 24)


@pytest.fixture(scope="session")
def amibr_store(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Zarr store: the 48 crops embedded by efficientnet_lite0 at zooms 1,2 in rgb and gray (128 px input)."""
    from mito.extract import ExtractConfig, extract

    path = tmp_path_factory.mktemp("stores") / "amibr.zarr"
    extract(
        ExtractConfig(
            source=str(amibr_dir),
            store=str(path),
            task="mitosis",
            zooms=[1.0, 2.0],
            colors=["rgb", "gray"],
            input_size=128,
            chunk_rows=16,
            batch_size=16,
            num_workers=0,
            progress=False,
        )
    )
    return path
