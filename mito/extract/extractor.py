"""The extractor: tiles -> frozen backbone -> one float16 array per (backbone, zoom, colour) in the store."""

from __future__ import annotations

import gc
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, field_validator, model_validator
from torch.utils.data import DataLoader, Dataset

from mito.backbones import BackboneError, BackboneSpec, create_backbone, get_backbone, resolve_weights, spec_summary
from mito.backbones.registry import RANDOM_SHA, SIZE_SEP, file_sha256
from mito.core.errors import Interrupted
from mito.core.io import containing_artifact
from mito.core.progress import add_task, advance, group_progress, progress_bar, status
from mito.core.resources import available_memory, tune_cpu_allocator
from mito.core.runrecord import run_record
from mito.core.sections import SeedSection
from mito.core.version import __version__
from mito.core.wording import counted
from mito.extract import distributed
from mito.extract.augment import View, apply_view, parse_augment
from mito.extract.errors import ExtractError
from mito.extract.grow import Growth, grow_store
from mito.extract.slide_tiles import SlideOptions, close_handles, options_from, record_slides, slide_tiling
from mito.extract.sources import TileSource, describe_sample, open_source, stratified_sample
from mito.extract.variants import COLORS, Preprocess, normalize, prepare
from mito.store import (
    DEFAULT_CHUNK_ROWS,
    Store,
    StoreError,
    Variant,
    backend_capabilities,
    create_store,
    open_store,
    store_exists,
    store_format,
)

MAX_ZOOM = 64.0
MAX_CHUNK_ROWS = 1 << 20
MAX_TILE_SIZE = 16384
GiB = 1 << 30


