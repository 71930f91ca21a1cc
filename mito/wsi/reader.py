"""Whole-slide images: one small reader interface (OpenSlide, tifffile fallback) and tiles defined in microns.

A tile is ``tile_px`` x ``tile_px`` pixels at ``mpp`` micrometres per pixel. Its box in level-0 pixels is
``tile_px * mpp / slide_mpp`` wide; it is read from the pyramid level whose resolution is the nearest at
least as fine as ``mpp`` and resampled exactly (fractional box, Lanczos, so antialiased) to ``tile_px``.
Nothing is ever rounded to an objective power, and no reader loads a whole level.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from mito.core.interrupts import guard_zarr_exit
from mito.core.io import unique_stems

Reader = Literal["auto", "openslide", "tifffile"]
READERS: tuple[str, ...] = get_args(Reader)
OPENSLIDE_EXTS = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
TIFF_EXTS = (".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff", ".ome.btf")
WSI_EXTS = OPENSLIDE_EXTS + TIFF_EXTS
MPP_RANGE = (0.05, 50.0)  # um/px a slide can plausibly have; outside it the metadata is wrong


class SlideReadError(OSError):
    """A slide that cannot be opened or read (an OSError, so a tile read failure marks the tile unreadable)."""


@dataclass
class Slide:
    """An open slide: level-0 size, pyramid geometry, microns per pixel and the reader's handle."""

    path: str
    reader: str  # openslide | tifffile
    level_dimensions: list[tuple[int, int]]  # (width, height) per level
    level_downsamples: list[float]
    mpp: float | None
    handle: Any = field(default=None, repr=False)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def name(self) -> str:
        """File name, the slide's id in tile tables."""
        return Path(self.path).name


def stem(name: str) -> str:
    """A slide's file name without its (double) extension: a.svs -> a, b.ome.tif -> b."""
    low = name.lower()
    for ext in (".ome.tiff", ".ome.tif", ".ome.btf"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0]


def slide_file_stems(ids: Any, keep_extension: bool = True, taken: Any = ()) -> dict[str, str]:
    """Distinct, safe file stems for slide ids (file names), the one naming rule of every per-slide output (QC
    pictures, heatmaps, tissue masks: the whole name, a.svs -> a.svs; exports: without the extension, a.svs -> a).
    Names that collide (x.svs and x.ome.tif, 'a b.svs' and a_b.svs) are told apart (see mito.core.io.unique_stems)."""
    return unique_stems(list(ids), None if keep_extension else stem, taken)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _is_ome(path: str) -> bool:
    return path.lower().endswith((".ome.tif", ".ome.tiff", ".ome.btf"))


@contextlib.contextmanager
def _quiet_tifffile() -> Any:
    """tifffile logs what it recovers from (a broken OME series, odd tags) straight to the terminal; mito reports
    what matters about a slide in one line, so those records are dropped while a slide is opened."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def open_slide(path: str | os.PathLike, reader: str = "auto") -> Slide:
    """Open a slide with OpenSlide, or tifffile for OME-TIFF / pyramidal TIFFs OpenSlide does not take."""
    p = str(path)
    if reader not in READERS:
        raise SlideReadError(f"--reader must be one of {', '.join(READERS)}, got {reader!r}")
    if not os.path.isfile(p):
        raise SlideReadError(f"no such slide file: {p}")
    if reader == "openslide" or (reader == "auto" and not _is_ome(p) and _openslide_format(p)):
        slide = _open_openslide(p)
        if slide.mpp is None and reader == "auto" and p.lower().endswith(TIFF_EXTS):
            with contextlib.suppress(Exception), _quiet_tifffile():  # a generic TIFF: tifffile also reads OME-XML and resolution tags
                slide.mpp = _tiff_mpp(p)
        return slide
    with _quiet_tifffile():
        return _open_tifffile(p)


def _openslide_format(path: str) -> str | None:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(path)
    except Exception:  # no OpenSlide library, or a file it chokes on: tifffile gets its chance
        return None


def _open_openslide(path: str) -> Slide:
    try:
        import openslide
    except ImportError as e:
        raise SlideReadError(f"OpenSlide is not installed ({_first_line(e)}): pip install openslide-python openslide-bin") from None
    try:
        h = openslide.OpenSlide(path)
    except Exception as e:
        raise SlideReadError(f"OpenSlide cannot open {Path(path).name}: {_first_line(e)}") from None
    mpp = None
    try:
        mx, my = (float(h.properties.get(k, "nan")) for k in ("openslide.mpp-x", "openslide.mpp-y"))
        if math.isfinite(mx):
            mpp = (mx + my) / 2 if math.isfinite(my) else mx
    except ValueError:
        mpp = None
    return Slide(path, "openslide", [(int(d[0]), int(d[1])) for d in h.level_dimensions], [float(d) for d in h.level_downsamples], mpp, h)


def _tiff_mpp(path: str) -> float | None:
    """Microns per pixel from OME-XML, an Aperio description, or the TIFF resolution tags (cm / inch)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return _mpp_of(tif)


