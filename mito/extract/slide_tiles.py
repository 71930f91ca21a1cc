"""Slides as a dataset: a micron-defined tile grid over tissue (or points), annotations and context views.

A grid tile is kept when at least ``min_tissue`` of the tissue-mask pixels under its box are tissue (the mask:
mito.wsi.tissue).
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.core.io import json_default, write_json
from mito.core.progress import add_task, progress_bar
from mito.core.resources import available_memory
from mito.extract.errors import ExtractError
from mito.extract.manifests import read_path_manifest, read_points
from mito.wsi.reader import (
    WSI_EXTS,
    Slide,
    SlideReadError,
    best_level,
    close_slide,
    open_slide,
    outside_fraction,
    read_box,
    resolve_mpp,
    slide_file_stems,
    stem,
    thumbnail,
)
from mito.wsi.tissue import mask_downsample, mask_geojson, tissue_fraction, tissue_mask

MAX_TILE_PX = 16384  # as ExtractConfig's tile_size
OPEN_SLIDES = 4  # handles kept open per DataLoader worker
MAX_UPSAMPLE = 4.0  # --mpp may be at most this many times finer than a slide's level 0 (beyond: tiles of blur)
MAX_GRID = 1 << 22  # grid positions planned per slide (~100 bytes each while the tissue is measured)


@dataclass(frozen=True)
class SlideOptions:
    """How slides become tiles: size in microns, grid, tissue threshold, reader, overrides, annotations.

    ``mpp=None`` (``--points`` without ``--mpp``): a tile is ``tile_px`` level-0 pixels, read at level 0 as they are."""

    mpp: float | None
    tile_px: int
    zooms: tuple[float, ...] = (1.0,)
    stride_px: int | None = None  # at ``mpp``; default: tile_px (no overlap)
    min_tissue: float = 0.5
    slide_mpp: float | None = None
    reader: str = "auto"
    annotations: str | None = None
    label_overlap: float | None = None

    def scale(self, slide_mpp: float) -> float:
        """Level-0 pixels per output pixel on a slide of ``slide_mpp`` um/px (1 for native level-0 tiles)."""
        return 1.0 if self.mpp is None else self.mpp / slide_mpp

    @property
    def stride(self) -> int:
        """Grid step in output pixels."""
        return self.stride_px or self.tile_px


def options_from(
    mpp: float | None, tile_px: int | None, tile_um: float | None, zooms: list[float], workers: int = 1, **kw: Any
) -> SlideOptions | None:
    """SlideOptions from the extract options, or None when no micron tiling was asked for.

    The tile and its widest context view (tile_px / min zoom, RGB, once per decoding worker) must fit in memory."""
    if mpp is None and tile_um is None:
        given = _slide_only_options(tile_px, kw)
        if given:
            raise ExtractError(f"{', '.join(given)} tile whole slides: also give --mpp M (or --tile-um U)")
        return None
    if kw.get("annotations") is not None and not Path(kw["annotations"]).expanduser().exists():
        raise ExtractError(f"no such annotations file or folder: {kw['annotations']}")
    if kw.get("label_overlap") is not None and kw.get("annotations") is None:
        raise ExtractError("--label-overlap needs --annotations")
    mpp, tile_px = _micron_tile(mpp, tile_px, tile_um)
    if tile_px < 8:
        raise ExtractError("--tile-px must be at least 8 pixels")
    if tile_px > MAX_TILE_PX:
        raise ExtractError(
            f"a tile of {tile_px} px at {mpp:g} um/px is more than {MAX_TILE_PX} px: use a larger --mpp or a smaller --tile-um/--tile-px"
        )
    check_view_memory(tile_px, zooms, workers)
    return SlideOptions(mpp=float(mpp), tile_px=int(tile_px), zooms=tuple(zooms), **kw)


def _slide_only_options(tile_px: int | None, kw: dict[str, Any]) -> list[str]:
    """The options given that only tile whole slides (refused without --mpp or --tile-um)."""
    given = [
        n
        for n, v in (
            ("--tile-px", tile_px),
            ("--stride", kw.get("stride_px")),
            ("--slide-mpp", kw.get("slide_mpp")),
            ("--annotations", kw.get("annotations")),
            ("--label-overlap", kw.get("label_overlap")),
        )
        if v is not None
    ]
    return given + [
        n for n, v, d in (("--min-tissue", kw.get("min_tissue"), 0.5), ("--reader", kw.get("reader"), "auto")) if v not in (None, d)
    ]


def _micron_tile(mpp: float | None, tile_px: int | None, tile_um: float | None) -> tuple[float, int]:
    """(um/px, tile pixels) from two of --mpp, --tile-px and --tile-um (tile_px 224 when only one is given)."""
    if tile_um is not None and mpp is not None:
        if tile_px is not None:
            raise ExtractError("give two of --mpp, --tile-px and --tile-um, not all three")
        tile_px = max(1, round(tile_um / mpp))
    elif tile_um is not None:
        tile_px = tile_px or 224
        mpp = tile_um / tile_px
    assert mpp is not None
    return mpp, tile_px or 224


def check_view_memory(tile_px: int, zooms: list[float], workers: int = 1) -> None:
    """Refuse a widest view (tile_px / min zoom, RGB uint8, one per worker) that needs more than half the free memory."""

    free = available_memory()
    side = math.ceil(tile_px / min([*zooms, 1.0]))
    need = side * side * 3 * max(1, workers)
    if free is not None and need > free // 2:
        raise ExtractError(
            f"a {side} x {side} px view (tile {tile_px} px at zoom {min([*zooms, 1.0]):g}) x {max(1, workers)} worker(s) needs "
            f"{need / 2**30:.1f} GiB, more than half the {free / 2**30:.1f} GiB available: use smaller tiles or zooms nearer 1"
        )


# ---------------------------------------------------------------- annotations


@dataclass
class Region:
    """One annotated region: its class and polygons (each a list of rings, the first the outline)."""

    label: str
    polygons: list[list[np.ndarray]]

    def contains(self, pts: np.ndarray) -> np.ndarray:
        """Which (N x 2) level-0 points lie inside (inside an outline and outside its holes)."""
        from matplotlib.path import Path as MplPath

        inside = np.zeros(len(pts), bool)
        for rings in self.polygons:
            if len(rings[0]) < 3:
                continue
            hit = MplPath(rings[0]).contains_points(pts)
            for hole in rings[1:]:
                if len(hole) >= 3:
                    hit &= ~MplPath(hole).contains_points(pts)
            inside |= hit
        return inside


def load_regions(path: Path) -> list[Region]:
    """Polygon / MultiPolygon features with ``classification.name`` from a QuPath GeoJSON export (other geometries
    and unclassified features are ignored); anything malformed is refused in one line naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))  # QuPath on Windows may write a byte-order mark
    except RecursionError:
        raise ExtractError(f"cannot read annotations {path}: JSON nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExtractError(f"cannot read annotations {path}: {str(e).splitlines()[0]}") from None
    feats = doc.get("features", [doc]) if isinstance(doc, dict) else doc
    if not isinstance(feats, list):
        raise ExtractError(f"annotations {path}: 'features' must be a list of GeoJSON features")
    return [r for n, f in enumerate(feats) if (r := _region(path, n, f)) is not None]


def _region(path: Path, n: int, f: Any) -> Region | None:
    """Feature ``n`` as a Region; None when it is not a classified Polygon / MultiPolygon."""
    if not isinstance(f, dict):
        return None
    geom, props = f.get("geometry") or {}, f.get("properties") or {}
    if not isinstance(geom, dict) or not isinstance(props, dict):
        raise ExtractError(f"annotations {path}: feature {n} has a 'geometry' or 'properties' that is not a JSON object")
    cls = props.get("classification") or {}
    label = cls.get("name") if isinstance(cls, dict) else None
    if not label:
        return None
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind not in ("Polygon", "MultiPolygon"):
        return None
    polys = [coords] if kind == "Polygon" else coords
    try:
        return Region(str(label), _polygons(polys))
    except (ValueError, IndexError, TypeError):
        raise ExtractError(f"annotations {path}: a {kind} of class {label!r} (feature {n}) has malformed or empty coordinates") from None


def _polygons(polys: Any) -> list[list[np.ndarray]]:
    """GeoJSON polygon coordinates as rings of [x, y] points; ValueError (or IndexError, TypeError) when malformed."""
    if not isinstance(polys, list) or not polys or not all(isinstance(p, list) and p for p in polys):
        raise ValueError("no coordinates")
    rings = [[np.asarray(r, np.float64) for r in p] for p in polys]
    if any(r.ndim != 2 or r.shape[1] < 2 or len(r) == 0 or not np.isfinite(r).all() for p in rings for r in p):
        raise ValueError("not a list of finite [x, y] points")
    return [[r[:, :2] for r in p] for p in rings]


def annotation_file(annotations: str, slide_name: str, n_slides: int) -> Path | None:
    """The GeoJSON for a slide: <stem>.geojson/.json in a folder, or the one file (by stem, or for a single slide)."""
    a = Path(annotations).expanduser()
    s = stem(slide_name)
    if a.is_dir():
        for ext in (".geojson", ".json"):
            if (a / f"{s}{ext}").is_file():
                return a / f"{s}{ext}"
        return None
    return a if (stem(a.name) == s or n_slides == 1) else None


def label_tiles(regions: list[Region], boxes: np.ndarray, samples: int = 8) -> tuple[list[str | None], np.ndarray]:
    """Per tile: the class of the first region holding its centre (or None) and the share of the tile it covers
    (measured on a samples x samples grid of points)."""
    n = len(boxes)
    labels: list[str | None] = [None] * n
    cover = np.zeros(n)
    if not regions or n == 0:
        return labels, cover
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    owner = np.full(n, -1)
    for k, r in enumerate(regions):
        free = owner < 0
        if free.any():
            hit = r.contains(centres[free])
            owner[np.flatnonzero(free)[hit]] = k
    f = (np.arange(samples) + 0.5) / samples
    gx, gy = np.meshgrid(f, f)
    for k in np.unique(owner[owner >= 0]):
        sel = np.flatnonzero(owner == k)
        b = boxes[sel]
        px = b[:, None, 0] + gx.ravel()[None] * (b[:, None, 2] - b[:, None, 0])
        py = b[:, None, 1] + gy.ravel()[None] * (b[:, None, 3] - b[:, None, 1])
        inside = regions[k].contains(np.stack([px.ravel(), py.ravel()], axis=1)).reshape(len(sel), -1)
        cover[sel] = inside.mean(axis=1)
        for i in sel:
            labels[i] = regions[k].label
    return labels, cover


# ---------------------------------------------------------------- the dataset


def list_slides(path: Path) -> pd.DataFrame:
    """One row per slide (path + any manifest columns) from a slide file, a folder of slides or a slide manifest CSV;
    two slides with one file name are refused (the name is the slide's id in tile ids, masks and exports)."""
    df = _list_slides(path)
    seen: dict[str, str] = {}
    for p in df["path"]:
        name = Path(p).name
        if name in seen:
            raise ExtractError(f"two slides are named {name}: {seen[name]} and {p}; rename one (a slide's file name is its id)")
        seen[name] = p
    return df


def _list_slides(path: Path) -> pd.DataFrame:
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(WSI_EXTS) and not f.name.startswith("."))
        if not files:
            raise ExtractError(f"no slides ({', '.join(WSI_EXTS)}) in {path}")
        return pd.DataFrame({"path": [os.path.abspath(f) for f in files]})
    if path.suffix.lower() == ".csv":
        df, _ = read_path_manifest(path, "slide manifest", "slides")
        if "mpp" in df and not pd.api.types.is_numeric_dtype(df["mpp"]):
            raise ExtractError(f"the mpp column of {path} must hold numbers (empty where the slide knows its own)")
        return df.reset_index(drop=True)
    return pd.DataFrame({"path": [os.path.abspath(path)]})