class ExtractConfig(SeedSection):
    """Everything one `mito extract` run needs (validated; unknown fields are errors; machine checks in preflight())."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        description="Folder of tiles (label = subfolder), CSV manifest, a slide (with points) or slides.", examples=["tiles/"]
    )
    store: str = Field(description="Output store: a .zarr folder or a .h5 file; fsspec URLs work for Zarr.", examples=["runs/tiles.zarr"])
    points: str | None = Field(None, description="CSV of x,y[,label,...] crop centres on a slide source.")
    backbones: list[str] = Field(default_factory=lambda: ["efficientnet_lite0"], description="Backbone names (see mito backbones).")
    weights: dict[str, str] = Field(default_factory=dict, description="Weight file or snapshot folder per backbone: {name: path}.")
    zooms: list[float] = Field(default_factory=lambda: [1.0], description="Magnifications relative to the tile (2 = central half).")
    colors: list[str] = Field(default_factory=lambda: ["rgb"], description="Colour modes: rgb, gray, hema.")
    augment: str | None = Field(None, description="Augmented views as extra arrays: hed:K[:S], flip, vflip, rot90; e.g. hed:4,flip.")
    augment_colors: list[str] = Field(default_factory=lambda: ["rgb"], description="Colour modes that get the augment views.")
    augment_seed: int = Field(0, ge=0, lt=2**32, description="Seed of the HED jitter (per tile: seed and tile id).")
    fit: Literal["resize", "pad"] = Field("resize", description="Bring crops to the backbone input: resize or pad.")
    pad_mode: Literal["reflect", "white"] = Field("reflect", description="Padding for fit pad: reflect or white.")
    input_size: int | None = Field(None, ge=16, le=4096, description="Backbone input side in px (default: the backbone's own).")
    tile_size: int = Field(224, ge=8, le=MAX_TILE_SIZE, description="Slides with points: side of the base crop in level-0 pixels.")
    task: str | None = Field(None, description="Name of the label column (default 'label').")
    label_column: str | None = Field(None, description="Manifest column holding the labels (default: label).")
    batch_size: int | None = Field(None, ge=1, le=65536, description="Tiles per forward pass (default 256 on CUDA, 32 on CPU).")
    num_workers: int | None = Field(None, ge=0, le=64, description="DataLoader decoding workers (default: by device and cores).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda.")
    chunk_rows: int = Field(DEFAULT_CHUNK_ROWS, ge=1, le=MAX_CHUNK_ROWS, description="Rows per store chunk (the unit of resume).")
    # a kill loses at most this much work however long a chunk takes on this machine (a Ctrl-C or SIGTERM loses none)
    checkpoint_s: float = Field(60.0, gt=0, description="Seconds of embedding between checkpoints of an unfinished chunk.")
    compile: bool = Field(False, description="torch.compile the backbone (CUDA).")
    limit: int | None = Field(None, ge=1, description="Only the first N tiles in sorted path order.")
    sample: int | None = Field(None, ge=1, description="N tiles drawn at random (seed), stratified by label.")
    sample_per_class: int | None = Field(None, ge=1, description="N tiles per class drawn at random (seed).")
    progress: bool = Field(True, description="Show a progress bar.")
    mpp: float | None = Field(None, gt=0, allow_inf_nan=False, description="Whole slides: tiles at M um/px over tissue.")
    tile_px: int | None = Field(None, ge=8, le=MAX_TILE_SIZE, description="Whole slides: tile side in pixels at mpp.")
    tile_um: float | None = Field(None, gt=0, allow_inf_nan=False, description="Whole slides: tile side in micrometres.")
    stride: int | None = Field(None, ge=1, description="Whole slides: grid step in pixels at mpp (default: the tile size).")
    min_tissue: float = Field(0.5, ge=0, le=1, description="Whole slides: keep grid tiles at least this much on tissue.")
    slide_mpp: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Whole slides: um/px of level 0 for slides that record none."
    )
    reader: Literal["auto", "openslide", "tifffile"] = Field("auto", description="Whole slides: auto, openslide or tifffile.")
    annotations: str | None = Field(None, description="Whole slides: QuPath GeoJSON file or folder; tile label = its region.")
    label_overlap: float | None = Field(
        None, ge=0, le=1, description="Whole slides: drop labelled tiles their region covers less than this."
    )

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if "://" in v:
            return v
        p = Path(v).expanduser()
        if not p.name or p.resolve() == Path("/"):
            raise ValueError(f"{v} cannot be a store: give a new .zarr folder or .h5 file, e.g. runs/tiles.zarr")
        owner = containing_artifact(p.parent)
        if owner is not None:
            raise ValueError(f"{v} lies inside {owner}, a mito store or model; choose another --store")
        return v

    @field_validator("zooms")
    @classmethod
    def _zooms(cls, v: list[float]) -> list[float]:
        if not v or any(not math.isfinite(z) or z <= 0 for z in v):
            raise ValueError("zooms must be positive numbers, e.g. 1,2 or 0.5,1")
        if max(v) > MAX_ZOOM or min(v) < 1 / MAX_ZOOM:
            raise ValueError(f"zooms must lie between {1 / MAX_ZOOM:g} and {MAX_ZOOM:g} (got {', '.join(f'{z:g}' for z in v)})")
        return sorted(set(v), key=v.index)

    @field_validator("colors")
    @classmethod
    def _colors(cls, v: list[str]) -> list[str]:
        return _color_list(v, "colors", required=True)

    @field_validator("augment_colors")
    @classmethod
    def _augment_colors(cls, v: list[str]) -> list[str]:
        return _color_list(v, "augment colors", required=False)

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: str | None) -> str | None:
        try:
            parse_augment(v)
        except ExtractError as e:  # the CLI names the option already
            raise ValueError(str(e).removeprefix("--augment").lstrip(": ")) from None
        return v or None

    @field_validator("backbones")
    @classmethod
    def _backbones(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one backbone")
        return sorted(set(v), key=v.index)

    @model_validator(mode="after")
    def _fits(self) -> ExtractConfig:
        if sum(v is not None for v in (self.limit, self.sample, self.sample_per_class)) > 1:
            raise ValueError("give one of --limit, --sample and --sample-per-class: each picks the tiles its own way")
        stray = [b for b in self.weights if b not in self.backbones]
        if stray:
            raise ValueError(
                f"--weights names {stray[0]}, which is not among --backbone ({', '.join(self.backbones)}): its weights would be ignored"
            )
        sized = [b.rpartition(SIZE_SEP) for b in self.backbones if SIZE_SEP in b]
        clash = [(base, px) for base, _, px in sized if px.isdigit() and int(px) != self.input_size]
        if self.input_size is not None and clash:  # --input-size would silently win over the size the name promises
            base, px = clash[0]
            raise ValueError(
                f"--input-size {self.input_size} would embed {base}{SIZE_SEP}{px} at {self.input_size} px: drop --input-size "
                f"or name the size in the backbone ({base}{SIZE_SEP}{self.input_size})"
            )
        missing = [c for c in self.augment_colors if c not in self.colors] if self.augment else []
        if missing:
            raise ValueError(
                f"--augment-colors {missing[0]} is not among --colors ({', '.join(self.colors)}): it would get no views; "
                f"add it to --colors or pass --augment-colors {','.join(c for c in self.colors)}"
            )
        return self

    def preflight(self) -> None:
        """The checks that depend on this machine (free memory for a chunk, a batch, a slide region), run before the
        job and not in validation, so a spec valid on one machine validates on another; a problem is an ExtractError."""
        free = available_memory()
        if free is None:
            return
        specs = []
        for b in self.backbones:
            try:
                specs.append(get_backbone(b))
            except BackboneError:  # reported later, with the known names
                pass
        n_var = len(self.zooms) * (len(self.colors) + len(set(self.colors) & set(self.augment_colors)) * len(parse_augment(self.augment)))
        dims = sum(sp.embed_dim for sp in specs) * n_var
        if self.chunk_rows * dims * 4 > free // 4:
            raise ExtractError(
                f"--chunk-rows {self.chunk_rows} x {dims} dims x 4 bytes = {self.chunk_rows * dims * 4 / GiB:.1f} GiB, "
                f"more than a quarter of the {free / GiB:.1f} GiB available; use fewer rows per chunk"
            )
        side = max([self.input_size or sp.input_size for sp in specs] or [self.input_size or 224])
        if self.batch_size is not None and self.batch_size * 3 * side * side * 4 * 16 > free // 2:
            raise ExtractError(
                f"--batch-size {self.batch_size} at {side} px needs about "
                f"{self.batch_size * 3 * side * side * 64 / GiB:.1f} GiB for one forward, more than half the "
                f"{free / GiB:.1f} GiB available; use a smaller batch"
            )
        if self.points is not None:
            region = round(self.tile_size * max(1.0, 1.0 / min(self.zooms)))
            if region * region * 3 * 4 > free // 4:
                raise ExtractError(
                    f"--tile-size {self.tile_size} at zoom {min(self.zooms):g} reads {region} x {region} px regions "
                    f"({region * region * 12 / GiB:.1f} GiB with their copies), more than a quarter of the "
                    f"{free / GiB:.1f} GiB available"
                )


def _color_list(v: list[str], what: str, *, required: bool) -> list[str]:
    """``v`` without repeats, in its order; each one of COLORS, and at least one when ``required``."""
    bad = [c for c in v if c not in COLORS]
    if bad or (required and not v):
        raise ValueError(f"{what} must be among {', '.join(COLORS)} (got {', '.join(bad) or 'none'})")
    return sorted(set(v), key=v.index)


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ExtractError("--device cuda asked for, but torch sees no CUDA GPU")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def default_batch_size(device: torch.device) -> int:
    """Tiles per forward: 256 on a GPU (bf16 ViTs reach their best rate there), 32 on CPU (as fast per tile as 64
    on efficientnet_lite0, with half the activation memory)."""
    return 256 if device.type == "cuda" else 32


def default_workers(device: torch.device) -> int:
    """Decoding workers: most cores on a GPU box; one on a small CPU box (the model needs the rest)."""
    n = os.cpu_count() or 1
    return min(16, max(1, n - 1)) if device.type == "cuda" else min(4, max(0, n // 2))


def variant_plan(cfg: ExtractConfig, backbone: str) -> list[tuple[Variant, Preprocess, View | None]]:
    """The (variant, preprocessing, view) triples one backbone contributes, in zoom-then-colour order, each colour
    in ``augment_colors`` followed by its augmented views."""
    spec = get_backbone(backbone)
    size = cfg.input_size or spec.input_size
    views = parse_augment(cfg.augment)
    out: list[tuple[Variant, Preprocess, View | None]] = []
    for z in cfg.zooms:
        for c in cfg.colors:
            p = Preprocess(size, spec.mean, spec.std, zoom=z, color=c, fit=cfg.fit, pad_mode=cfg.pad_mode)
            out.append((Variant(backbone, z, c), p, None))
            if c in cfg.augment_colors:
                out += [(Variant(backbone, z, c, v.name), p, v) for v in views]
    return out


class _TileDataset(Dataset):
    """Reads each tile once at the widest field of view and returns the variants its chunk still needs."""

    def __init__(
        self,
        source: TileSource,
        rows: np.ndarray,
        preps: list[Preprocess],
        need: np.ndarray,
        chunk_rows: int,
        views: list[View | None] | None = None,
        seed: int = 0,
        keep: np.ndarray | None = None,
    ) -> None:
        self.source, self.rows = source, rows
        self.aug = views or [None] * len(preps)  # the augmented view each variant embeds (None: the tile itself)
        self.seed = seed
        self.ids = source.tiles["tile_id"].astype(str).to_numpy() if any(self.aug) else None
        self.need, self.chunk_rows = need, chunk_rows  # need[chunk, variant]: not yet in the store
        self.keep = np.zeros(need.shape, np.int64) if keep is None else keep  # keep[chunk, variant]: first rows already in it
        self.zooms = [p.zoom for p in preps]
        self.views = source.kind == "slides"  # whole slides: each zoom read at its own resolution
        self.context = 1.0 if self.views else max(1.0, 1.0 / min(self.zooms))
        # zoom relative to the region actually read (it is wider than the tile when context > 1)
        self.preps = [replace(p, zoom=1.0 if self.views else p.zoom * self.context) for p in preps]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, bool]:
        """(row, uint8 [variants, 3, S, S], unreadable): uint8 crosses processes and the PCIe bus, 4x less than float.
        Variants the row's chunk already has stay zeros (neither prepared nor embedded)."""
        row = int(self.rows[k])
        size = self.preps[0].input_size
        out = torch.zeros(len(self.preps), 3, size, size, dtype=torch.uint8)
        try:
            c = row // self.chunk_rows
            needed = np.flatnonzero(self.need[c] & (row - c * self.chunk_rows >= self.keep[c]))
            if self.views:
                imgs = self.source.read_views(row, [self.zooms[j] for j in needed])  # only the zooms this chunk lacks
                for j, img in zip(map(int, needed), imgs):
                    out[j] = prepare(self._view(img, j, row), self.preps[j])
                return row, out, False
            img = self.source.read(row, self.context)
            seen: dict[str, np.ndarray] = {}  # one augmented image per view, shared by the colours that embed it
            for j in map(int, needed):
                out[j] = prepare(self._view(img, j, row, seen), self.preps[j])
            return row, out, False
        except OSError:
            return row, out, True

    def _view(self, img: np.ndarray, j: int, row: int, seen: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The image variant j embeds: the tile itself, or its augmented view (seeded by the tile id)."""
        v = self.aug[j]
        if v is None or self.ids is None:
            return img
        if seen is not None and v.name in seen:
            return seen[v.name]
        out = apply_view(img, v, self.seed, self.ids[row])
        if seen is not None:
            seen[v.name] = out
        return out


class _Batches:
    """Index batches that never straddle a chunk, each chunk cut the same way whichever rank or run embeds it, so
    a store's rows do not depend on how the job was split or resumed (CPU kernels round by batch shape)."""

    def __init__(self, chunk_sizes: list[int], batch_size: int) -> None:
        self.sizes, self.batch_size = chunk_sizes, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        offset = 0
        for n in self.sizes:
            for a in range(0, n, self.batch_size):
                yield list(range(offset + a, offset + min(n, a + self.batch_size)))
            offset += n

    def __len__(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.sizes)


def input_budget() -> int:
    """Bytes the queued input batches (DataLoader prefetch) may take: 512 MiB, less on a machine with little free memory."""
    free = available_memory()
    return min(512 << 20, max(64 << 20, (free or 4 << 30) // 8))


def loader_plan(workers: int, batch_bytes: int, budget: int) -> tuple[int, int | None]:
    """(workers, prefetch_factor) so that workers x prefetch x batch_bytes stays within ``budget`` (at least one batch)."""
    if workers == 0:
        return 0, None
    workers = max(1, min(workers, budget // max(1, batch_bytes)))
    return workers, max(1, min(2, budget // max(1, batch_bytes * workers)))


def _provenance(
    spec: BackboneSpec, weights_sha256: str, prep: Preprocess, source: TileSource, view: View | None = None, seed: int = 0
) -> dict[str, Any]:
    import timm

    return {
        **({"view": view.as_dict(seed)} if view is not None else {}),
        "backbone": spec.name,
        "weights_sha256": weights_sha256,
        "preprocessing": prep.as_dict(),
        "spec": spec_summary(spec),
        "tile_size": source.tile_size,
        # micron tiles only: level-0 crops at points compare with crops, as they always did
        **(
            {"slide_tiling": slide_tiling(source.slides["opts"])}
            if source.slides is not None and source.slides["opts"].mpp is not None
            else {}
        ),
        "versions": {"mito": __version__, "timm": timm.__version__, "torch": torch.__version__},
    }


SAMPLE_SPEC = ("n", "per_class", "seed", "by")  # what draws a sample again (with the same SOURCE)


def _open_or_create(
    cfg: ExtractConfig, source: TileSource, lock: bool = True, sample: dict[str, Any] | None = None
) -> tuple[Store, Growth | None]:
    tiles = source.tiles
    meta = {
        "source": {"path": source.root, "kind": source.kind, "points": cfg.points, "tile_size": source.tile_size},
        "tasks": [cfg.task or "label"] if (cfg.task or "label") in tiles else [],
        "versions": {"mito": __version__, "torch": torch.__version__},
        **({"sample": sample} if sample is not None else {}),
    }
    if store_exists(cfg.store):
        store = open_store(cfg.store, mode="a", lock=lock)
        try:  # new slides (or crops) become new rows; the source's table is then the store's
            held = store.meta.get("sample")
            held = None if not isinstance(held, dict) or held.get("grown_to") else held  # grown: it holds SOURCE now
            if sample is not None and (not held or any(held.get(k) != sample.get(k) for k in SAMPLE_SPEC)):
                raise StoreError(
                    f"{cfg.store} holds {describe_sample(held)}; this run asks {describe_sample(sample)}, another cut of "
                    "SOURCE: use a new --store (the store's own options resume it)"
                )
            if held and cfg.limit is not None:
                raise StoreError(f"{cfg.store} holds {describe_sample(held)}; --limit takes another cut of SOURCE: use a new --store")
            check_variants(cfg, store, source)  # before anything is written: a refused run leaves the store as it was
            growth = grow_store(
                store, source, cfg.store, may_write=lock, limited=cfg.limit is not None or sample is not None, tasks=tuple(meta["tasks"])
            )
            if held and sample is None and growth is not None and growth.added_tiles:  # the rest of SOURCE joined: no sample now
                store.record("sample", {**held, "grown_to": store.n_tiles})
            return store, growth
        except BaseException:
            store.close()
            raise
    return create_store(cfg.store, tiles, meta, chunk_rows=cfg.chunk_rows), None


def check_variants(cfg: ExtractConfig, store: Store, source: TileSource) -> None:
    """Refuse, before anything is written, a run whose variants the store already holds made differently."""
    for name in cfg.backbones:
        spec = get_backbone(name)
        weights = resolve_weights(spec, cfg.weights.get(name))
        sha = file_sha256(weights) if weights is not None else RANDOM_SHA
        for v, p, w in variant_plan(cfg, name):
            store.check_variant(v.key, spec.embed_dim, _provenance(spec, sha, p, source, w, cfg.augment_seed))


def kept_rows(store: Store, keys: list[str], need: np.ndarray) -> np.ndarray:
    """keep[chunk, variant]: rows at the start of a chunk still to write that already hold sound embeddings (the old
    rows of a chunk that grew when tiles were added); 0 where they do not read back whole."""
    keep = np.zeros(need.shape, np.int64)
    for c, j in zip(*np.nonzero(need)):
        k = store.kept_rows(keys[j], int(c))
        start, stop = store.chunk_rows_range(int(c))
        if not 0 < k < stop - start:
            continue
        try:
            block = store.read([keys[j]], slice(start, start + k), allow_incomplete=True)
            bad = store.unreadable[start : start + k]
        except StoreError:  # damaged since: the whole chunk is embedded again
            continue
        if not (np.isnan(block).any(axis=1) & ~bad).any():
            keep[c, j] = k
    return keep


@dataclass
class _Rows:
    """The first ``rows`` rows of an unfinished chunk (a checkpoint), per variant key."""

    chunk: int
    rows: int
    features: dict[str, np.ndarray]
    unreadable: np.ndarray


class _Writer:
    """Writes finished chunks (and checkpoints of unfinished ones) on a background thread so the model never waits
    for compression or disk."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.q: queue.Queue[Any] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    if isinstance(item, _Rows):
                        self.store.write_rows(item.chunk, item.rows, item.features, item.unreadable)
                        continue
                    for key, chunk, feats, bad in item:
                        self.store.write_chunk(key, chunk, feats, bad)
                except BaseException as e:  # surfaced on the main thread
                    self.error = e

    def put(self, item: list[tuple[str, int, np.ndarray, np.ndarray]] | _Rows) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        if self.error is not None:
            raise self.error


def extract(cfg: ExtractConfig) -> dict[str, Any]:
    """Embed every tile of ``cfg.source`` with each backbone/variant, skipping chunks already done.

    Under torchrun each rank embeds its share of the chunks (see :mod:`mito.extract.distributed`).
    """
    cfg.preflight()
    dist = distributed.setup()
    try:
        return _extract(cfg, dist)
    except Interrupted:
        raise
    except KeyboardInterrupt:  # before any tile was embedded (reading the tile list, tissue, opening the store ...)
        raise Interrupted("no tile was embedded by this run; re-run the same command to resume") from None
    except Exception as e:
        dist.fail(e)  # the other ranks stop at their next sync instead of waiting forever
        raise
    finally:
        close_handles()  # slides read in this process (no DataLoader workers)


def _extract(cfg: ExtractConfig, dist: distributed.Dist) -> dict[str, Any]:
    device = dist.device(pick_device(cfg.device))
    if device.type == "cpu":
        tune_cpu_allocator()
    slide_opts = _run_options(cfg, dist)
    # slide tiling shows its own per-slide bar; rich allows one live display at a time
    with status(f"reading the tile list of {cfg.source} ...", enabled=cfg.progress and dist.main and slide_opts is None):
        source, sample = _read_tiles(cfg, slide_opts, dist)
        opened = dist.on_main(lambda: _open_or_create(cfg, source, sample=sample))  # only rank 0 creates or grows; the others wait
        if opened is None:  # rank 0 holds the writer lock for the whole job
            opened = _open_or_create(cfg, source, lock=False, sample=sample)
        store, growth = opened
    try:  # from here on the store (and its writer lock) is closed whatever happens
        summary = _start_summary(cfg, store, growth, sample, source, device, dist)
        for b in cfg.backbones:
            summary["backbones"][b] = _extract_backbone(cfg, b, source, store, device, dist)
        parts = dist.sync(payload=summary["backbones"])  # every rank's chunks are on disk past this point
        if not dist.main:
            return summary
        summary["backbones"] = {b: distributed.merge_summaries([p[b] for p in parts]) for b in cfg.backbones} if dist.active else parts[0]
        _finish_summary(cfg, store, summary)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every finished row is on disk by now; say how many
        raise _interrupted(cfg, store) from None
    finally:
        store.close()
    return summary


def _run_options(cfg: ExtractConfig, dist: distributed.Dist) -> SlideOptions | None:
    """Refuse what cannot run before any work (a store several ranks cannot share, a missing backbone or weights);
    the slide tiling options (None: not whole slides)."""
    if dist.active and not backend_capabilities(cfg.store, store_format(cfg.store)).shared_writers:
        raise ExtractError("several ranks cannot write one HDF5 file: use a .zarr store with torchrun")
    for b in cfg.backbones:  # fail before any work when a backbone or its weights are missing
        resolve_weights(get_backbone(b), cfg.weights.get(b))
    slide_opts = options_from(
        cfg.mpp,
        cfg.tile_px,
        cfg.tile_um,
        cfg.zooms,
        workers=cfg.num_workers or 1,
        stride_px=cfg.stride,
        min_tissue=cfg.min_tissue,
        slide_mpp=cfg.slide_mpp,
        reader=cfg.reader,
        annotations=cfg.annotations,
        label_overlap=cfg.label_overlap,
    )
    if dist.main and not backend_capabilities(cfg.store, store_format(cfg.store)).resumable_per_chunk:
        print(
            f"note: {cfg.store} is HDF5: a killed run or a full disk loses that run's chunks (a .zarr store resumes per chunk: use one for long runs)",
            file=sys.stderr,
        )
    return slide_opts


def _read_tiles(cfg: ExtractConfig, slide_opts: SlideOptions | None, dist: distributed.Dist) -> tuple[TileSource, dict[str, Any] | None]:
    """The source's tiles cut to ``--limit`` or a drawn sample (and the sample's record, None without one)."""
    source = open_source(cfg.source, cfg.points, cfg.task, cfg.tile_size, cfg.label_column, slide_opts, cfg.progress and dist.main)
    if cfg.limit is not None:
        source.tiles = source.tiles.iloc[: cfg.limit].reset_index(drop=True)
    sample = None
    if cfg.sample is not None or cfg.sample_per_class is not None:
        if source.kind == "slides":
            raise ExtractError(
                "--sample and --sample-per-class draw crops from a folder or CSV manifest; for slides, list fewer slides in a manifest"
            )
        picked, sample = stratified_sample(source.tiles, cfg.task or "label", cfg.sample, cfg.sample_per_class, cfg.seed)
        source.tiles = picked.reset_index(drop=True)
    if min(cfg.zooms) < 1 and not source.has_context:
        raise ExtractError(
            f"zoom {min(cfg.zooms):g} needs pixels around each tile, but {source.kind} tiles are fixed crops; "
            "use zooms >= 1 (or a slide with --points)"
        )
    return source, sample


def _start_summary(
    cfg: ExtractConfig,
    store: Store,
    growth: Growth | None,
    sample: dict[str, Any] | None,
    source: TileSource,
    device: torch.device,
    dist: distributed.Dist,
) -> dict[str, Any]:
    """The run's summary before any backbone ran (rank 0 also records the slides' tiling in the store)."""
    summary: dict[str, Any] = {"store": cfg.store, "n_tiles": store.n_tiles, "device": str(device), "backbones": {}}
    if growth is not None and growth.changed:
        summary["grown"] = growth.as_dict()
    if sample is not None:
        summary["sample"] = sample
    if source.slides is not None:
        summary["skipped_slides"] = source.slides["info"]["skipped"]
        summary["slide_notes"] = source.slides["info"].get("notes", [])
        if dist.main:
            record_slides(store, cfg.store, source.slides["info"])
    if dist.active:
        summary.update(rank=dist.rank, world_size=dist.world)
    return summary


def _finish_summary(cfg: ExtractConfig, store: Store, summary: dict[str, Any]) -> None:
    """Rank 0, once every backbone ran: what is unreadable or incomplete, recorded in the store when work was done."""
    if "grown" in summary and summary["grown"]["added_tiles"]:  # variants this run did not name now lack the new rows
        summary["grown"]["incomplete"] = [v for v in store.variants if not store.is_complete(v)]
    bad = np.flatnonzero(store.unreadable)
    summary["unreadable"] = store.tiles["tile_id"].iloc[bad].astype(str).tolist()
    summary["incomplete"] = [k for k in store.variants if not store.is_complete(k)]  # e.g. views of an earlier --augment after added tiles
    store.forget_done_rows()  # checkpoints of chunks finished since
    if any(b["rows"] for b in summary["backbones"].values()):  # a no-op run keeps the record of the run that did the work
        store.record("unreadable_tiles", summary["unreadable"])
        store.record("last_run", {k: v for k, v in summary.items() if k != "unreadable"})
        store.add_run(run_record("extract", cfg, store.meta.get("tile_list_sha256")))  # the spec, for mito rerun and predict


def _interrupted(cfg: ExtractConfig, store: Store) -> Interrupted:
    """What a Ctrl-C or SIGTERM leaves in the store, as the error that says so."""
    if store.drops_session:
        return Interrupted(
            f"{cfg.store} is as it was before this run (HDF5 keeps a run's work only when its writes "
            "end cleanly; a .zarr store keeps every finished chunk); re-run the same command"
        )
    return Interrupted(kept_note(store, {b: [v.key for v, _, _ in variant_plan(cfg, b)] for b in cfg.backbones}))


def kept_note(store: Store, plans: dict[str, list[str]]) -> str:
    """What an interrupted run leaves, for each backbone's variant keys in ``plans``: tiles embedded in every variant
    and on disk (whole chunks and checkpointed rows), and that a re-run embeds only the rest."""
    n, parts, kept_all, left_all = store.n_tiles, [], 0, 0
    sizes = np.array([b - a for a, b in map(store.chunk_rows_range, range(store.n_chunks))])
    for name, keys in plans.items():
        keys = [k for k in keys if k in store.variants]
        rows, whole = np.zeros(store.n_chunks, np.int64), np.zeros(store.n_chunks, bool)  # rows every variant holds
        if keys:
            done = np.stack([store.done_chunks(k) for k in keys])
            held = np.where(done, sizes, [[store.kept_rows(k, c) for c in range(store.n_chunks)] for k in keys])
            rows, whole = held.min(axis=0), np.asarray(done.all(axis=0))
        kept, part = int(rows.sum()), int(rows[~whole].sum())
        kept_all, left_all = kept_all + kept, left_all + n - kept
        text = f"kept {kept:,} of {counted(n, 'tile')}"
        if kept < n:
            text += f" ({int(whole.sum()):,} of {counted(store.n_chunks, 'chunk')} whole"
            text += f", {counted(part, 'row')} of unfinished chunks checkpointed)" if part else ")"
        parts.append(f"{name}: {text}" if len(plans) > 1 else text)
    if kept_all == 0:
        return "nothing was finished yet: no chunk completed and no rows checkpointed; re-run the same command to start over"
    return "; ".join(parts) + ("; re-run the same command to embed only the rest" if left_all else "; re-run the same command to finish")


def _extract_backbone(
    cfg: ExtractConfig, name: str, source: TileSource, store: Store, device: torch.device, dist: distributed.Dist
) -> dict[str, Any]:
    plan = variant_plan(cfg, name)
    keys = [v.key for v, _, _ in plan]
    _add_variants(cfg, name, plan, source, store, dist)
    todo, need, skipped = _chunks_to_embed(store, keys, dist)
    if not todo.any():
        return {
            "variants": keys,
            "rows": 0,
            "variant_rows": dict.fromkeys(keys, 0),
            "skipped_chunks": skipped,
            "seconds": 0.0,
            "tiles_per_s": None,
        }
    n_var = len(plan)
    keep = kept_rows(store, keys, need)
    loader, rows, workers, batch_size = _loader(cfg, source, store, plan, todo, need, keep, device)
    with progress_bar("tiles", enabled=cfg.progress and dist.main, info=True) as bar:
        task = add_task(bar, f"{name} x{n_var}", total=len(rows))
        per_slide = (
            group_progress(bar, rows, source.tiles["slide"], "slides") if source.kind == "slides" and cfg.progress and dist.main else None
        )
        bar.update(task, info=f"starting {workers} decoding worker(s) ..." if workers else "")
        gc.freeze()  # the forked workers' collections then never touch (and so copy) the parent's objects
        try:
            batches = iter(loader)  # workers fork now, before the model exists, and decode while it loads
        finally:
            gc.unfreeze()
        bar.update(task, info=f"loading {name} weights ...")
        enc = create_backbone(name, weights=cfg.weights.get(name), device=device)
        bar.update(task, info="embedding the first batch ...")
        run = _Embedding(
            _forward(cfg, enc, device, batch_size), enc.spec.embed_dim, device, store, keys, need, keep, (bar, task, per_slide)
        )
        # checkpoints write the store's attributes: one writer of them, so not with several ranks (GPU chunks are quick)
        n_done, counts, secs = run.run(batches, None if dist.active else cfg.checkpoint_s)
    return {
        "variants": keys,
        "rows": int(n_done),
        "variant_rows": counts,
        "skipped_chunks": skipped,
        "seconds": round(secs, 2),
        "tiles_per_s": round(n_done / secs, 2) if secs > 0 else None,
        "weights_sha256": enc.weights_sha256,
        "workers": workers,
        "batch_size": batch_size,
    }


def _add_variants(
    cfg: ExtractConfig,
    name: str,
    plan: list[tuple[Variant, Preprocess, View | None]],
    source: TileSource,
    store: Store,
    dist: distributed.Dist,
) -> None:
    """Rank 0 adds the backbone's variants to the store (refusing mismatched preprocessing before the model loads);
    the other ranks re-read them."""
    spec = get_backbone(name)
    weights = resolve_weights(spec, cfg.weights.get(name))
    sha = file_sha256(weights) if weights is not None else RANDOM_SHA
    seed = cfg.augment_seed
    dist.on_main(lambda: [store.ensure_variant(v.key, spec.embed_dim, _provenance(spec, sha, p, source, w, seed)) for v, p, w in plan])
    if not dist.main:
        store.refresh()


def _chunks_to_embed(store: Store, keys: list[str], dist: distributed.Dist) -> tuple[np.ndarray, np.ndarray, int]:
    """(todo[chunk]: this rank embeds it, need[chunk, variant]: not yet in the store, chunks done before this run)."""
    todo = np.zeros(store.n_chunks, bool)
    done = {k: store.sound_done_chunks(k) for k in keys}  # a chunk that fails its checksum is redone
    for k in keys:
        todo |= ~done[k]
    skipped = int((~todo).sum())  # chunks finished before this run (the same on every rank)
    todo &= dist.owned(store.n_chunks)  # rank r embeds chunks c with c % world == r
    need = np.stack([~done[k] for k in keys], axis=1) & todo[:, None]  # need[chunk, variant]
    return todo, need, skipped


def _loader(
    cfg: ExtractConfig,
    source: TileSource,
    store: Store,
    plan: list[tuple[Variant, Preprocess, View | None]],
    todo: np.ndarray,
    need: np.ndarray,
    keep: np.ndarray,
    device: torch.device,
) -> tuple[DataLoader, np.ndarray, int, int]:
    """(the loader of every row still to embed, those rows, decoding workers, batch size)."""
    first = np.where(need, keep, store.chunk_rows).min(axis=1)  # rows before this one no variant needs
    spans = [(a + int(first[c]), b) for c, (a, b) in ((int(c), store.chunk_rows_range(int(c))) for c in np.flatnonzero(todo))]
    rows = np.concatenate([np.arange(a, b) for a, b in spans])
    size = plan[0][1].input_size
    ds = _TileDataset(source, rows, [p for _, p, _ in plan], need, store.chunk_rows, [w for _, _, w in plan], cfg.augment_seed, keep)
    batch_size = cfg.batch_size or default_batch_size(device)
    workers, prefetch = loader_plan(
        cfg.num_workers if cfg.num_workers is not None else default_workers(device),
        batch_size * len(plan) * 3 * size * size,
        input_budget(),
    )
    loader = DataLoader(
        ds,
        batch_sampler=_Batches([b - a for a, b in spans], batch_size),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=prefetch,
    )
    return loader, rows, workers, batch_size


def _forward(cfg: ExtractConfig, enc: Any, device: torch.device, batch_size: int) -> Any:
    """The backbone's forward on uint8 batches: normalised on the device, compiled with ``cfg.compile``."""
    if device.type == "cuda":
        enc.model.to(memory_format=torch.channels_last)  # in place
    mean = torch.tensor(enc.spec.mean, dtype=torch.float32, device=device)
    std = torch.tensor(enc.spec.std, dtype=torch.float32, device=device)

    def embed(x: torch.Tensor) -> torch.Tensor:  # normalising on the device fuses into the compiled graph
        return enc.embed(normalize(x, mean, std))

    return _compiled(embed, batch_size) if cfg.compile else embed


class _Embedding:
    """One backbone's embedding loop, one forward per variant still needed (at most ``batch_size`` tiles each, so
    memory does not grow with the number of variants), and its state: rows per variant, the buffers of unfinished
    chunks, the writer, and (CUDA) the previous batch, handled on the CPU while the device runs the next one.
    ``bars``: the progress bar, its task and the per-slide progress (or None)."""

    def __init__(
        self,
        forward: Any,
        dim: int,
        device: torch.device,
        store: Store,
        keys: list[str],
        need: np.ndarray,
        keep: np.ndarray,
        bars: tuple[Any, Any, Any],
    ) -> None:
        self.forward, self.dim, self.device, self.cuda = forward, dim, device, device.type == "cuda"
        self.keys, self.need, self.keep, self.store = keys, need, keep, store
        self.bar, self.task, self.per_slide = bars
        self.counts = dict.fromkeys(keys, 0)
        self.buffers: dict[int, dict[str, Any]] = {}
        self.writer = _Writer(store)
        self.t0 = self.saved = time.perf_counter()  # saved: when unfinished chunks were last checkpointed
        self.n_done = 0
        self.pending: tuple[Any, ...] | None = None

    def run(self, batches: Any, every: float | None) -> tuple[int, dict[str, int], float]:
        """Embed every batch; returns (tiles, rows per variant, seconds). The finished rows of unfinished chunks are
        written every ``every`` seconds and on Ctrl-C / SIGTERM (None: never)."""
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        try:
            with torch.inference_mode(), autocast:
                for idx, x, bad in batches:
                    out = self._forward_batch(idx, x)
                    if not self.cuda:  # nothing runs asynchronously on a CPU: hand the rows on (and move the bar) now
                        self.n_done += self._finish(idx, out, bad, None)
                        self._checkpoint(every)
                        continue
                    out, ready = out.to("cpu", non_blocking=True), torch.cuda.Event()  # start the copy back, do not wait
                    ready.record()
                    if self.pending is not None:
                        prev, self.pending = self.pending, None  # an interrupt inside _finish() must not hand its rows on twice
                        self.n_done += self._finish(*prev)
                        self._checkpoint(every)
                    self.pending = (idx, out, bad, ready)
                if self.pending is not None:
                    prev, self.pending = self.pending, None
                    self.n_done += self._finish(*prev)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (no second one can land here): keep every finished row
            with torch.inference_mode():
                if self.pending is not None:
                    self.n_done += self._finish(*self.pending)
            self._checkpoint(0.0 if every is not None else None)
            raise
        finally:
            self.writer.close()
        return self.n_done, self.counts, time.perf_counter() - self.t0

    def _forward_batch(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[b, variants, dim] embeddings of one batch: one forward per variant some of its rows still need."""
        cr = self.store.chunk_rows
        chunk_of = idx.numpy() // cr
        rows_need = self.need[chunk_of] & ((idx.numpy() - chunk_of * cr)[:, None] >= self.keep[chunk_of])  # [b, variants]
        out = torch.zeros(x.shape[0], len(self.keys), self.dim, dtype=torch.float32, device=self.device)
        if self.cuda:  # uint8 from pinned memory, one transfer per batch
            x = x.to(self.device, non_blocking=True)
        for j in np.flatnonzero(rows_need.any(axis=0)):
            sel = torch.from_numpy(np.flatnonzero(rows_need[:, j])).to(self.device)
            xj = x[sel, int(j)]
            if self.cuda:
                xj = xj.contiguous(memory_format=torch.channels_last)
            out[sel, int(j)] = self.forward(xj).float()
            self.counts[self.keys[j]] += len(sel)
        return out

    def _finish(self, idx: torch.Tensor, out: torch.Tensor, bad: torch.Tensor, ready: Any) -> int:
        """Hand a batch's rows on to their chunks' buffers and move the bars; the number of rows."""
        if ready is not None:
            ready.synchronize()  # the copy back from the GPU has landed
        emb = out.numpy()
        emb[bad.numpy()] = np.nan
        _collect(self.store, self.buffers, idx.numpy(), emb, bad.numpy(), self.keys, self.need, self.keep, self.writer)
        advance(self.bar, self.task, len(idx), self.t0, self.n_done + len(idx))
        if self.per_slide is not None:  # which slide, and its tiles done / total in this run
            self.per_slide.advance(idx.numpy())
        if self.n_done == 0:
            self.bar.update(self.task, info="")
        return len(idx)

    def _checkpoint(self, every: float | None) -> None:
        if every is not None and time.perf_counter() - self.saved >= every:
            _checkpoint(self.store, self.buffers, self.keys, self.need, self.writer)
            self.saved = time.perf_counter()


def _compiled(fn: Any, batch_size: int) -> Any:
    """``torch.compile(fn)`` on batches padded to ``batch_size`` (a ragged batch would recompile), falling back to
    plain eager ``fn``, once and with a warning, when compiling fails (no C++ compiler, an unsupported op ...).
    Inductor caches compiled graphs on disk between runs."""
    import warnings

    compiled = torch.compile(fn, dynamic=False)
    state: dict[str, Any] = {"fn": None}  # decided by the first call

    def padded(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n < batch_size:
            x = torch.cat([x, x[-1:].expand(batch_size - n, *x.shape[1:])])
        return compiled(x)[:n]

    def call(x: torch.Tensor) -> torch.Tensor:
        if state["fn"] is not None:
            return state["fn"](x)
        try:
            out = padded(x)
            state["fn"] = padded
        except Exception as e:  # compile errors surface on the first call
            warnings.warn(f"torch.compile failed, running eager: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")  # noqa: B028
            state["fn"] = fn
            out = fn(x)
        return out

    return call


def _collect(
    store: Store,
    buffers: dict[int, dict[str, Any]],
    idx: np.ndarray,
    emb: np.ndarray,
    bad: np.ndarray,
    keys: list[str],
    need: np.ndarray,
    keep: np.ndarray,
    writer: _Writer,
) -> None:
    """Gather rows into their chunk's float16 buffer (only the variants that chunk needs); hand each chunk to the
    writer once all its rows arrived. The store keeps float16, so rounding here writes the same bits. Rows a
    chunk already holds (``keep``: the old rows of a chunk that grew when tiles were added) are copied as they are."""
    chunk_of = idx // store.chunk_rows
    for c in np.unique(chunk_of):
        c = int(c)
        start, stop = store.chunk_rows_range(c)
        cols = np.flatnonzero(need[c])
        if c not in buffers:
            buf: dict[str, Any] = {
                "emb": np.empty((stop - start, len(cols), emb.shape[-1]), np.float16),
                "bad": np.zeros(stop - start, bool),
                "n": 0,
            }
            for i, j in enumerate(cols):
                if keep[c, j]:
                    buf["emb"][: keep[c, j], i] = store.read(
                        [keys[j]], slice(start, start + int(keep[c, j])), np.float16, allow_incomplete=True
                    )
            buf["n"] = buf["saved"] = int(keep[c, cols].min()) if len(cols) else 0  # saved: rows the store holds already
            buffers[c] = buf
        buf = buffers[c]
        sel = chunk_of == c
        local = idx[sel] - start
        for i, j in enumerate(cols):
            fresh = local >= keep[c, j]
            buf["emb"][local[fresh], i] = emb[sel][fresh, j]
        buf["bad"][local] = bad[sel]
        buf["n"] += int(sel.sum())
        if buf["n"] == stop - start:
            writer.put([(keys[j], c, buf["emb"][:, i], buf["bad"]) for i, j in enumerate(cols)])
            del buffers[c]


def _checkpoint(store: Store, buffers: dict[int, dict[str, Any]], keys: list[str], need: np.ndarray, writer: _Writer) -> None:
    """Hand the finished rows of every unfinished chunk to the writer: its first rows (rows arrive in order), recorded
    as kept (:meth:`Store.write_rows`), so a re-run embeds only the rest; a chunk whose rows all arrived, whole."""
    for c, buf in list(buffers.items()):
        start, stop = store.chunk_rows_range(c)
        cols = np.flatnonzero(need[c])
        n = int(buf["n"])
        if n >= stop - start:  # complete, but not yet handed on (the interrupt came in between)
            writer.put([(keys[j], c, buf["emb"][:, i], buf["bad"]) for i, j in enumerate(cols)])
            del buffers[c]
        elif n > buf["saved"]:
            writer.put(_Rows(c, n, {keys[j]: buf["emb"][:n, i].copy() for i, j in enumerate(cols)}, buf["bad"][:n].copy()))
            buf["saved"] = n
