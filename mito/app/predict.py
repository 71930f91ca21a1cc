"""predict on new tiles: embed them the model's way into a temporary store, then score them as a store; and slide-level
predictions with their attention pictures (mito predict, mito demo --slides)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ConfigDict, Field, ValidationError

from mito.core.io import check_output_file, inside
from mito.core.sections import OutputSection
from mito.core.validation import one_line
from mito.extract import ExtractConfig, extract
from mito.extract.sources import IMAGE_EXTS
from mito.heads import HeadError, load_model
from mito.heads import predict as predict_stored
from mito.heads import predict_slides as predict_slide_bags
from mito.heads.predict import check_store_out, predict_store, write_predictions
from mito.report.slides import TOP_K, check_picture_dir, check_pictures, draw_pictures
from mito.store import open_store
from mito.wsi.reader import WSI_EXTS


class PredictConfig(OutputSection):
    """One `mito predict` run: a trained model applied to new tiles or to a store (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model directory made by mito fit-head (or mito lora).", examples=["runs/model"])
    out: str = Field(description="CSV to write: path (or slide,x,y), label when known, pred, p_<class>.", examples=["pred.csv"])
    source: str | None = Field(None, description="New tiles (folder, CSV manifest or slide) to embed the model's way; or store.")
    store: str | None = Field(None, description="Predict the tiles of an existing store instead.")
    points: str | None = Field(None, description="source is a slide: CSV of x,y[,label,...] tile centres (level-0 pixels).")
    tile_size: int | None = Field(None, ge=8, description="source is a slide: tile side in level-0 pixels (default: the model's).")
    device: str = Field("auto", description="Extraction device for source: auto, cpu or cuda.")
    weights: dict[str, str] = Field(default_factory=dict, description="Backbone weight file per backbone for source: {name: path}.")
    progress: bool = Field(True, description="Show progress bars.")
    heatmaps: str | None = Field(None, description="Folder for per-slide PNG heatmaps of the predicted probability (with store).")


def predict(
    model_dir: str | os.PathLike,
    store: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    out_csv: str | os.PathLike | None = None,
    device: str = "auto",
    weights: dict[str, str] | None = None,
    points: str | os.PathLike | None = None,
    tile_size: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict every readable tile of ``store`` (or of ``source``, embedded the model's way: a folder, a CSV manifest,
    or a slide with ``points``); optionally write a CSV (never over an existing file unless ``overwrite``)."""
    if (store is None) == (source is None):
        raise HeadError("give exactly one of a store (--store) or a folder/CSV/slide of new tiles")
    if store is not None and (points is not None or tile_size is not None):
        raise HeadError("--points and --tile-size are for new slide tiles, not for --store")
    if store is not None:
        return predict_stored(model_dir, store, out_csv, overwrite, progress)
    model = load_model(model_dir)
    if out_csv is not None:
        check_predict_out(out_csv, model_dir, None, source, overwrite)
    with tempfile.TemporaryDirectory(prefix="mito-predict-") as tmp:
        store_path, skipped = _extract_tmp(
            model.config, str(source), tmp, device, weights, None if points is None else str(points), tile_size, progress
        )
        df = predict_store(model, store_path, progress)
        df.attrs["skipped_slides"] = skipped  # slides of SOURCE that could not be tiled, with the reason
    if out_csv is not None:
        write_predictions(df, out_csv)
    return df


def _extract_tmp(
    config: dict[str, Any],
    source: str,
    tmp: str,
    device: str,
    weights: dict[str, str] | None,
    points: str | None = None,
    tile_size: int | None = None,
    progress: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    """Embed ``source`` (folder, CSV manifest, or slide with ``points``) into a temporary store the model's way;
    returns its path and the slides extraction skipped (slide, path, reason)."""
    path = os.path.join(tmp, "tiles.zarr")
    skipped: dict[str, dict[str, Any]] = {}
    for settings in config["extract"]:
        bb = settings["backbones"][0]
        settings = dict(settings)
        trained = settings.pop("tile_size", None)
        if trained is not None and tile_size is not None and int(tile_size) != int(trained):
            raise HeadError(f"the model was trained on {trained}-px slide tiles; --tile-size {tile_size} would crop differently")
        size = trained if trained is not None else tile_size
        try:
            ecfg = ExtractConfig(
                source=source,
                store=path,
                task=config["task"],  # labels found with the tiles (e.g. subfolders) then show up in the CSV
                device=device,
                progress=progress,
                **({"points": str(points)} if points is not None else {}),
                **({"tile_size": int(size)} if size is not None else {}),
                **settings,
                **({"weights": {bb: weights[bb]}} if weights and bb in weights else {}),
            )
        except ValidationError as e:
            raise HeadError(f"cannot rebuild the model's extraction settings: {one_line(e)}") from None
        summary = extract(ecfg)
        skipped.update({s["path"]: s for s in summary.get("skipped_slides", [])})
    return path, list(skipped.values())


def check_predict_out(
    out_csv: str | os.PathLike,
    model_dir: str | os.PathLike,
    store: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Refuse a predictions CSV inside a model directory or a store, on an input (a file the store was made from, an
    image or slide of SOURCE, even with overwrite), or on an existing file (unless overwrite)."""
    if store is not None:
        return check_store_out(out_csv, store, overwrite)
    protect = (source,) if source is not None and not Path(source).is_dir() else ()  # model dirs and stores: always
    return check_output_file(out_csv, overwrite=overwrite, protect=protect, inputs=source_input_files(source, out_csv))


def source_input_files(source: str | os.PathLike | None, out: str | os.PathLike) -> list[str]:
    """The files of SOURCE that an output named ``out`` could replace: ``out`` itself when it is an image or slide
    inside a SOURCE folder, the paths a SOURCE manifest lists."""
    if source is None:
        return []
    src, o = Path(source), Path(out)
    if src.is_dir():
        return [str(o)] if o.is_file() and o.name.lower().endswith(IMAGE_EXTS + WSI_EXTS) and inside(o, src) else []
    if src.suffix.lower() == ".csv" and src.is_file():
        try:
            listed = pd.read_csv(src, usecols=["path"], dtype=str)["path"].dropna()
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            return []  # a bad manifest is refused in its own words when it is read
        return [p if os.path.isabs(p) else os.path.join(os.path.dirname(os.path.abspath(src)), p) for p in listed]
    return []


def predict_slides(
    model_dir: str | os.PathLike,
    store: str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    pictures: str | os.PathLike | None = None,
    overwrite: bool = False,
    top_k: int = TOP_K,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A slide-level model on the bags of a store (mito.heads.predict_slides: slides.csv and slides.tiles.csv), and with
    ``pictures`` one PNG per bag: attention over the slide thumbnail (slide stores), else its top-k tiles."""
    if pictures is not None:  # before any work
        check_picture_dir(pictures, overwrite, protect=(store, model_dir))
        with open_store(store, "r") as s:
            check_pictures(pd.DataFrame(columns=s.tile_column_names))
    slides, tile_df = predict_slide_bags(model_dir, store, out_csv, overwrite)
    if pictures is not None:
        with open_store(store, "r") as s:
            tiles = s.tiles
        draw_pictures(slides, tile_df, tiles, pictures, overwrite, top_k)
    return slides, tile_df
