"""eva (kaiko-ai/eva): an embeddings folder (``manifest.csv`` + ``.pt`` files), read as eva's readers do.

Writer matched: ``eva/core/callbacks/writers/embeddings/base.py::EmbeddingsWriter`` + ``_manifest.py::ManifestManager``
(manifest ``origin, embeddings, target, split`` + metadata such as ``wsi_id``; each ``.pt`` a list of 1-D tensors).
Readers matched: ``eva/core/data/datasets/embeddings.py`` (``default_column_mapping``: path = ``embeddings``,
target, split, multi_id = ``wsi_id``) and ``classification/multi_embeddings.py`` (rows grouped by ``wsi_id``, each file
a list (stacked) or a tensor, 1-D unsqueezed, concatenated; one target per group). mito loads with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.interop.base import InteropError, SourceSlide, held_rows, load_tensor_file

FORMAT = "eva"
MANIFEST = "manifest.csv"


def is_eva_folder(folder: Path) -> bool:
    """A folder eva's embeddings writer made (manifest.csv with an ``embeddings`` column)."""
    m = folder / MANIFEST
    if not m.is_file():
        return False
    try:
        return "embeddings" in pd.read_csv(m, nrows=0).columns
    except (ValueError, OSError, pd.errors.ParserError):
        return False


def scan_eva(folder: Path) -> list[SourceSlide]:
    """One slide per ``wsi_id`` (else per embeddings file): its files' tensors concatenated in manifest order; its
    ``target`` and ``split`` (constant within the slide, as eva's MIL dataset requires) become labels. eva writes
    no coordinates, so the tiles have none."""
    m = folder / MANIFEST
    try:
        df = pd.read_csv(m, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise InteropError(f"{m} is not a readable CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if "embeddings" not in df:
        raise InteropError(f"{m} has no 'embeddings' column (eva's manifest: origin, embeddings, target, split)")
    key = "wsi_id" if "wsi_id" in df else "embeddings"
    out = []
    for slide, rows in df.groupby(key, sort=False):
        files = list(dict.fromkeys(rows["embeddings"]))
        paths = []
        for rel in files:
            p = (folder / rel).resolve()
            if folder.resolve() not in p.parents or not p.is_file():
                raise InteropError(f"{m}: embeddings file {rel!r} is not in {folder}")
            paths.append(p)
        labels: dict[str, Any] = {}
        for col, name in (("target", "label"), ("split", "split")):
            if col in rows:
                vals = sorted(set(rows[col]) - {""})
                if len(vals) > 1:
                    raise InteropError(f"{m}: slide {slide} has several {col} values ({', '.join(vals[:4])}); eva needs one per {key}")
                if vals:
                    labels[name] = vals[0]
        x = _load(paths)
        name = str(slide) if key == "wsi_id" else Path(str(slide)).with_suffix("").as_posix()
        out.append(SourceSlide(name, paths, x.shape[0], x.shape[1], _rows(paths), labels=labels))
    return out


def _load(paths: list[Path]) -> np.ndarray:
    parts = [load_tensor_file(p) for p in paths]
    if len({x.shape[1] for x in parts}) != 1:
        raise InteropError(f"the embeddings of {paths[0].name} ... mix feature sizes {sorted({x.shape[1] for x in parts})}")
    return np.concatenate(parts, axis=0)


def _rows(paths: list[Path]) -> Any:
    return held_rows(lambda: _load(paths))  # the slide's rows, loaded once for the chunks that read them
