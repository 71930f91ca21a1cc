"""What every peer format shares: the slides of a store as exports read them, and a slide's features as imports read them."""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mito.core.errors import MitoError
from mito.core.io import atomic_dir, check_output_dir, is_mito_folder, write_manifest
from mito.core.runrecord import write_run_record
from mito.store.store import StoreError, is_view, open_store, parse_variant
from mito.wsi.reader import slide_file_stems

KIND = "export"  # the kind in an export folder's mito.json (mito.core.io.write_manifest)
FLOAT16_MAX = 65504.0  # a store keeps float16: a larger feature would become inf


class InteropError(MitoError):
    """A peer format's file mito cannot read or write as asked (one line)."""


# ---------------------------------------------------------------- export: the slides of a store


@dataclass
class SlideExport:
    """One slide of a store as every export writes it: its rows of one variant and where they lie on the slide."""

    slide: str  # the store's slide name (a.svs)
    stem: str  # its file stem in the export (a), distinct from every other slide's
    path: str  # the slide file the store was made from
    features: np.ndarray  # (N, D) float32 (the store's float16 values, exactly)
    coords: np.ndarray  # (N, 2) int64: floor of the level-0 top-left of the field the features saw
    geometry: dict[str, Any]  # variant_geometry: patch_size, patch_size_level0, target_mpp, level0_mpp, overlap, zoom
    field0: float  # the field's side in level-0 pixels (exact)
    size: tuple[int, int] | None  # level-0 (width, height)
    patient: str | None  # the slide's patient when the store has one per slide


@dataclass
class StoreExport:
    """A slide store opened for export: its variant key, the store's path and a short id of its tile list."""

    store: str
    key: str
    tile_hash: str
    slides: list[SlideExport] = field(default_factory=list)
    tile_list_sha256: str = ""  # the whole hash (run.yaml)


def is_export_dir(path: Path) -> bool:
    """True for a folder mito export wrote (its mito.json says so and lists everything in it)."""
    return is_mito_folder(path, KIND)


def variant_geometry(opts: dict[str, Any], rec: dict[str, Any], zoom: float) -> dict[str, Any]:
    """The field a variant at ``zoom`` saw around each tile of one slide: the output pixels it was read at (patch_size;
    a field holding fewer level-0 pixels than the tile is read at its own size, as mito.extract.slide_tiles.read_views
    does), its side in level-0 pixels, and its um/px (NaN when the slide's level-0 um/px is unknown)."""
    tile_px = int(opts.get("tile_px") or 0)
    field0 = float(rec["tile_side_level0"]) / zoom
    patch = max(1, min(tile_px, round(field0))) if tile_px else round(field0)
    level0 = rec.get("mpp")
    level0 = float(level0) if level0 is not None and math.isfinite(float(level0)) else math.nan
    stride0 = float(opts.get("stride_px") or tile_px) * float(rec["tile_side_level0"]) / max(tile_px, 1)
    return {
        "patch_size": int(patch),
        "patch_size_level0": round(field0),
        "target_mpp": level0 * field0 / patch,
        "level0_mpp": level0,
        "overlap": round(patch - stride0 * patch / field0),
        "zoom": float(zoom),
    }