def _boxes_for(slide: Slide, opts: SlideOptions, smpp: float, centres: np.ndarray | None) -> np.ndarray:
    side0 = opts.tile_px * opts.scale(smpp)
    if centres is not None and opts.mpp is None:  # level-0 crops on whole pixels: x - side // 2 ... as the points say
        x0, y0 = centres[:, 0] - opts.tile_px // 2, centres[:, 1] - opts.tile_px // 2
        return np.stack([x0, y0, x0 + opts.tile_px, y0 + opts.tile_px], axis=1)
    if centres is not None:
        return np.stack(
            [centres[:, 0] - side0 / 2, centres[:, 1] - side0 / 2, centres[:, 0] + side0 / 2, centres[:, 1] + side0 / 2], axis=1
        )
    step0 = opts.stride * opts.scale(smpp)
    W, H = slide.dimensions
    nx, ny = math.floor((W - side0) / step0) + 1, math.floor((H - side0) / step0) + 1
    if nx < 1 or ny < 1:
        return np.zeros((0, 4))
    if nx * ny > MAX_GRID:
        raise ExtractError(
            f"{slide.name}: --mpp {opts.mpp:g} with {opts.stride} px steps plans {nx * ny:,} grid tiles on its {W}x{H} px "
            f"(more than {MAX_GRID:,}, about {nx * ny * 100 / 2**30:.1f} GiB to plan): use a coarser --mpp, larger tiles or a larger --stride"
        )
    gx, gy = np.meshgrid(np.arange(nx) * step0, np.arange(ny) * step0)  # row-major: tiles ordered top to bottom
    x0, y0 = gx.ravel(), gy.ravel()
    return np.stack([x0, y0, x0 + side0, y0 + side0], axis=1)


