"""Tile sources: an ImageFolder directory, a CSV manifest, or a slide image with a points CSV.

Every source has a tile table (one row per tile: ``tile_id``, label/metadata columns, ``group``)
and reads a square region centred on a tile at a given field of view.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mito.datasets import amibr
from mito.extract.errors import ExtractError
from mito.extract.manifests import read_path_manifest
from mito.extract.slide_tiles import SlideOptions, read_views, slide_source

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SLIDE_EXTS = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf")


HIGH_BIT_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 16}  # PIL mode -> bits per sample
# (PIL opens 16-bit grey PNGs and TIFFs as I;16*, some versions as I; 16-bit RGB(A) it already reduces to 8 bits)


def to_uint8_rgb(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 from any PIL image: 16-bit grey scaled down by its bit depth (never clipped to white)."""
    bits = HIGH_BIT_MODES.get(im.mode)
    if bits is not None:
        a = np.asarray(im).astype(np.int64)
        a = np.clip(a, 0, (1 << bits) - 1) >> (bits - 8)
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        raise OSError("floating-point pixels (mode F); save it as 8- or 16-bit")
    return np.asarray(im.convert("RGB"))


def read_image(path: str) -> np.ndarray:
    """uint8 HxWx3 pixels of an image file; OSError (one line) for anything undecodable, a decompression bomb included."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, as an error
            with Image.open(path) as im:
                w, h = im.size
                limit = Image.MAX_IMAGE_PIXELS
                if limit and w * h > limit:
                    raise OSError(f"{w}x{h} pixels, more than PIL's decompression-bomb limit of {limit}")
                return to_uint8_rgb(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as e:
        raise OSError(f"unreadable image {safe_text(path)}: {e}") from None


def safe_text(s: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 (os.fsdecode's surrogates) become \\xNN escapes."""
    return os.fsencode(s).decode("utf-8", "backslashreplace")


def centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` pixels (or the whole image along a shorter axis)."""
    h, w = img.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return img[top : top + side, left : left + side]


@dataclass
class TileSource:
    """Tiles to embed: a table plus a reader of square regions centred on each tile."""

    kind: str  # folder | manifest | slides (whole slides or points on one, read by mito.wsi.reader)
    root: str
    tiles: pd.DataFrame
    tile_size: int | None = None  # points without --mpp: the tile side in level-0 pixels
    slides: Any = None  # kind "slides": {"opts": SlideOptions, "info": per-slide records, skipped slides, masks}
    fs_paths: dict[str, str] = field(default_factory=dict)  # table path -> the name on disk, where they differ (non-UTF-8 bytes)

    @property
    def has_context(self) -> bool:
        """True when pixels exist beyond the base tile (slides), so zooms below 1 are possible."""
        return self.kind == "slides"

    def __len__(self) -> int:
        return len(self.tiles)

    def read(self, i: int, context: float = 1.0) -> np.ndarray:
        """uint8 HxWx3 region centred on tile ``i``; ``context`` > 1 widens the field of view (slides only)."""
        if self.kind == "slides":
            return self.read_views(i, [1.0 / context])[0]
        if context > 1.0:
            raise ExtractError("zoom below 1 needs context around the tile: only slide sources have it")
        p = self.tiles["path"].iat[i]
        return read_image(self.fs_paths.get(p, p))

    def read_views(self, i: int, zooms: list[float]) -> list[np.ndarray]:
        """Kind "slides": one tile_px image per zoom, each read from the pyramid level that fits it."""
        return read_views(self, i, zooms)


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


def _folder(root: Path, task: str | None) -> tuple[pd.DataFrame, dict[str, str]]:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    rows = []
    fs_paths: dict[str, str] = {}

    def add(f: Path, tile_id: str, label: str | None) -> None:
        path = os.path.abspath(f)  # as the user gave it: a symlink stays a symlink
        shown = safe_text(path)
        if shown != path:
            fs_paths[shown] = path
        rows.append({"tile_id": safe_text(tile_id), "path": shown, "label": None if label is None else safe_text(label)})

    if subdirs:
        for d in subdirs:
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    add(f, f.relative_to(root).as_posix(), d.name)
    for f in sorted(root.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
            add(f, f.name, None)
    if not rows:
        raise ExtractError(f"no images ({', '.join(IMAGE_EXTS)}) in {safe_text(str(root))}")
    df = pd.DataFrame(rows)
    labelled = df["label"].notna().any()
    df = amibr.join_known_metadata(root, df)
    df = _finish(df, task, "label" if labelled else None) if labelled else _finish(df.drop(columns="label"), task, None)
    return df, fs_paths


def _manifest(csv_path: Path, task: str | None, label_column: str | None) -> pd.DataFrame:
    df, given = read_path_manifest(csv_path)
    df["tile_id"] = given
    label_col = label_column or ("label" if "label" in df else None)
    if label_column and label_column not in df:
        raise ExtractError(f"manifest {csv_path} has no column {label_column!r}")
    return _finish(df, task, label_col)


UNLABELLED = "(no label)"  # the stratum of tiles without a label in a stratified sample


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over strata in proportion to their sizes (largest remainder), every stratum at least one while
    ``total`` allows, none more than it holds."""
    n = sum(sizes.values())
    if total >= n:
        return dict(sizes)
    floor = {k: min(v, 1) for k, v in sizes.items()} if total >= len(sizes) else dict.fromkeys(sizes, 0)
    left = total - sum(floor.values())
    room = {k: sizes[k] - floor[k] for k in sizes}
    share = {k: left * room[k] / max(1, sum(room.values())) for k in sizes}
    out = {k: floor[k] + min(room[k], int(share[k])) for k in sizes}
    for k in sorted(sizes, key=lambda k: (-(share[k] - int(share[k])), k)):  # largest remainders first, then by name
        if sum(out.values()) >= total:
            break
        if out[k] < sizes[k]:
            out[k] += 1
    for k in sorted(sizes, key=lambda k: (-sizes[k], k)):  # what rounding left over goes where there is room
        while sum(out.values()) < total and out[k] < sizes[k]:
            out[k] += 1
    return out


def stratified_sample(
    tiles: pd.DataFrame, label_column: str | None, total: int | None = None, per_class: int | None = None, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A seeded random sample of tiles stratified by ``label_column``: ``total`` tiles in all (classes in proportion,
    each at least one while ``total`` allows) or ``per_class`` per class (all of a smaller class). Rows keep the
    source's order; returns the sample and its record (what the store's provenance keeps)."""
    if (total is None) == (per_class is None):
        raise ExtractError("give one of --sample N or --sample-per-class N")
    by = label_column if label_column is not None and label_column in tiles else None
    strata = (
        tiles[by].astype(object).map(lambda v: UNLABELLED if v is None or v != v else str(v))
        if by is not None
        else pd.Series("all", index=tiles.index)
    )
    groups = {k: np.flatnonzero((strata == k).to_numpy()) for k in sorted(strata.unique())}
    sizes = {k: len(v) for k, v in groups.items()}
    want = _allocate(sizes, int(total)) if total is not None else {k: min(v, int(per_class or 0)) for k, v in sizes.items()}
    rng = np.random.default_rng(seed)
    picked = [rows[rng.permutation(len(rows))[: want[k]]] for k, rows in groups.items()]  # strata in sorted order: reproducible
    keep = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    info = {
        "n": total,
        "per_class": per_class,
        "seed": int(seed),
        "by": by,
        "of": len(tiles),
        "size": len(keep),
        "counts": {k: int(want[k]) for k in groups if by is not None},
    }
    return tiles.iloc[keep], info


def describe_sample(info: dict[str, Any] | None) -> str:
    """How a store's sample was drawn, as the options that draw it again (``--sample 60 --seed 0``)."""
    if not info:
        return "every tile of SOURCE (no --sample)"
    opt = f"--sample {info['n']}" if info.get("n") is not None else f"--sample-per-class {info['per_class']}"
    return f"{opt} --seed {info['seed']}"


def sample_line(info: dict[str, Any]) -> str:
    """One line for the user: how many tiles of how many, stratified by what, which seed, per class."""
    by = f"stratified by {info['by']}" if info.get("by") else "at random (no label column)"
    counts = ", ".join(f"{k} {v}" for k, v in (info.get("counts") or {}).items())
    return f"{info.get('size')} of {info.get('of')} tiles, {by} (seed {info.get('seed')})" + (f": {counts}" if counts else "")


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
    if points is not None and slide_options is None:  # level-0 crops of tile_size px around each point
        if not p.is_file():
            raise ExtractError(f"--points needs a slide image, but {p} is a folder")
        if tile_size < 8:
            raise ExtractError("--tile-size must be at least 8 pixels")
        slide_options = SlideOptions(mpp=None, tile_px=tile_size)
    if slide_options is not None:
        pts_path = Path(points).expanduser() if points is not None else None
        if pts_path is not None and not pts_path.exists():
            raise ExtractError(f"no such points file: {pts_path}")
        if pts_path is not None and pts_path.is_dir():
            raise ExtractError(f"--points {pts_path} is a folder; give a CSV with x,y columns (level-0 pixel centres)")
        df, slides = slide_source(p, pts_path, task, slide_options, progress and pts_path is None)
        native = slide_options.mpp is None
        return TileSource("slides", str(p.resolve()), df, tile_size=tile_size if native else None, slides=slides)
    if p.is_dir():
        df, fs_paths = _folder(p, task)
        return TileSource("folder", safe_text(os.path.abspath(p)), df, fs_paths=fs_paths)
    if p.suffix.lower() == ".csv":
        return TileSource("manifest", os.path.abspath(p), _manifest(p, task, label_column))
    if p.name.lower().endswith(SLIDE_EXTS):
        raise ExtractError(f"{p.name} is a slide: tile it with --mpp M --tile-px P, or pass --points points.csv with x,y columns")
    raise ExtractError(f"cannot use {p} as a tile source: give a folder of images, a CSV manifest, or a slide with --points")