def iter_slides(store_path: str, feature: str | None = None) -> Iterator[StoreExport | SlideExport]:
    """The store's export header (first item), then one SlideExport per slide, read one slide at a time."""
    with open_store(store_path, "r") as s:
        slides: dict[str, Any] = s.meta.get("slides") or {}
        if not slides:
            raise StoreError(f"{store_path} was not made from whole slides: nothing to export per slide")
        key = feature or next((k for k in s.variants if not is_view(k) and s.is_complete(k)), None)
        if key is None:
            raise StoreError(f"{store_path} has no complete feature array to export")
        if key not in s.variants:
            raise StoreError(f"feature {key!r} is not in {store_path} (it has: {', '.join(s.variants) or 'none'})")
        if not s.is_complete(key):
            raise StoreError(f"{key} is not complete in {store_path}: finish the extraction first")
        zoom = parse_variant(key).zoom
        tiles = s.tiles
        ok = ~s.unreadable
        opts = slides.get("options", {})
        records = slides.get("slides", [])
        stems = slide_file_stems([r["slide"] for r in records], keep_extension=False)
        sha = str(s.meta.get("tile_list_sha256") or "")
        yield StoreExport(str(store_path), key, sha[:8], tile_list_sha256=sha)
        names = tiles["slide"].to_numpy()
        for rec in records:
            rows = np.flatnonzero((names == rec["slide"]) & ok)
            x0, y0 = tiles["x0"].to_numpy()[rows], tiles["y0"].to_numpy()[rows]
            if zoom != 1.0:  # the variant's field: 1/zoom of the tile's side around the tile's centre
                half = (tiles["x1"].to_numpy()[rows] - x0) / zoom / 2
                x0 = (x0 + tiles["x1"].to_numpy()[rows]) / 2 - half
                y0 = (y0 + tiles["y1"].to_numpy()[rows]) / 2 - half
            coords = np.stack([np.floor(x0), np.floor(y0)], axis=1).astype(np.int64).reshape(-1, 2)
            dims = rec.get("dimensions")
            patient = None
            if "patient" in tiles and len(rows):
                vals = tiles["patient"].iloc[rows].dropna().astype(str).unique()
                patient = str(vals[0]) if len(vals) == 1 else None
            yield SlideExport(
                rec["slide"],
                stems[rec["slide"]],
                str(rec.get("path", "")),
                s.read([key], rows).astype(np.float32),
                coords,
                variant_geometry(opts, rec, zoom),
                float(rec["tile_side_level0"]) / zoom,
                (int(dims[0]), int(dims[1])) if dims else None,
                patient,
            )


def export_folder(
    store_path: str,
    out_dir: str | os.PathLike,
    fmt: str,
    feature: str | None,
    overwrite: bool,
    write: Callable[[Path, Path, StoreExport, SlideExport], list[str]],
    finish: Callable[[Path, Path, StoreExport], None] | None = None,
) -> tuple[list[Path], list[str]]:
    """Build an export folder atomically: ``write(tmp, out, header, slide)`` per slide (returns its notes), then
    ``finish(tmp, out, header)``, then mito.json. Returns each slide's (first) file and the notes."""
    out = check_output_dir(out_dir, overwrite, protect=(store_path,), what="export folder", kind=KIND)
    written: list[Path] = []
    notes: list[str] = []
    final = Path(os.path.abspath(out))

    def fill(tmp: Path) -> None:
        it = iter_slides(store_path, feature)
        header = next(it)
        assert isinstance(header, StoreExport)
        files: dict[str, str] = {}
        for sl in it:
            assert isinstance(sl, SlideExport)
            before = {p for p in tmp.rglob("*") if p.is_file()}
            notes.extend(write(tmp, final, header, sl))
            made = sorted({p for p in tmp.rglob("*") if p.is_file()} - before)
            for p in made:
                files[p.relative_to(tmp).as_posix()] = sl.slide
            written.extend([final / made[0].relative_to(tmp)] if made else [])  # one per slide: its features file
            header.slides.append(sl)
            sl.features = np.empty((0, 0), np.float32)  # memory follows one slide
        if finish is not None:
            finish(tmp, final, header)
        spec = {"store": str(store_path), "format": fmt, "feature": feature}
        write_run_record(tmp, "export", spec, header.tile_list_sha256)
        write_manifest(tmp, KIND, format=fmt, store=str(store_path), feature=header.key, slides=files)

    atomic_dir(out, fill, replace=lambda p: not any(p.iterdir()) or (overwrite and is_export_dir(p)))
    return written, notes


# ---------------------------------------------------------------- import: a slide's features in a peer's file


@dataclass
class SourceSlide:
    """One slide's features in a peer's file(s), opened for its shape and coordinates; ``read(a, b)`` gives rows a..b."""

    slide: str
    files: list[Path]
    n: int
    dim: int
    read: Callable[[int, int], np.ndarray]
    encoder: str | None = None
    coords: np.ndarray | None = None  # (n, 2) top-left, in ``unit``
    unit: str = "px"  # px (level 0) or um (from the slide's top-left)
    side: float | None = None  # the patch's side in ``unit`` when recorded
    size: tuple[int, int] | None = None  # level-0 (width, height) when recorded
    labels: dict[str, Any] = field(default_factory=dict)  # labels the format itself carries (eva: target, split)
    attrs: dict[str, Any] = field(default_factory=dict)  # what the file records about the patches (kept as provenance)


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def safe_encoder_name(name: str) -> str:
    """An encoder name as a variant's backbone part (letters, digits, _ . + -): other characters become _."""
    out = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name.strip()).strip("_.")
    return out


