"""Tile sources: an ImageFolder directory, a CSV manifest, or a slide image with a points CSV.

Every source has a tile table (one row per tile: ``tile_id``, label/metadata columns, ``group``)
and reads a square region centred on a tile at a given field of view.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mito.extract.errors import ExtractError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SLIDE_EXTS = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf")


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise OSError(f"unreadable image {path}: {e}") from None


def centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` pixels (or the whole image along a shorter axis)."""
    h, w = img.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return img[top : top + side, left : left + side]


@dataclass
class TileSource:
    """Tiles to embed: a table plus a reader of square regions centred on each tile."""

    kind: str  # folder | manifest | slide | slides (micron tiles of whole slides, mito.extract.slide_tiles)
    root: str
    tiles: pd.DataFrame
    tile_size: int | None = None  # slides: the base field of view in level-0 pixels
    slide_path: str | None = None
    slides: Any = None  # kind "slides": {"opts": SlideOptions, "info": per-slide records, skipped slides, masks}
    _slide: Any = field(default=None, repr=False)

    @property
    def has_context(self) -> bool:
        """True when pixels exist beyond the base tile (slides), so zooms below 1 are possible."""
        return self.kind in ("slide", "slides")

    def __len__(self) -> int:
        return len(self.tiles)

    def read(self, i: int, context: float = 1.0) -> np.ndarray:
        """uint8 HxWx3 region centred on tile ``i``; ``context`` > 1 widens the field of view (slides only)."""
        if self.kind == "slides":
            return self.read_views(i, [1.0 / context])[0]
        if self.kind == "slide":
            return self._read_slide(i, context)
        if context > 1.0:
            raise ExtractError("zoom below 1 needs context around the tile: only slide sources have it")
        return _read_image(self.tiles["path"].iat[i])

    def read_views(self, i: int, zooms: list[float]) -> list[np.ndarray]:
        """Kind "slides": one tile_px image per zoom, each read from the pyramid level that fits it."""
        from mito.extract.slide_tiles import read_views

        return read_views(self, i, zooms)

    def _read_slide(self, i: int, context: float) -> np.ndarray:
        if self._slide is None:  # opened lazily, once per DataLoader worker
            self._slide = _open_slide(self.slide_path or "")
        arr, (h, w) = self._slide
        side = int(round((self.tile_size or 224) * context))
        cx, cy = int(self.tiles["x"].iat[i]), int(self.tiles["y"].iat[i])
        x0, y0 = cx - side // 2, cy - side // 2
        out = np.full((side, side, 3), 255, np.uint8)  # outside the slide reads as white glass
        xs, ys = max(0, x0), max(0, y0)
        xe, ye = min(w, x0 + side), min(h, y0 + side)
        if xe > xs and ye > ys:
            region = np.asarray(arr[ys:ye, xs:xe])
            if region.ndim == 2:
                region = np.repeat(region[..., None], 3, axis=2)
            out[ys - y0 : ye - y0, xs - x0 : xe - x0] = region[..., :3]
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slide"] = None  # open handles do not cross process boundaries
        return state


def _open_slide(path: str) -> tuple[Any, tuple[int, int]]:
    """Level 0 of a (pyramidal) TIFF as a lazily read zarr array, never the whole slide in memory."""
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        arr = zarr.open(series.aszarr(level=0), mode="r")
    except Exception as e:  # tifffile raises many types for foreign files
        raise ExtractError(f"cannot read slide {path}: {str(e).splitlines()[0]}") from None
    shape = arr.shape
    if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
        raise ExtractError(f"{path}: planar (channel-first) slides are not supported")
    return arr, (int(shape[0]), int(shape[1]))


def slide_size(path: str) -> tuple[int, int]:
    """(height, width) of a slide's level 0."""
    return _open_slide(path)[1]


def _finish(df: pd.DataFrame, task: str | None, label_col: str | None) -> pd.DataFrame:
    if label_col is not None and label_col in df:
        name = task or "label"
        if name != label_col:
            if name in df:
                raise ExtractError(f"task name {name!r} clashes with an existing column")
            df = df.rename(columns={label_col: name})
    if "group" not in df:
        df["group"] = df["slide"] if "slide" in df else df["tile_id"]
    df["group"] = df["group"].astype(str)
    return df.reset_index(drop=True)