def _mpp_of(tif: Any) -> float | None:
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        for el in ET.fromstring(tif.ome_metadata).iter():
            size = el.get("PhysicalSizeX")
            if el.tag.endswith("Pixels") and size:
                unit = el.get("PhysicalSizeXUnit", "µm")
                scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit)
                return float(size) * scale if scale else None
    page = tif.pages.first
    desc = page.description or ""
    if desc.startswith("Aperio"):
        for part in desc.split("|"):
            k, _, v = part.partition("=")
            if k.strip() == "MPP":
                try:
                    return float(v)
                except ValueError:
                    return None
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        res_unit = int(tags["ResolutionUnit"].value)
        if num and den and res_unit in (2, 3):
            per_res_unit = num / den
            return (25400.0 if res_unit == 2 else 10000.0) / per_res_unit
    return None


def _open_tifffile(path: str) -> Slide:
    import tifffile
    import zarr

    guard_zarr_exit()

    try:  # the reason is reported in one line, not as a log warning (open_slide keeps tifffile quiet)
        tif = tifffile.TiffFile(path)
    except Exception as e:
        raise SlideReadError(f"tifffile cannot open {Path(path).name}: {_first_line(e)}") from None
    try:
        series = tif.series[0]
        stores = [series.aszarr(level=lv) for lv in range(len(series.levels))]
        if len(stores) == 1:  # e.g. an .svs without its thumbnail page: take the tiled reduced pages as levels
            stores += _reduced_pages(tif, series.shape)
        levels = []
        for store in stores:
            arr = zarr.open_array(store, mode="r")
            shape = arr.shape
            if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
                raise SlideReadError(f"{Path(path).name}: planar (channel-first) slides are not supported")
            if len(shape) not in (2, 3):
                raise SlideReadError(f"{Path(path).name}: unsupported image shape {shape}")
            levels.append(arr)
        mpp = _mpp_of(tif)
    except SlideReadError:
        tif.close()
        raise
    except Exception as e:
        tif.close()
        raise SlideReadError(f"tifffile cannot read {Path(path).name}: {_first_line(e)}") from None
    dims = [(int(a.shape[1]), int(a.shape[0])) for a in levels]
    downs = [dims[0][0] / d[0] for d in dims]
    return Slide(path, "tifffile", dims, downs, mpp, (tif, levels))


def _reduced_pages(tif: Any, shape: tuple[int, ...]) -> list[Any]:
    """Tiled pages with level 0's aspect ratio and a smaller size, largest first (zarr stores)."""
    h0, w0 = shape[0], shape[1]
    pages = []
    for page in tif.pages[1:]:
        if not page.is_tiled or len(page.shape) < 2:
            continue
        h, w = page.shape[0], page.shape[1]
        if w < w0 and abs(w / h - w0 / h0) < 0.02 * (w0 / h0):
            pages.append(page)
    pages.sort(key=lambda pg: -pg.shape[1])
    return [pg.aszarr() for pg in pages]


