"""predict: a saved model applied to a store (checked to match the model's provenance) or to new tiles, extracted on the fly."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from mito.cache import open_store
from mito.heads.base import HEAD_FILE, HeadError, load_head
from mito.heads.features import FeaturePipeline, check_store_matches, one_hot
from mito.heads.train import CONFIG_FILE
from mito.validation import one_line


def load_model(model_dir: str | os.PathLike) -> tuple[dict[str, Any], Any, FeaturePipeline]:
    """(config, head, pipeline) of a model directory written by fit_head."""
    path = Path(model_dir)
    if not (path / CONFIG_FILE).is_file() or not (path / HEAD_FILE).is_file():
        raise HeadError(f"{path} is not a mito model directory (needs {CONFIG_FILE} and {HEAD_FILE}; made by mito fit-head)")
    config = json.loads((path / CONFIG_FILE).read_text())
    return config, load_head(path), FeaturePipeline.load(path, config["pipeline"])


def id_columns(tiles: pd.DataFrame) -> list[str]:
    """How a prediction row names its tile: path, else slide,x,y, else tile_id."""
    if "path" in tiles and tiles["path"].notna().any():
        return ["path"]
    for cols in (["slide", "x", "y"], ["slide", "slide_x", "slide_y"]):
        if all(c in tiles for c in cols):
            return cols
    return ["tile_id"]


def _extract_tmp(config: dict[str, Any], source: str, tmp: str, device: str, weights: dict[str, str] | None) -> str:
    try:
        from mito.extract import ExtractConfig, extract
    except ImportError:
        raise HeadError("this install cannot extract features (mito.extract is missing); extract first and pass --store") from None
    path = os.path.join(tmp, "tiles.zarr")
    for settings in config["extract"]:
        bb = settings["backbones"][0]
        try:
            ecfg = ExtractConfig(
                source=source,
                store=path,
                task=config["task"],  # labels found with the tiles (e.g. subfolders) then show up in the CSV
                device=device,
                progress=False,
                **settings,
                **({"weights": {bb: weights[bb]}} if weights and bb in weights else {}),
            )
        except ValidationError as e:
            raise HeadError(f"cannot rebuild the model's extraction settings: {one_line(e)}") from None
        extract(ecfg)
    return path


def predict(
    model_dir: str | os.PathLike,
    store: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    out_csv: str | os.PathLike | None = None,
    device: str = "auto",
    weights: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Predict every readable tile of ``store`` (or of ``source``, embedded the model's way); optionally write a CSV."""
    if (store is None) == (source is None):
        raise HeadError("give exactly one of a store (--store) or a folder/CSV/slide of new tiles")
    config, head, pipe = load_model(model_dir)
    with tempfile.TemporaryDirectory(prefix="mito-predict-") as tmp:
        store_path = str(store) if store is not None else _extract_tmp(config, str(source), tmp, device, weights)
        df = _predict_store(config, head, pipe, store_path)
    if out_csv is not None:
        out = Path(out_csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f".{out.name}.writing")
        df.to_csv(part, index=False)
        os.replace(part, out)
    return df


def _predict_store(config: dict[str, Any], head: Any, pipe: FeaturePipeline, store_path: str) -> pd.DataFrame:
    keys = config["features"]
    with open_store(store_path, "r") as s:
        check_store_matches(s, config["variants"])
        tiles = s.tiles
        rows = np.flatnonzero(~s.unreadable)
        if len(rows) == 0:
            raise HeadError(f"{store_path} has no readable tile to predict")
        probs, order = [], []
        for idx, block in s.iter_chunks(keys, rows):
            X = pipe.transform(block)
            meta = one_hot(tiles, idx, config["metadata_categories"])
            if meta.shape[1]:
                X = np.concatenate([X, meta.astype(X.dtype)], axis=1)
            probs.append(head.predict_proba(X))
            order.append(idx)
    idx = np.concatenate(order)
    proba = np.concatenate(probs)
    classes = head.classes_
    df = tiles.iloc[idx][id_columns(tiles)].reset_index(drop=True)
    task = config["task"]
    if task in tiles and tiles[task].iloc[idx].notna().any():
        df["label"] = tiles[task].iloc[idx].to_numpy()
    df["pred"] = classes[proba.argmax(axis=1)]
    for j, c in enumerate(classes.tolist()):
        df[f"p_{c}"] = proba[:, j]
    return df
