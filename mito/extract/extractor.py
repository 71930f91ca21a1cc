"""The extractor: tiles -> frozen backbone -> one float16 array per (backbone, zoom, colour) in the store."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import replace
from contextlib import nullcontext
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import DataLoader, Dataset

import mito
from mito.cache import DEFAULT_CHUNK_ROWS, Store, StoreError, Variant, create_store, open_store, tile_list_hash
from mito.cache.backend import backend_capabilities
from mito.cache.store import store_exists, store_format
from mito.extract import distributed
from mito.extract.backbones import BackboneSpec, create_backbone, get_backbone, resolve_weights, spec_summary
from mito.extract.backbones.registry import RANDOM_SHA, file_sha256
from mito.extract.errors import ExtractError
from mito.extract.slide_tiles import check_slide_set, options_from, record_slides, slide_tiling
from mito.extract.sources import TileSource, open_source
from mito.extract.variants import COLORS, Preprocess, normalize, prepare


class ExtractConfig(BaseModel):
    """Everything one `mito extract` run needs (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    store: str
    points: str | None = None
    backbones: list[str] = Field(default_factory=lambda: ["efficientnet_lite0"])
    weights: dict[str, str] = Field(default_factory=dict)
    zooms: list[float] = Field(default_factory=lambda: [1.0])
    colors: list[str] = Field(default_factory=lambda: ["rgb"])
    fit: Literal["resize", "pad"] = "resize"
    pad_mode: Literal["reflect", "white"] = "reflect"
    input_size: int | None = None
    tile_size: int = 224
    task: str | None = None
    label_column: str | None = None
    batch_size: int | None = None  # None: default_batch_size(device)
    num_workers: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    compile: bool = False
    limit: int | None = None
    progress: bool = True
    # whole slides (mito.extract.slide_tiles): tiles of tile_px pixels at mpp um/px over tissue
    mpp: float | None = Field(default=None, gt=0)
    tile_px: int | None = Field(default=None, ge=8)
    tile_um: float | None = Field(default=None, gt=0)
    stride: int | None = Field(default=None, ge=1)
    min_tissue: float = Field(default=0.5, ge=0, le=1)
    slide_mpp: float | None = Field(default=None, gt=0)
    reader: Literal["auto", "openslide", "tifffile"] = "auto"
    annotations: str | None = None
    label_overlap: float | None = Field(default=None, ge=0, le=1)

    @field_validator("zooms")
    @classmethod
    def _zooms(cls, v: list[float]) -> list[float]:
        if not v or any(z <= 0 for z in v):
            raise ValueError("zooms must be positive numbers, e.g. 1,2 or 0.5,1")
        return sorted(set(v), key=v.index)

    @field_validator("colors")
    @classmethod
    def _colors(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in COLORS]
        if not v or bad:
            raise ValueError(f"colors must be among {', '.join(COLORS)} (got {', '.join(bad) or 'none'})")
        return sorted(set(v), key=v.index)

    @field_validator("backbones")
    @classmethod
    def _backbones(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one backbone")
        return sorted(set(v), key=v.index)

    @field_validator("batch_size", "chunk_rows", "tile_size")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ExtractError("--device cuda asked for, but torch sees no CUDA GPU")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def tune_cpu_allocator() -> bool:
    """glibc only: keep freed memory in the process instead of handing it back to the kernel after every op.

    Otherwise each batch's activations come back as fresh zeroed pages, and on a small VM the page faults
    (system time) cost as much as the convolutions. Process-wide; returns True when applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return all(
            libc.mallopt(opt, val) == 1
            for opt, val in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 256 << 20))
        )
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


def default_batch_size(device: torch.device) -> int:
    """Tiles per forward: 256 on a GPU (bf16 ViTs reach their best rate there), 64 on CPU."""
    return 256 if device.type == "cuda" else 64


def default_workers(device: torch.device) -> int:
    """Decoding workers: most cores on a GPU box; one on a small CPU box (the model needs the rest)."""
    n = os.cpu_count() or 1
    return min(16, max(1, n - 1)) if device.type == "cuda" else min(4, max(0, n // 2))


def variant_plan(cfg: ExtractConfig, backbone: str) -> list[tuple[Variant, Preprocess]]:
    """The (variant, preprocessing) pairs one backbone contributes, in zoom-then-colour order."""
    spec = get_backbone(backbone)
    size = cfg.input_size or spec.input_size
    out = []
    for z in cfg.zooms:
        for c in cfg.colors:
            p = Preprocess(size, spec.mean, spec.std, zoom=z, color=c, fit=cfg.fit, pad_mode=cfg.pad_mode)
            out.append((Variant(backbone, z, c), p))
    return out


class _TileDataset(Dataset):
    """Reads each tile once at the widest field of view and returns every variant of it."""

    def __init__(self, source: TileSource, rows: np.ndarray, preps: list[Preprocess]) -> None:
        self.source, self.rows = source, rows
        self.zooms = [p.zoom for p in preps]
        self.views = source.kind == "slides"  # whole slides: each zoom read at its own resolution
        self.context = 1.0 if self.views else max(1.0, 1.0 / min(self.zooms))
        # zoom relative to the region actually read (it is wider than the tile when context > 1)
        self.preps = [replace(p, zoom=1.0 if self.views else p.zoom * self.context) for p in preps]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, bool]:
        """(row, uint8 [variants, 3, S, S], unreadable): uint8 crosses processes and the PCIe bus, 4x less than float."""
        row = int(self.rows[k])
        size = self.preps[0].input_size
        try:
            if self.views:
                imgs = self.source.read_views(row, self.zooms)
                return row, torch.stack([prepare(im, p) for im, p in zip(imgs, self.preps)]), False
            img = self.source.read(row, self.context)
            return row, torch.stack([prepare(img, p) for p in self.preps]), False
        except OSError:
            return row, torch.zeros(len(self.preps), 3, size, size, dtype=torch.uint8), True


def _provenance(spec: BackboneSpec, weights_sha256: str, prep: Preprocess, source: TileSource) -> dict[str, Any]:
    import timm

    return {
        "backbone": spec.name,
        "weights_sha256": weights_sha256,
        "preprocessing": prep.as_dict(),
        "spec": spec_summary(spec),
        "tile_size": source.tile_size,
        **({"slide_tiling": slide_tiling(source.slides["opts"])} if source.slides is not None else {}),
        "versions": {"mito": mito.__version__, "timm": timm.__version__, "torch": torch.__version__},
    }


def _open_or_create(cfg: ExtractConfig, source: TileSource, lock: bool = True) -> Store:
    tiles = source.tiles
    meta = {
        "source": {"path": source.root, "kind": source.kind, "points": cfg.points, "tile_size": source.tile_size},
        "tasks": [cfg.task or "label"] if (cfg.task or "label") in tiles else [],
        "versions": {"mito": mito.__version__, "torch": torch.__version__},
    }
    if store_exists(cfg.store):
        store = open_store(cfg.store, mode="a", lock=lock)
        if store.meta.get("tile_list_sha256") != tile_list_hash(tiles["tile_id"].astype(str).tolist()):
            store.close()
            raise StoreError(
                f"{cfg.store} was made from a different tile list ({store.n_tiles} tiles from "
                f"{store.meta.get('source', {}).get('path')}); use a new --store"
            )
        return store
    return create_store(cfg.store, tiles, meta, chunk_rows=cfg.chunk_rows)


class _Writer:
    """Writes finished chunks on a background thread so the model never waits for compression or disk."""

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
                    for key, chunk, feats, bad in item:
                        self.store.write_chunk(key, chunk, feats, bad)
                except BaseException as e:  # surfaced on the main thread
                    self.error = e

    def put(self, item: list[tuple[str, int, np.ndarray, np.ndarray]]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        if self.error is not None:
            raise self.error


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} tiles/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def extract(cfg: ExtractConfig) -> dict[str, Any]:
    """Embed every tile of ``cfg.source`` with each backbone/variant, skipping chunks already done.

    Under torchrun each rank embeds its share of the chunks (see :mod:`mito.extract.distributed`).
    """
    dist = distributed.setup()
    try:
        return _extract(cfg, dist)
    except Exception as e:
        dist.fail(e)  # the other ranks stop at their next sync instead of waiting forever
        raise


def _extract(cfg: ExtractConfig, dist: distributed.Dist) -> dict[str, Any]:
    device = dist.device(pick_device(cfg.device))
    if device.type == "cpu":
        tune_cpu_allocator()
    if dist.active and not backend_capabilities(cfg.store, store_format(cfg.store)).shared_writers:
        raise ExtractError("several ranks cannot write one HDF5 file: use a .zarr store with torchrun")
    for b in cfg.backbones:  # fail before any work when a backbone or its weights are missing
        resolve_weights(get_backbone(b), cfg.weights.get(b))
    slide_opts = options_from(
        cfg.mpp, cfg.tile_px, cfg.tile_um, cfg.zooms, stride_px=cfg.stride, min_tissue=cfg.min_tissue,
        slide_mpp=cfg.slide_mpp, reader=cfg.reader, annotations=cfg.annotations, label_overlap=cfg.label_overlap,
    )
    source = open_source(cfg.source, cfg.points, cfg.task, cfg.tile_size, cfg.label_column, slide_opts, cfg.progress)
    if cfg.limit is not None:
        source.tiles = source.tiles.iloc[: cfg.limit].reset_index(drop=True)
    if min(cfg.zooms) < 1 and not source.has_context:
        raise ExtractError(
            f"zoom {min(cfg.zooms):g} needs pixels around each tile, but {source.kind} tiles are fixed crops; "
            "use zooms >= 1 (or a slide with --points)"
        )
    check_slide_set(cfg.store, source)
    store = dist.on_main(lambda: _open_or_create(cfg, source))  # only rank 0 creates; the others wait
    if store is None:  # rank 0 holds the writer lock for the whole job
        store = _open_or_create(cfg, source, lock=False)
    if dist.main and not store.capabilities.resumable_per_chunk:
        print(f"note: {cfg.store} is HDF5: a killed run or a full disk loses that run's chunks (a .zarr store resumes per chunk: use one for long runs)", file=sys.stderr)
    summary: dict[str, Any] = {"store": cfg.store, "n_tiles": store.n_tiles, "device": str(device), "backbones": {}}
    if source.slides is not None:
        summary["skipped_slides"] = source.slides["info"]["skipped"]
        if dist.main:
            record_slides(store, cfg.store, source.slides["info"])
    if dist.active:
        summary.update(rank=dist.rank, world_size=dist.world)
    try:
        for b in cfg.backbones:
            summary["backbones"][b] = _extract_backbone(cfg, b, source, store, device, dist)
        parts = dist.sync(payload=summary["backbones"])  # every rank's chunks are on disk past this point
        if not dist.main:
            return summary
        summary["backbones"] = {b: distributed.merge_summaries([p[b] for p in parts]) for b in cfg.backbones} if dist.active else parts[0]
        bad = np.flatnonzero(store.unreadable)
        summary["unreadable"] = store.tiles["tile_id"].iloc[bad].astype(str).tolist()
        store.record("unreadable_tiles", summary["unreadable"])
        store.record("last_run", {k: v for k, v in summary.items() if k != "unreadable"})
    finally:
        store.close()
    return summary


def _extract_backbone(
    cfg: ExtractConfig, name: str, source: TileSource, store: Store, device: torch.device, dist: distributed.Dist
) -> dict[str, Any]:
    plan = variant_plan(cfg, name)
    spec = get_backbone(name)
    weights = resolve_weights(spec, cfg.weights.get(name))
    sha = file_sha256(weights) if weights is not None else RANDOM_SHA
    keys = [v.key for v, _ in plan]
    # refuse mismatched preprocessing before loading the model; rank 0 adds the variants, the others re-read them
    dist.on_main(lambda: [store.ensure_variant(v.key, spec.embed_dim, _provenance(spec, sha, p, source)) for v, p in plan])
    if not dist.main:
        store.refresh()
    todo = np.zeros(store.n_chunks, bool)
    done = {k: store.sound_done_chunks(k) for k in keys}  # a chunk that fails its checksum is redone
    for k in keys:
        todo |= ~done[k]
    skipped = int((~todo).sum())  # chunks finished before this run (the same on every rank)
    todo &= dist.owned(store.n_chunks)  # rank r embeds chunks c with c % world == r
    if not todo.any():
        return {"variants": keys, "rows": 0, "skipped_chunks": skipped, "seconds": 0.0, "tiles_per_s": None}

    enc = create_backbone(name, weights=cfg.weights.get(name), device=device)
    rows = np.concatenate([np.arange(*store.chunk_rows_range(int(c))) for c in np.flatnonzero(todo)])
    ds = _TileDataset(source, rows, [p for _, p in plan])
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
    batch_size = cfg.batch_size or default_batch_size(device)
    cuda = device.type == "cuda"
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    model = enc.model
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device)

    def embed(x: torch.Tensor) -> torch.Tensor:  # normalising on the device fuses into the compiled graph
        return enc.embed(normalize(x, mean, std))

    forward = _compiled(embed) if cfg.compile else embed
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    n_var = len(plan)

    buffers: dict[int, dict[str, Any]] = {}
    writer = _Writer(store)
    t0 = time.perf_counter()
    n_done = 0
    try:
        with _progress(cfg.progress and dist.main) as bar, torch.inference_mode(), autocast:
            task = bar.add_task(f"{name} x{n_var}", total=len(rows), rate="-")

            def finish(idx: torch.Tensor, out: torch.Tensor, bad: torch.Tensor, ready: Any) -> int:
                if ready is not None:
                    ready.synchronize()  # the copy back from the GPU has landed
                emb = out.view(len(idx), n_var, -1).numpy()
                emb[bad.numpy()] = np.nan
                _collect(store, buffers, idx.numpy(), emb, bad.numpy(), keys, done, writer)
                bar.update(task, advance=len(idx), rate=f"{(n_done + len(idx)) / (time.perf_counter() - t0):.1f}")
                return len(idx)

            pending = None  # the previous batch: handled on the CPU while the device runs the next one
            for idx, x, bad in loader:
                b = x.shape[0]
                x = x.view(b * n_var, *x.shape[2:])
                if cuda:
                    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                pad = batch_size - b if cfg.compile else 0
                if pad:  # a ragged last batch would trigger a recompile
                    x = torch.cat([x, x[-1:].expand(pad * n_var, *x.shape[1:])])
                out, ready = forward(x)[: b * n_var].float(), None
                if cuda:  # start the copy back without waiting for it
                    out, ready = out.to("cpu", non_blocking=True), torch.cuda.Event()
                    ready.record()
                if pending is not None:
                    n_done += finish(*pending)
                pending = (idx, out, bad, ready)
            if pending is not None:
                n_done += finish(*pending)
    finally:
        writer.close()
    secs = time.perf_counter() - t0
    return {
        "variants": keys,
        "rows": int(n_done),
        "skipped_chunks": skipped,
        "seconds": round(secs, 2),
        "tiles_per_s": round(n_done / secs, 2) if secs > 0 else None,
        "weights_sha256": enc.weights_sha256,
        "workers": workers,
        "batch_size": batch_size,
    }


def _compiled(fn: Any) -> Any:
    """``torch.compile(fn)`` that falls back to eager, once and with a warning, when compiling fails
    (no C++ compiler, an unsupported op ...). Inductor caches compiled graphs on disk between runs."""
    import warnings

    compiled = torch.compile(fn, dynamic=False)
    state = {"fn": None}  # decided by the first call

    def call(x: torch.Tensor) -> torch.Tensor:
        if state["fn"] is not None:
            return state["fn"](x)
        try:
            out = compiled(x)
            state["fn"] = compiled
        except Exception as e:  # compile errors surface on the first call
            warnings.warn(f"torch.compile failed, running eager: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
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
    done: dict[str, np.ndarray],
    writer: _Writer,
) -> None:
    """Gather rows into their chunk's buffer; hand each chunk to the writer once all its rows arrived."""
    for c in np.unique(idx // store.chunk_rows):
        c = int(c)
        start, stop = store.chunk_rows_range(c)
        buf = buffers.setdefault(
            c, {"emb": np.empty((stop - start, len(keys), emb.shape[-1]), np.float32), "bad": np.zeros(stop - start, bool), "n": 0}
        )
        sel = (idx // store.chunk_rows) == c
        local = idx[sel] - start
        buf["emb"][local] = emb[sel]
        buf["bad"][local] = bad[sel]
        buf["n"] += int(sel.sum())
        if buf["n"] == stop - start:
            item = [(k, c, buf["emb"][:, j], buf["bad"]) for j, k in enumerate(keys) if not done[k][c]]
            writer.put(item)
            del buffers[c]