def close_slide(slide: Slide) -> None:
    """Release the reader's file handles."""
    if slide.handle is None:
        return
    if slide.reader == "openslide":
        slide.handle.close()
    else:
        slide.handle[0].close()
    slide.handle = None


def read_region(slide: Slide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """uint8 h x w x 3 pixels of ``level`` whose top-left is (x, y) in that level's pixels; white beyond the slide."""
    lw, lh = slide.level_dimensions[level]
    out = np.full((h, w, 3), 255, np.uint8)
    xs, ys, xe, ye = max(0, x), max(0, y), min(lw, x + w), min(lh, y + h)
    if xe <= xs or ye <= ys:
        return out
    try:
        if slide.reader == "openslide":
            ds = slide.level_downsamples[level]
            rgba = np.asarray(slide.handle.read_region((round(xs * ds), round(ys * ds)), level, (xe - xs, ye - ys)))
            if rgba[..., 3].min() == 255:  # opaque (most reads): no blending
                region = rgba[..., :3]
            else:
                alpha = rgba[..., 3:4].astype(np.uint16)
                region = ((rgba[..., :3] * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)  # transparent = glass
        else:
            region = np.asarray(slide.handle[1][level][ys:ye, xs:xe])
            if region.ndim == 2:
                region = np.repeat(region[..., None], 3, axis=2)
            region = region[..., :3]
            if region.dtype != np.uint8:
                region = _to_uint8(region)
    except SlideReadError:
        raise
    except Exception as e:  # codec errors, truncated files, OpenSlide errors ...
        raise SlideReadError(f"cannot read {slide.name} level {level} at ({x}, {y}): {_first_line(e)}") from None
    out[ys - y : ye - y, xs - x : xe - x] = region
    return out


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return (a.astype(np.float64) * 255 / np.iinfo(a.dtype).max).round().astype(np.uint8)
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def best_level(slide: Slide, downsample: float) -> int:
    """The coarsest level at least as fine as ``downsample`` (level-0 pixels per output pixel)."""
    ok = [i for i, d in enumerate(slide.level_downsamples) if d <= downsample * (1 + 1e-6)]
    return max(ok, key=lambda i: slide.level_downsamples[i]) if ok else 0


def read_box(slide: Slide, box: tuple[float, float, float, float], out_w: int, out_h: int | None = None) -> tuple[np.ndarray, int]:
    """The level-0 box (x0, y0, x1, y1; fractional) resampled exactly to out_w x out_h, and the level read."""
    out_h = out_h or out_w
    x0, y0, x1, y1 = box
    level = best_level(slide, min((x1 - x0) / out_w, (y1 - y0) / out_h))
    d = slide.level_downsamples[level]
    bx0, by0, bx1, by1 = x0 / d, y0 / d, x1 / d, y1 / d
    scale = max((bx1 - bx0) / out_w, (by1 - by0) / out_h, 1.0)
    margin = math.ceil(3 * scale) + 1  # Lanczos support, so the borders are filtered like the inside
    ix0, iy0 = math.floor(bx0) - margin, math.floor(by0) - margin
    ix1, iy1 = math.ceil(bx1) + margin, math.ceil(by1) + margin
    region = read_region(slide, level, ix0, iy0, ix1 - ix0, iy1 - iy0)
    img = Image.fromarray(region).resize((out_w, out_h), Image.Resampling.LANCZOS, box=(bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0))
    return np.asarray(img), level


def slide_thumbnail(path: str, reader: str = "auto", max_side: int = 1024) -> tuple[np.ndarray, float]:
    """(RGB thumbnail at most ``max_side`` px, level-0 pixels per thumbnail pixel) of the slide file at ``path``."""
    slide = open_slide(path, reader)
    try:
        ds = max(1.0, max(slide.dimensions) / max_side)
        return thumbnail(slide, ds), ds
    finally:
        close_slide(slide)


def outside_fraction(slide: Slide, box: tuple[float, float, float, float]) -> float:
    """Share of a level-0 box that lies beyond the slide (read as white)."""
    w, h = slide.dimensions
    x0, y0, x1, y1 = box
    inside = max(0.0, min(x1, w) - max(x0, 0)) * max(0.0, min(y1, h) - max(y0, 0))
    return float(1.0 - inside / ((x1 - x0) * (y1 - y0)))


def thumbnail(slide: Slide, downsample: float, max_bytes: int = 64 << 20, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The whole slide at 1/``downsample``, read in bands so memory stays near ``max_bytes`` per read.

    When the slide has no level within 4x of ``downsample`` (a slide without a pyramid), that finer level is read
    once, strip by strip along its tile rows, each strip box-averaged as it comes, and only the small result is
    resampled (Lanczos) to the exact size: work in proportion to the pixels, memory to one strip;
    ``progress(rows done, rows)`` follows that read (the only slow case)."""
    W, H = slide.dimensions
    tw, th = max(1, round(W / downsample)), max(1, round(H / downsample))
    sx, sy = W / tw, H / th
    level = best_level(slide, min(sx, sy))
    scale = min(sx, sy) / slide.level_downsamples[level]
    lw, lh = slide.level_dimensions[level]
    # box-average to about twice the thumbnail's resolution (then Lanczos gives the tissue of a Lanczos over the
    # whole level: 99.8% of mask pixels on real H&E, 99.1% when averaging all the way), within max_bytes
    factor = min(int(scale), max(int(scale / 2), math.ceil(math.sqrt(lw * lh * 3 / max_bytes))))
    if factor >= 2:
        return _reduced_thumbnail(slide, level, factor, tw, th, max_bytes, progress)
    rows_per_band = max(1, int(max_bytes / (lw * 3 * 4) * slide.level_downsamples[level] / sy))
    bands = []
    for r0 in range(0, th, rows_per_band):
        r1 = min(th, r0 + rows_per_band)
        band, _ = read_box(slide, (0.0, r0 * sy, float(W), r1 * sy), tw, r1 - r0)
        bands.append(band)
    return np.concatenate(bands, axis=0)


def tile_height(slide: Slide, level: int) -> int | None:
    """Rows of the stored tiles (or strips) of ``level``, when the reader says: reads aligned to them decode each once."""
    try:
        if slide.reader == "openslide":
            v = slide.handle.properties.get(f"openslide.level[{level}].tile-height")
            return int(v) if v else None
        return int(slide.handle[1][level].chunks[0])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _tiff_twin(slide: Slide, level: int) -> Any:
    """(the slide opened by tifffile, its level equal to ``level``) for a TIFF-based slide OpenSlide reads; else None."""
    if slide.reader != "openslide" or not slide.path.lower().endswith((*TIFF_EXTS, ".svs")):
        yield None
        return
    try:
        twin = _open_tifffile(slide.path)
    except SlideReadError:
        yield None
        return
    try:
        same = [i for i, d in enumerate(twin.level_dimensions) if d == slide.level_dimensions[level]]
        yield (twin, same[0]) if same and twin.dimensions == slide.dimensions else None
    finally:
        close_slide(twin)


def _reduced_thumbnail(
    slide: Slide, level: int, factor: int, tw: int, th: int, max_bytes: int, progress: Callable[[int, int], None] | None
) -> np.ndarray:
    """``level`` read in strips of whole tile rows, box-averaged by ``factor`` (rows left over from a strip go with
    the next one, so every block is whole), then resampled to tw x th."""
    with _tiff_twin(slide, level) as twin:  # tifffile decodes a TIFF's tiles ~3x faster than OpenSlide, same pixels
        if twin is not None:
            with contextlib.suppress(SlideReadError):  # else OpenSlide, which may read what tifffile cannot
                return _reduced_thumbnail(twin[0], twin[1], factor, tw, th, max_bytes, progress)
    lw, lh = slide.level_dimensions[level]
    unit = tile_height(slide, level) or factor
    # a strip of RGBA plus its RGB copy and the average's copies: about 12 bytes per pixel
    rows = max(unit, max_bytes // max(1, lw * 12) // unit * unit)
    small = np.empty((-(-lh // factor), -(-lw // factor), 3), np.uint8)
    carry, filled = np.zeros((0, lw, 3), np.uint8), 0
    for y in range(0, lh, rows):
        strip = np.concatenate([carry, read_region(slide, level, 0, y, lw, min(rows, lh - y))])
        whole = strip.shape[0] if y + rows >= lh else strip.shape[0] // factor * factor
        strip, carry = strip[:whole], strip[whole:]
        if len(strip):
            part = np.asarray(Image.fromarray(strip).reduce(factor))  # edge blocks: the mean of what is there
            small[filled : filled + len(part)] = part
            filled += len(part)
        if progress is not None:
            progress(min(lh, y + rows), lh)
    img = Image.fromarray(small)
    return np.asarray(img.resize((tw, th), Image.Resampling.LANCZOS, box=(0.0, 0.0, lw / factor, lh / factor)))


MPP_AGREE = 0.01  # relative difference below which a given and a recorded MPP are the same value


def resolve_mpp(slide: Slide, fallback: float | None = None, manifest: float | None = None) -> tuple[float, str, str | None]:
    """(um/px of level 0, where it came from, a note or None): a manifest ``mpp`` replaces what the slide records
    (explicit, per slide); ``fallback`` (--slide-mpp) only fills in for a slide that records none or an implausible
    value, so a slide that records its own keeps it (a note says so when the two disagree). Refused in one line naming
    the slide when no usable value is left."""
    lo, hi = MPP_RANGE
    rec = slide.mpp if slide.mpp is not None and math.isfinite(slide.mpp) else None
    plausible = rec is not None and lo <= rec <= hi
    if manifest is not None:
        mpp, src = manifest, "manifest"
    elif plausible:
        assert rec is not None
        note = None
        if fallback is not None and abs(fallback - rec) > MPP_AGREE * rec:
            note = (
                f"{slide.name} records {rec:g} um/px: kept (--slide-mpp {fallback:g} is only for slides that record none; "
                "an mpp column in a slide manifest replaces a slide's own)"
            )
        return float(rec), "recorded", note
    elif fallback is not None:
        mpp, src = fallback, "--slide-mpp"
    elif rec is None:
        raise SlideReadError(f"{slide.name} records no microns per pixel: give --slide-mpp or an mpp column in the slide manifest")
    else:
        mpp, src = rec, "recorded"
    if not math.isfinite(mpp) or not lo <= mpp <= hi:
        what = "recorded" if src == "recorded" else "given"
        by = "" if src == "recorded" else f" ({src})"
        raise SlideReadError(
            f"{slide.name}: {what} microns per pixel {mpp:g}{by} is outside {lo:g}..{hi:g}: give the real value with --slide-mpp or an mpp column"
        )
    note = None
    if src == "manifest" and plausible and rec is not None and abs(mpp - rec) > MPP_AGREE * rec:
        note = f"{slide.name} records {rec:g} um/px; the manifest's mpp {mpp:g} replaces it"
    return float(mpp), src, note


def check_mpp(slide: Slide, fallback: float | None, manifest: float | None = None) -> float:
    """The slide's microns per pixel (see :func:`resolve_mpp`); a missing or absurd value is refused naming the slide."""
    return resolve_mpp(slide, fallback, manifest)[0]