def slide_tiles(
    slide: Slide, opts: SlideOptions, smpp: float, centres: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any] | None]:
    """(tile table, slide record, tissue GeoJSON) of one open slide: the tissue grid, or boxes at given centres.
    ``progress(done, total)`` follows the thumbnail's reading when that reads a whole level (a slide without a pyramid)."""
    boxes = _boxes_for(slide, opts, smpp, centres)
    side0 = opts.tile_px * opts.scale(smpp)
    geo = None
    record: dict[str, Any] = {
        "slide": slide.name,
        "path": slide.path,
        "reader": slide.reader,
        "mpp": smpp if math.isfinite(smpp) else None,
        "mpp_recorded": slide.mpp,
        "dimensions": list(slide.dimensions),
        "level_downsamples": slide.level_downsamples,
        "tile_side_level0": side0,
    }
    if centres is None:
        ds = mask_downsample(slide, side0)
        mask = tissue_mask(thumbnail(slide, ds, progress=progress))
        geo = mask_geojson(mask, ds, slide.name)
        frac = tissue_fraction(mask, ds, boxes)
        keep = frac >= opts.min_tissue
        boxes, frac = boxes[keep], frac[keep]
        record.update(mask_downsample=ds, tissue_fraction=float(mask.mean()))
    else:
        frac = np.full(len(boxes), np.nan)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    level = best_level(slide, opts.scale(smpp))
    df = pd.DataFrame(
        {
            "slide": slide.name,
            "slide_path": slide.path,
            "x": np.floor(cx).astype(np.int64),
            "y": np.floor(cy).astype(np.int64),
            "x0": boxes[:, 0],
            "y0": boxes[:, 1],
            "x1": boxes[:, 2],
            "y1": boxes[:, 3],
            "level": np.int64(level),
            "source_mpp": smpp * slide.level_downsamples[level],
            "slide_mpp": smpp,
            "tissue": frac,
        }
    )
    for z in opts.zooms:
        if z == 1.0:
            continue
        zl = best_level(slide, opts.scale(smpp) / z)
        df[f"level_z{z:g}"] = np.int64(zl)
    for z in sorted(set(opts.zooms) | {1.0}):
        half = side0 / z / 2
        df[f"outside_z{z:g}"] = [outside_fraction(slide, (x - half, y - half, x + half, y + half)) for x, y in zip(cx, cy)]
    df.insert(0, "tile_id", [f"{slide.name}:{x}:{y}" for x, y in zip(df["x"], df["y"])])
    record["n_tiles"] = len(df)
    return df, record, geo