def attr_text(v: Any) -> str | None:
    """An HDF5 attribute as text (bytes decoded); None for missing or TRIDENT's 'None'."""
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    s = str(v).strip()
    return None if not s or s == "None" else s


def plain(v: Any) -> Any:
    """An HDF5 attribute as a JSON-able value."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()] if v.shape else plain(v.item())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def h5_rows(path: Path, dataset: str) -> Callable[[int, int], np.ndarray]:
    """A reader of rows a..b of ``dataset`` in an HDF5 file, as float32 (opened per call: bounded memory)."""

    def read(a: int, b: int) -> np.ndarray:
        import h5py

        with h5py.File(path, "r") as f:
            return np.asarray(f[dataset][a:b], dtype=np.float32)

    return read


def held_rows(load: Callable[[], np.ndarray]) -> Callable[[int, int], np.ndarray]:
    """A reader of rows a..b of what ``load`` returns, loaded once for the chunks that read it and let go after its last row."""
    held: list[np.ndarray] = []

    def read(a: int, b: int) -> np.ndarray:
        if not held:
            held.append(load())
        x = held[0][a:b]
        if b >= held[0].shape[0]:
            held.clear()
        return x

    return read


def write_slide_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    """The slide list a peer tool reads beside its feature files: a CSV of ``header`` and one row per slide."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def open_h5(path: Path) -> Any:
    """An HDF5 file opened read-only, or one line naming it."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InteropError(f"{path} is not a readable HDF5 file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def feature_shape(path: Path, ds: Any, name: str) -> tuple[int, int]:
    """(N, D) of a 2-D features dataset, or one line saying what it is instead."""
    if not hasattr(ds, "shape") or len(ds.shape) != 2 or ds.shape[1] < 1:
        raise InteropError(f"{path}: {name} must be an N x D array, found {getattr(ds, 'shape', type(ds).__name__)}")
    if not np.issubdtype(ds.dtype, np.floating):
        raise InteropError(f"{path}: {name} must hold floats, found {ds.dtype}")
    return int(ds.shape[0]), int(ds.shape[1])


def coords_of(path: Path, f: Any, n: int, name: str = "coords") -> np.ndarray:
    """The (n, 2) coordinates of a file, or one line saying why not."""
    if name not in f:
        raise InteropError(f"{path} has no {name!r} dataset")
    c = np.asarray(f[name][()])
    if c.ndim != 2 or c.shape != (n, 2) or not np.issubdtype(c.dtype, np.number):
        raise InteropError(f"{path}: {name} must be {n} x 2 numbers (one per feature row), found {c.shape} {c.dtype}")
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise InteropError(f"{path}: {name} holds NaN or inf")
    return c


def load_tensor_file(path: Path) -> np.ndarray:
    """A .pt file of features as (N, D) float32: a tensor, or a list of 1-D/2-D tensors (eva), loaded with
    ``torch.load(weights_only=True)``; anything else (a pickle of other objects, a dict) is one line."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InteropError(
            f"{path} is not a tensor file torch.load(weights_only=True) accepts (a pickle of other objects?): {first}"
        ) from None
    if isinstance(obj, torch.Tensor):
        parts = [obj]
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        parts = list(obj)
    else:
        raise InteropError(f"{path} holds a {type(obj).__name__}, not a tensor or a list of tensors")
    rows = []
    for t in parts:
        if not t.is_floating_point():
            raise InteropError(f"{path} holds {t.dtype} values, not float features")
        t = t.detach().float()
        if t.ndim == 1:
            t = t.unsqueeze(0)
        if t.ndim != 2:
            raise InteropError(f"{path} holds a tensor of shape {tuple(t.shape)}, not N x D features")
        rows.append(t.numpy())
    if len({r.shape[1] for r in rows}) != 1:
        raise InteropError(f"{path} mixes feature sizes {sorted({r.shape[1] for r in rows})}")
    return np.concatenate(rows, axis=0).astype(np.float32, copy=False)