def _folder(root: Path, task: str | None) -> pd.DataFrame:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    rows = []
    if subdirs:
        for d in subdirs:
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    rows.append({"tile_id": f.relative_to(root).as_posix(), "path": str(f.resolve()), "label": d.name})
    for f in sorted(root.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
            rows.append({"tile_id": f.name, "path": str(f.resolve()), "label": None})
    if not rows:
        raise ExtractError(f"no images ({', '.join(IMAGE_EXTS)}) in {root}")
    df = pd.DataFrame(rows)
    labelled = df["label"].notna().any()
    df = _join_known_metadata(root, df)
    return _finish(df, task, "label" if labelled else None) if labelled else _finish(df.drop(columns="label"), task, None)


def _join_known_metadata(root: Path, df: pd.DataFrame) -> pd.DataFrame:
    """AMi-Br layout: join slide, dataset, expert labels and the published split from amibr_train_split.csv."""
    meta_csv = root / "amibr_train_split.csv"
    if not meta_csv.is_file():
        return df
    meta = pd.read_csv(meta_csv)
    meta = meta.drop(columns=[c for c in meta.columns if c.startswith("Unnamed")])
    meta["_stem"] = meta["dataset_uid"].astype(str).str.rsplit(".", n=1).str[0]
    meta = meta.rename(columns={"x": "slide_x", "y": "slide_y"}).drop(columns=["final_label", "dataset_uid", "uid"], errors="ignore")
    df["_stem"] = df["tile_id"].str.rsplit("/", n=1).str[-1].str.rsplit(".", n=1).str[0]
    df = df.merge(meta, on="_stem", how="left", validate="one_to_one")
    df["split"] = np.where(df["slide"].notna(), "train", "test")
    df["dataset"] = df["dataset"].fillna(df["_stem"].str.split("_").str[0])
    df["group"] = df["slide"].where(df["slide"].notna(), "unknown-slide:" + df["_stem"])
    for c in ("expert1_atypical", "expert2_atypical", "expert3_atypical", "majority_atypical"):
        if c in df:
            df[c] = df[c].astype("boolean")
    return df.drop(columns="_stem")


def _manifest(csv: Path, task: str | None, label_column: str | None) -> pd.DataFrame:
    try:
        df = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ExtractError(f"cannot parse manifest {csv}: {str(e).splitlines()[0]}") from None
    if "path" not in df:
        raise ExtractError(f"manifest {csv} needs a 'path' column (has: {', '.join(map(str, df.columns))})")
    if df.empty:
        raise ExtractError(f"manifest {csv} lists no tiles")
    base = csv.parent
    df["tile_id"] = df["path"].astype(str)
    df["path"] = [str((base / p).resolve()) if not os.path.isabs(p) else p for p in df["path"].astype(str)]
    label_col = label_column or ("label" if "label" in df else None)
    if label_column and label_column not in df:
        raise ExtractError(f"manifest {csv} has no column {label_column!r}")
    return _finish(df, task, label_col)


def _points(slide: Path, points: Path, task: str | None, tile_size: int) -> pd.DataFrame:
    try:
        df = pd.read_csv(points)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ExtractError(f"cannot parse points {points}: {str(e).splitlines()[0]}") from None
    if not {"x", "y"} <= set(df.columns):
        raise ExtractError(f"points file {points} needs x and y columns (has: {', '.join(map(str, df.columns))})")
    if df.empty:
        raise ExtractError(f"points file {points} lists no points")
    if not (pd.api.types.is_numeric_dtype(df["x"]) and pd.api.types.is_numeric_dtype(df["y"])):
        raise ExtractError(f"x and y in {points} must be numbers")
    h, w = slide_size(str(slide))
    outside = (df["x"] < 0) | (df["y"] < 0) | (df["x"] >= w) | (df["y"] >= h)
    if outside.any():
        r = df[outside].iloc[0]
        raise ExtractError(f"point ({r['x']}, {r['y']}) lies outside the {w}x{h} slide {slide.name}")
    df["x"] = df["x"].round().astype(np.int64)
    df["y"] = df["y"].round().astype(np.int64)
    df.insert(0, "tile_id", [f"{slide.name}:{x}:{y}" for x, y in zip(df["x"], df["y"])])
    if "slide" not in df:
        df["slide"] = slide.name
    return _finish(df, task, "label" if "label" in df else None)


def open_source(
    path: str | os.PathLike,
    points: str | os.PathLike | None = None,
    task: str | None = None,
    tile_size: int = 224,
    label_column: str | None = None,
    slide_options: Any = None,
    progress: bool = True,
) -> TileSource:
    """Open a folder (ImageFolder layout: label = subfolder), a CSV manifest, or a slide with a points CSV;
    with ``slide_options`` (tiles in microns) a slide, folder of slides or slide manifest."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ExtractError(f"no such file or folder: {p}")
    if slide_options is not None:
        from mito.extract.slide_tiles import slide_source

        pts_path = Path(points).expanduser() if points is not None else None
        if pts_path is not None and not pts_path.is_file():
            raise ExtractError(f"no such points file: {pts_path}")
        df, slides = slide_source(p, pts_path, task, slide_options, progress)
        return TileSource("slides", str(p.resolve()), df, slides=slides)
    if points is not None:
        pts = Path(points).expanduser()
        if not pts.is_file():
            raise ExtractError(f"no such points file: {pts}")
        if not p.is_file():
            raise ExtractError(f"--points needs a slide image, but {p} is a folder")
        if tile_size < 8:
            raise ExtractError("--tile-size must be at least 8 pixels")
        df = _points(p, pts, task, tile_size)
        return TileSource("slide", str(p.resolve()), df, tile_size=tile_size, slide_path=str(p.resolve()))
    if p.is_dir():
        return TileSource("folder", str(p.resolve()), _folder(p, task))
    if p.suffix.lower() == ".csv":
        return TileSource("manifest", str(p.resolve()), _manifest(p, task, label_column))
    if p.name.lower().endswith(SLIDE_EXTS):
        raise ExtractError(f"{p.name} is a slide: tile it with --mpp M --tile-px P, or pass --points points.csv with x,y columns")
    raise ExtractError(f"cannot use {p} as a tile source: give a folder of images, a CSV manifest, or a slide with --points")