class _TissueLine:
    """'  tissue <slide>' with the level rows read so far, for slides whose tissue detection reads a whole level (no
    pyramid): under the slides' bar, or in a bar of its own started on the first update (nothing is drawn otherwise)."""

    def __init__(self, bar: Any, enabled: bool) -> None:
        self.bar, self.enabled = bar, enabled
        self.own: Any = None  # the bar of its own, once started
        self.task: Any = None

    def for_slide(self, name: str) -> Callable[[int, int], None] | None:
        import time

        if not self.enabled:
            return None
        t0 = time.perf_counter()

        def update(done: int, total: int) -> None:
            if self.bar is None:
                self.own = self.bar = progress_bar("rows")
                self.own.start()
            if self.task is None:
                self.task = add_task(self.bar, "", total)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            self.bar.update(self.task, completed=done, total=total, description=f"  tissue {name}", rate=f"{rate:.0f}", refresh=True)

        return update

    def __enter__(self) -> _TissueLine:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.own is not None:
            self.own.stop()


def build_slide_table(
    path: Path, opts: SlideOptions, points: pd.DataFrame | None = None, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tile table of every readable slide, and what to record: per-slide records, skipped slides, masks."""

    slides = list_slides(path)
    if points is not None and len(slides) != 1:
        raise ExtractError("--points needs a single slide as SOURCE")
    extra = [c for c in slides.columns if c not in ("path", "mpp")]
    parts, records, skipped, masks, notes = [], [], [], {}, []
    with (
        progress_bar("slides", enabled=progress and len(slides) > 1) as bar,
        _TissueLine(bar if len(slides) > 1 else None, progress) as tissue,
    ):
        task = bar.add_task("tissue + grid", total=len(slides), rate="-", info="")
        for _, row in slides.iterrows():
            p = str(row["path"])
            given = _manifest_mpp(row)
            try:
                slide = open_slide(p, opts.reader)
            except SlideReadError as e:
                skipped.append({"slide": Path(p).name, "path": p, "reason": str(e)})
                bar.update(task, advance=1)
                continue
            try:
                smpp, mpp_from, note = _slide_mpp(slide, opts, given)
                df, rec, geo = slide_tiles(slide, opts, smpp, _point_centres(slide, opts, points), progress=tissue.for_slide(slide.name))
                if points is not None:
                    keep = [c for c in points.columns if c not in ("x", "y") and c not in df]
                    df = pd.concat([df, points[keep].reset_index(drop=True)], axis=1)
                    df["tile_id"] = df["tile_id"] + [f"#{i}" if d else "" for i, d in enumerate(df["tile_id"].duplicated(keep=False))]
            except SlideReadError as e:
                skipped.append({"slide": slide.name, "path": p, "reason": str(e)})
                bar.update(task, advance=1)
                continue
            finally:
                close_slide(slide)
            df = _slide_columns(df, opts, slide.name, len(slides), {c: row[c] for c in extra})
            rec["n_tiles"] = len(df)
            rec["mpp_from"] = mpp_from
            if note:
                notes.append(note)
            parts.append(df)
            records.append(rec)
            if geo is not None:
                masks[slide.name] = geo
            bar.update(task, advance=1)
    if not parts:
        reasons = "; ".join(f"{s['reason']}" for s in skipped[:3])
        raise ExtractError(f"no slide in {path} could be tiled: {reasons}")
    tiles = pd.concat(parts, ignore_index=True)
    if tiles.empty:
        raise ExtractError(f"no tiles on tissue in {path}: lower --min-tissue (now {opts.min_tissue:g}) or check the slides")
    info = {"options": asdict(opts), "slides": records, "skipped": skipped, "masks": masks, "notes": notes}
    return tiles, info


def _manifest_mpp(row: pd.Series) -> float | None:
    """The um/px a slide manifest gives for a slide (None: none given)."""
    given = row.get("mpp") if "mpp" in row.index else None
    return float(given) if given is not None and pd.notna(given) else None


def _slide_mpp(slide: Slide, opts: SlideOptions, given: float | None) -> tuple[float, str | None, str | None]:
    """(the slide's um/px, where it came from, a note); NaN for level-0 crops of a slide that does not say.
    Refuses a --mpp more than MAX_UPSAMPLE times finer than the slide."""
    if opts.mpp is not None:
        smpp, mpp_from, note = resolve_mpp(slide, opts.slide_mpp, given)
    else:  # level-0 crops: the mpp is only recorded
        try:
            smpp, mpp_from, note = resolve_mpp(slide, opts.slide_mpp, given)
        except SlideReadError:
            smpp, mpp_from, note = math.nan, None, None
    if opts.mpp is not None and opts.mpp * MAX_UPSAMPLE < smpp * (1 - 1e-9):
        raise ExtractError(
            f"--mpp {opts.mpp:g} is {smpp / opts.mpp:.3g}x finer than {slide.name}'s level 0 ({smpp:g} um/px): "
            f"each {opts.tile_px} px tile would be blown up from {opts.tile_px * opts.mpp / smpp:.2g} level-0 px; use --mpp {smpp / MAX_UPSAMPLE:g} "
            f"or coarser (at most {MAX_UPSAMPLE:g}x finer than a slide)"
        )
    return smpp, mpp_from, note


def _point_centres(slide: Slide, opts: SlideOptions, points: pd.DataFrame | None) -> np.ndarray | None:
    """The --points as level-0 centres (whole pixels for level-0 crops); refuses one outside the slide."""
    if points is None:
        return None
    centres = points[["x", "y"]].to_numpy(np.float64)
    if opts.mpp is None:
        centres = np.round(centres)
    W, H = slide.dimensions
    out = (centres[:, 0] < 0) | (centres[:, 1] < 0) | (centres[:, 0] >= W) | (centres[:, 1] >= H)
    if out.any():
        x, y = centres[np.argmax(out)]
        raise ExtractError(f"point ({x:g}, {y:g}) lies outside the {W}x{H} slide {slide.name}")
    return centres


def _slide_columns(df: pd.DataFrame, opts: SlideOptions, name: str, n_slides: int, given: dict[str, Any]) -> pd.DataFrame:
    """A slide's tiles with their annotation labels, the manifest's columns for the slide, and a group per patient."""
    if opts.annotations is not None:
        df = _annotate(df, opts, name, n_slides)
    for c, v in given.items():
        df[c if not (c == "label" and "label" in df) else "slide_label"] = v
    if "patient" in df and "group" not in df:
        df["group"] = df["patient"].astype(str)
    return df


def _annotate(df: pd.DataFrame, opts: SlideOptions, name: str, n_slides: int) -> pd.DataFrame:
    assert opts.annotations is not None
    f = annotation_file(opts.annotations, name, n_slides)
    regions = load_regions(f) if f is not None else []
    labels, cover = label_tiles(regions, df[["x0", "y0", "x1", "y1"]].to_numpy())
    if "label" in df:
        df = df.rename(columns={"label": "point_label"})
    df["label"] = pd.Series(labels, dtype=object)
    df["label_cover"] = cover
    if opts.label_overlap is not None:  # labelled tiles that their region covers too little are ambiguous
        df = df[df["label"].isna() | (df["label_cover"] >= opts.label_overlap)].reset_index(drop=True)
    return df


# ---------------------------------------------------------------- reading in workers


_HANDLES: OrderedDict[tuple[int, str, str], Slide] = OrderedDict()  # per process: (pid, path, reader) -> open slide


def slide_handle(path: str, reader: str) -> Slide:
    """An open slide for this process (DataLoader worker), kept among the last OPEN_SLIDES used.

    Keyed by process id: a forked worker never reuses a handle (and file offset) of its parent."""
    key = (os.getpid(), path, reader)
    slide = _HANDLES.get(key)
    if slide is None:
        slide = open_slide(path, reader)
        _HANDLES[key] = slide
        mine = [k for k in _HANDLES if k[0] == key[0]]
        for old in mine[: max(0, len(mine) - OPEN_SLIDES)]:
            close_slide(_HANDLES.pop(old))
    _HANDLES.move_to_end(key)
    return slide


def close_handles() -> None:
    """Close the slides this process keeps open (call at the end of a run; workers' handles die with them)."""
    pid = os.getpid()
    for key in [k for k in _HANDLES if k[0] == pid]:
        close_slide(_HANDLES.pop(key))


def read_views(source: Any, i: int, zooms: list[float]) -> list[np.ndarray]:
    """One tile_px x tile_px image per zoom for tile ``i``: zoom z covers 1/z of the tile's side around its centre,
    read from the level that fits that resolution (z < 1: real context). A view holding fewer level-0 pixels than
    tile_px (z > 1 on native level-0 tiles) is read at its own size, never upsampled: the backbone's resize is the
    only resampling, as for a crop. Handles stay open per worker."""
    opts: SlideOptions = source.slides["opts"]
    t = source.tiles
    slide = slide_handle(str(t["slide_path"].iat[i]), opts.reader)
    x0, y0, x1, y1 = (float(t[c].iat[i]) for c in ("x0", "y0", "x1", "y1"))
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    out: dict[float, np.ndarray] = {}
    try:
        for z in zooms:
            if z not in out:
                h = half / z
                side = max(1, min(opts.tile_px, round(2 * h)))
                out[z], _ = read_box(slide, (cx - h, cy - h, cx + h, cy + h), side)
    except SlideReadError:  # OpenSlide handles stay in an error state: the next tile reopens the slide
        key = (os.getpid(), str(t["slide_path"].iat[i]), opts.reader)
        if _HANDLES.get(key) is slide:
            close_slide(_HANDLES.pop(key))
        raise
    return [out[z] for z in zooms]


def slide_source(
    path: Path, points: Path | None, task: str | None, opts: SlideOptions, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(tile table, {"opts", "info"}) for a slide dataset, or for one slide with a points CSV of level-0 centres."""
    pts = None
    if points is not None:
        if path.is_dir() or path.suffix.lower() == ".csv":
            raise ExtractError(f"--points needs a slide image, but {path} is a folder or manifest")
        pts = read_points(points)
    tiles, info = build_slide_table(path, opts, pts, progress)
    if "label" in tiles and task and task != "label":
        if task in tiles:
            raise ExtractError(f"task name {task!r} clashes with an existing column")
        tiles = tiles.rename(columns={"label": task})
    if "group" not in tiles:
        tiles["group"] = tiles["slide"]
    tiles["group"] = tiles["group"].astype(str)
    return tiles, {"opts": opts, "info": info}


def slide_tiling(opts: SlideOptions) -> dict[str, Any]:
    """What makes slide features comparable (recorded per variant; a model refuses a store tiled otherwise)."""
    return {"mpp": opts.mpp, "tile_px": opts.tile_px}


MASK_SUFFIX = ".tissue.geojson"


def record_slides(store: Any, store_path: str, info: dict[str, Any]) -> None:
    """Write the per-slide records and skipped slides into the store, and each tissue mask as GeoJSON beside it
    (<store>.slides/<slide>.tissue.geojson; slides whose names collide get distinct files, see slide_file_stems)."""

    now = {r["slide"] for r in info["slides"]}
    held = set(store.tiles["slide"]) if "slide" in store.tiles else set()
    kept = [
        dict(r, in_source=False)
        for r in (store.meta.get("slides") or {}).get("slides", [])  # slides no longer in
        if r.get("slide") not in now and r.get("slide") in held
    ]  # SOURCE keep their rows, record and mask file
    taken = [Path(r["mask_geojson"]).name.removesuffix(MASK_SUFFIX) for r in kept if r.get("mask_geojson")]
    stems = slide_file_stems(sorted(info["masks"]), taken=taken)
    mask_dir = None
    if info["masks"] and "://" not in store_path:
        mask_dir = Path(f"{str(store_path).rstrip('/')}.slides")
        mask_dir.mkdir(parents=True, exist_ok=True)
        for name, geo in info["masks"].items():
            write_json(mask_dir / f"{stems[name]}{MASK_SUFFIX}", geo, indent=0)
    slides = [
        dict(r, mask_geojson=str(mask_dir / f"{stems[r['slide']]}{MASK_SUFFIX}") if mask_dir and r["slide"] in info["masks"] else None)
        for r in info["slides"]
    ]
    slides += kept
    doc = json.loads(json.dumps({"options": info["options"], "slides": slides, "skipped": info["skipped"]}, default=json_default))
    if store.meta.get("slides") != doc:  # a no-op re-run leaves the store alone (an HDF5 record rewrites the file)
        store.record("slides", doc)
