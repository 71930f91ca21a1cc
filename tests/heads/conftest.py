"""Fixtures for head tests: real AMi-Br tile table (ids, labels, slides, split) with synthetic features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.store import create_store
from tests.conftest import AMIBR

PROV = {
    "backbone": "fakenet",
    "weights_sha256": "a" * 64,
    "preprocessing": {"input_size": 32, "fit": "resize", "pad_mode": "reflect", "zoom": 1.0, "color": "rgb"},
}


def amibr_tiles(n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The AMi-Br tile table (tile_id, path, mitosis, slide/group, dataset, split), optionally a stratified sample."""
    meta = pd.read_csv(AMIBR / "amibr_train_split.csv")
    meta["stem"] = meta["dataset_uid"].str.rsplit(".", n=1).str[0]
    by_stem = meta.set_index("stem")
    rows = []
    for label in ("Atypical", "Normal"):
        for f in sorted((AMIBR / label).glob("*.jpg")):
            tr = f.stem in by_stem.index
            slide = by_stem.loc[f.stem, "slide"] if tr else None
            rows.append(
                {
                    "tile_id": f"{label}/{f.name}",
                    "path": str(f),
                    "mitosis": label,
                    "dataset": f.stem.split("_")[0],
                    "split": "train" if tr else "test",
                    "group": f"{f.stem.split('_')[0]}/{slide}" if tr else f.stem,
                }
            )
    df = pd.DataFrame(rows)
    if n is not None:
        rng = np.random.default_rng(seed)
        keep = [
            rng.choice(ix, max(1, min(len(ix), round(len(ix) * n / len(df)))), replace=False)
            for ix in df.groupby(["mitosis", "split"]).indices.values()
        ]
        df = df.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)
    return df


def synthetic_store(
    path: Path, tiles: pd.DataFrame, dims: dict[str, int], seed: int = 0, fmt_chunk: int = 64, tasks: list[str] | None = None
) -> Path:
    """A store whose variants hold class-dependent Gaussian features (learnable, not trivially separable)."""
    rng = np.random.default_rng(seed)
    s = create_store(path, tiles, {"tasks": tasks or ["mitosis"]}, chunk_rows=fmt_chunk)
    y = (tiles["mitosis"] == "Atypical").to_numpy()
    for i, (key, d) in enumerate(dims.items()):
        zoom, color = key.split(":")[1][1:], key.split(":")[2]
        prov = {**PROV, "backbone": key.split(":")[0], "preprocessing": {**PROV["preprocessing"], "zoom": float(zoom), "color": color}}
        s.ensure_variant(key, d, prov)
        shift = np.zeros(d)
        shift[: max(1, d // 8)] = 0.8 / (i + 1)
        X = rng.normal(size=(len(tiles), d)) * rng.uniform(0.2, 3.0, size=d) + y[:, None] * shift
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            s.write_chunk(key, c, X[a:b].astype(np.float16))
    s.close()
    return path


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~600 real AMi-Br tiles (labels, slides, published split) with two synthetic 32-dim variants."""
    tiles = amibr_tiles(600)
    return synthetic_store(tmp_path_factory.mktemp("heads") / "synth.zarr", tiles, {"fakenet:z1:rgb": 32, "fakenet:z1:gray": 32})
