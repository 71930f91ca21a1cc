"""The embedding store: one tile table plus one float16 array per (backbone, zoom, colour) variant.

Layout (identical in Zarr v3 and HDF5):

    attrs["mito"]                 JSON: version, created, source, tile_list_sha256, chunk_rows, variants
    tiles/<column>                one 1-D array per tile-table column (strings as UTF-8)
    unreadable                    bool (n,): the tile could not be decoded (its feature rows are NaN)
    features/<bb>/z<zoom>/<color> float16 (n, dim), chunked by rows
    done/<bb>/z<zoom>/<color>     bool (n_chunks,), one storage chunk per flag

A chunk's done flag is written only after its rows are on disk, and every Zarr write replaces
a whole file atomically, so a killed writer never leaves a wrong row marked done.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.errors import MitoError

STORE_VERSION = 1
DEFAULT_CHUNK_ROWS = 1024


class StoreError(MitoError):
    """A store cannot be opened, written or read as asked (the message is one line for the user)."""


@dataclass(frozen=True)
class Variant:
    """One embedding variant: a backbone seen at one zoom in one colour mode."""

    backbone: str
    zoom: float
    color: str

    @property
    def key(self) -> str:
        """The user-facing name, e.g. ``efficientnet_lite0:z1:rgb``."""
        return f"{self.backbone}:z{format_zoom(self.zoom)}:{self.color}"

    @property
    def path(self) -> str:
        """The array path inside the store."""
        return f"{self.backbone}/z{format_zoom(self.zoom)}/{self.color}"


def format_zoom(zoom: float) -> str:
    """Format a zoom factor the way variant keys spell it (1, 2, 0.5)."""
    return f"{zoom:g}"


def parse_variant(key: str) -> Variant:
    """Parse ``backbone:z<zoom>:<color>`` into a Variant."""
    parts = key.split(":")
    if len(parts) != 3 or not parts[1].startswith("z"):
        raise StoreError(f"bad feature name {key!r}: expected backbone:z<zoom>:<color>, e.g. efficientnet_lite0:z1:rgb")
    try:
        zoom = float(parts[1][1:])
    except ValueError:
        raise StoreError(f"bad zoom in feature name {key!r}: expected z1, z2, z0.5 ...") from None
    return Variant(parts[0], zoom, parts[2])


def tile_list_hash(tile_ids: Sequence[str]) -> str:
    """sha256 of the ordered tile ids: two stores with the same hash hold the same rows."""
    h = hashlib.sha256()
    for t in tile_ids:
        h.update(str(t).encode())
        h.update(b"\n")
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def is_url(path: str | os.PathLike) -> bool:
    """True for fsspec URLs (``s3://``, ``memory://``, ``file://`` ...), False for local paths."""
    return "://" in str(path)


def store_exists(path: str | os.PathLike) -> bool:
    """True when something already lives at ``path`` (a local path, or a Zarr group at an fsspec URL)."""
    path = str(path)
    if not is_url(path):
        return os.path.exists(path)
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(path)
        return bool(fs.exists(root.rstrip("/") + "/zarr.json"))
    except Exception as e:  # fsspec raises many types for bad URLs, missing drivers or credentials
        raise StoreError(f"cannot reach {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def store_format(path: str | os.PathLike) -> str:
    """``hdf5`` for .h5/.hdf5 paths, ``zarr`` otherwise (the default)."""
    return "hdf5" if str(path).lower().endswith((".h5", ".hdf5")) else "zarr"


# ---------------------------------------------------------------- backends
class _ZarrBackend:
    def __init__(self, path: str, mode: str) -> None:
        import zarr

        self.path = path
        # fsspec URLs (s3://, gs://, memory://, file://) go through zarr's FsspecStore
        opts = {"storage_options": {"auto_mkdir": True}} if path.startswith("file://") else {}
        try:
            self.root = zarr.open_group(path, mode=mode, zarr_format=3, **opts)
        except Exception as e:  # zarr raises several types for a missing or foreign folder
            raise StoreError(f"{path} is not a mito store (not a readable Zarr v3 group: {type(e).__name__})") from None

    def get_attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs.get("mito", {}))

    def set_attrs(self, meta: dict[str, Any]) -> None:
        self.root.attrs["mito"] = meta

    def has(self, name: str) -> bool:
        try:
            self.root[name]
            return True
        except KeyError:
            return False

    def create(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], fill: Any) -> None:
        from zarr.codecs import BloscCodec

        kw: dict[str, Any] = {"fill_value": fill}
        if np.dtype(dtype) == np.float16:
            kw["compressors"] = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
        self.root.create_array(name, shape=shape, dtype=dtype, chunks=chunks, overwrite=True, **kw)

    def write_strings(self, name: str, values: np.ndarray, chunk: int) -> None:
        arr = self.root.create_array(name, shape=values.shape, dtype=str, chunks=(chunk,), overwrite=True)
        arr[:] = values.astype(str)

    def read(self, name: str, sel: Any = slice(None)) -> np.ndarray:
        return np.asarray(self.root[name][sel])

    def write(self, name: str, sel: Any, value: np.ndarray) -> None:
        self.root[name][sel] = value

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.root[name].shape)

    def close(self) -> None:
        pass


class _H5Backend:
    def __init__(self, path: str, mode: str) -> None:
        import h5py

        self.path = path
        if is_url(path):
            raise StoreError(f"HDF5 stores must be local files ({path}); use a .zarr store for fsspec URLs")
        h5mode = {"r": "r", "a": "a", "w": "w"}[mode]
        try:
            self.f = h5py.File(path, h5mode, libver="latest")
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot open HDF5 store {path}: {e}") from None

    def get_attrs(self) -> dict[str, Any]:
        raw = self.f.attrs.get("mito")
        return json.loads(raw) if raw is not None else {}

    def set_attrs(self, meta: dict[str, Any]) -> None:
        self.f.attrs["mito"] = json.dumps(meta)
        self.f.flush()

    def has(self, name: str) -> bool:
        return name in self.f

    def create(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], fill: Any) -> None:
        if name in self.f:
            del self.f[name]
        kw: dict[str, Any] = {}
        if np.dtype(dtype) == np.float16:
            kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        self.f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill, **kw)

    def write_strings(self, name: str, values: np.ndarray, chunk: int) -> None:
        import h5py

        if name in self.f:
            del self.f[name]
        self.f.create_dataset(name, data=values.astype(str).astype(object), dtype=h5py.string_dtype())

    def read(self, name: str, sel: Any = slice(None)) -> np.ndarray:
        ds = self.f[name]
        out = ds[sel]
        if ds.dtype.kind == "O":
            out = np.asarray(ds.asstr()[sel], dtype=object)
        return np.asarray(out)

    def write(self, name: str, sel: Any, value: np.ndarray) -> None:
        self.f[name][sel] = value
        self.f.flush()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.f[name].shape)

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------- the store
class Store:
    """An open embedding store; use :func:`create_store` or :func:`open_store`."""

    def __init__(self, backend: _ZarrBackend | _H5Backend, path: str, writable: bool) -> None:
        self._b = backend
        self.path = path
        self.writable = writable
        self.meta: dict[str, Any] = backend.get_attrs()
        if not self.meta or self.meta.get("store_version") is None:
            backend.close()
            raise StoreError(f"{path} is not a mito store (no mito attributes)")
        self._tiles: pd.DataFrame | None = None

    # -- context manager
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying file (a no-op for Zarr)."""
        self._b.close()

    def refresh(self) -> None:
        """Re-read attributes another process wrote (e.g. variants rank 0 added in a distributed run)."""
        mode = "a" if self.writable else "r"
        self._b.close()
        self._b = _backend(self.path, mode, self.format)
        self.meta = self._b.get_attrs()
        self._tiles = None

    # -- description
    @property
    def format(self) -> str:
        """``zarr`` or ``hdf5``."""
        return "hdf5" if isinstance(self._b, _H5Backend) else "zarr"

    @property
    def n_tiles(self) -> int:
        """Number of rows (tiles)."""
        return int(self.meta["n_tiles"])

    @property
    def chunk_rows(self) -> int:
        """Rows per storage chunk (the unit of resume)."""
        return int(self.meta["chunk_rows"])

    @property
    def n_chunks(self) -> int:
        """Number of row chunks."""
        return max(1, math.ceil(self.n_tiles / self.chunk_rows))

    @property
    def tasks(self) -> list[str]:
        """Label columns of the tile table."""
        return list(self.meta.get("tasks", []))

    @property
    def variants(self) -> list[str]:
        """Keys of every variant in the store, complete or not, in insertion order."""
        return list(self.meta.get("variants", {}))

    def variant_info(self, key: str) -> dict[str, Any]:
        """Dimension and provenance (backbone, weights hash, preprocessing) of one variant."""
        try:
            return dict(self.meta["variants"][key])
        except KeyError:
            raise StoreError(self._unknown_variant_msg(key)) from None

    def _unknown_variant_msg(self, key: str) -> str:
        have = ", ".join(self.variants) or "none"
        return f"feature {key!r} is not in {self.path} (it has: {have})"

    @property
    def tiles(self) -> pd.DataFrame:
        """The tile table (one row per tile, aligned with every feature array)."""
        if self._tiles is None:
            cols = self.meta["tile_columns"]
            data = {}
            for c in cols:
                v = self._b.read(f"tiles/{c['name']}")
                kind = c["kind"]
                if kind == "str":
                    s = pd.Series(v.astype(object), dtype=object)
                    data[c["name"]] = s.where(s != "", None)
                elif kind == "float":
                    data[c["name"]] = v.astype(np.float64)
                else:
                    data[c["name"]] = v.astype(np.int64)
            self._tiles = pd.DataFrame(data)
        return self._tiles

    @property
    def unreadable(self) -> np.ndarray:
        """Boolean mask of tiles that could not be decoded."""
        return self._b.read("unreadable").astype(bool)

    def done_chunks(self, key: str) -> np.ndarray:
        """Boolean mask over row chunks: True where the chunk is fully written for this variant."""
        self.variant_info(key)
        return self._b.read(f"done/{parse_variant(key).path}").astype(bool)

    def is_complete(self, key: str) -> bool:
        """True when every chunk of the variant is written."""
        return bool(self.done_chunks(key).all())

    def chunk_rows_range(self, chunk: int) -> tuple[int, int]:
        """Row range [start, stop) of a chunk."""
        start = chunk * self.chunk_rows
        return start, min(self.n_tiles, start + self.chunk_rows)

    # -- writing
    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only")

    def _save_meta(self) -> None:
        self._b.set_attrs(self.meta)

    def ensure_variant(self, key: str, dim: int, provenance: dict[str, Any]) -> bool:
        """Create a variant's arrays, or check an existing one matches; returns True if newly created."""
        self._require_writable()
        v = parse_variant(key)
        existing = self.meta.get("variants", {}).get(key)
        if existing is not None:
            old = {k: existing.get(k) for k in provenance}
            if existing.get("dim") != dim or old != provenance:
                diff = sorted(k for k in provenance if existing.get(k) != provenance[k])
                if existing.get("dim") != dim:
                    diff.insert(0, "dim")
                raise StoreError(
                    f"{self.path} already holds {key} made differently ({', '.join(diff)} differ); "
                    "use a new --store or remove that variant first"
                )
            return False
        self._b.create(f"features/{v.path}", (self.n_tiles, dim), "float16", (self.chunk_rows, dim), np.nan)
        self._b.create(f"done/{v.path}", (self.n_chunks,), "bool", (1,), False)
        self.meta.setdefault("variants", {})[key] = {"dim": int(dim), **provenance, "added": _now()}
        self._save_meta()
        return True

    def write_chunk(self, key: str, chunk: int, features: np.ndarray, unreadable: np.ndarray | None = None) -> None:
        """Write one whole row chunk of a variant, then mark it done."""
        self._require_writable()
        v = parse_variant(key)
        start, stop = self.chunk_rows_range(chunk)
        if features.shape[0] != stop - start:
            raise StoreError(f"chunk {chunk} of {key} needs {stop - start} rows, got {features.shape[0]}")
        if unreadable is not None and unreadable.any():
            cur = self._b.read("unreadable", slice(start, stop)).astype(bool)
            self._b.write("unreadable", slice(start, stop), cur | unreadable)
        self._b.write(f"features/{v.path}", slice(start, stop), features.astype(np.float16))
        self._b.write(f"done/{v.path}", slice(chunk, chunk + 1), np.array([True]))

    def remove_variant(self, key: str) -> None:
        """Forget a variant (its arrays are emptied and its provenance dropped)."""
        self._require_writable()
        self.variant_info(key)
        v = parse_variant(key)
        self._b.create(f"done/{v.path}", (self.n_chunks,), "bool", (1,), False)
        del self.meta["variants"][key]
        self._save_meta()

    def record(self, name: str, value: Any) -> None:
        """Store a JSON-able value in the store's attributes (e.g. the last run's summary)."""
        self._require_writable()
        self.meta[name] = value
        self._save_meta()

    # -- reading
    def _check_readable(self, keys: Sequence[str], allow_incomplete: bool) -> list[Variant]:
        if not keys:
            raise StoreError("no features chosen")
        out = []
        for k in keys:
            self.variant_info(k)
            if not allow_incomplete and not self.is_complete(k):
                done = self.done_chunks(k)
                raise StoreError(
                    f"{k} in {self.path} is incomplete ({done.sum()}/{done.size} chunks); re-run mito extract to finish it"
                )
            out.append(parse_variant(k))
        return out

    def read(
        self,
        keys: Sequence[str],
        rows: np.ndarray | slice | None = None,
        dtype: Any = np.float32,
        allow_incomplete: bool = False,
    ) -> np.ndarray:
        """Features of the given variants concatenated along columns, for the given rows (default all)."""
        vs = self._check_readable(keys, allow_incomplete)
        sel: Any = slice(None) if rows is None else rows
        if isinstance(sel, np.ndarray):
            sel = np.asarray(sel)
            if sel.dtype == bool:
                sel = np.flatnonzero(sel)
            order = np.argsort(sel, kind="stable")
            sorted_rows = sel[order]
            parts = [self._read_rows(f"features/{v.path}", sorted_rows) for v in vs]
            out = np.concatenate(parts, axis=1).astype(dtype, copy=False)
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            return out[inv]
        parts = [self._b.read(f"features/{v.path}", sel) for v in vs]
        return np.concatenate(parts, axis=1).astype(dtype, copy=False)

    def _read_rows(self, name: str, sorted_rows: np.ndarray) -> np.ndarray:
        """Read sorted row indices chunk by chunk (bounded memory, works for Zarr and HDF5)."""
        if sorted_rows.size == 0:
            return self._b.read(name, slice(0, 0))
        out = []
        chunk_of = sorted_rows // self.chunk_rows
        for c in np.unique(chunk_of):
            start, stop = self.chunk_rows_range(int(c))
            block = self._b.read(name, slice(start, stop))
            out.append(block[sorted_rows[chunk_of == c] - start])
        return np.concatenate(out, axis=0)

    def iter_chunks(
        self,
        keys: Sequence[str],
        rows: np.ndarray | None = None,
        dtype: Any = np.float32,
        chunks: Sequence[int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row_indices, features) one storage chunk at a time (in ``chunks`` order when given): memory stays bounded by a chunk."""
        vs = self._check_readable(keys, allow_incomplete=False)
        wanted = None if rows is None else np.zeros(self.n_tiles, bool)
        if wanted is not None:
            wanted[rows] = True
        for c in range(self.n_chunks) if chunks is None else chunks:
            c = int(c)
            if not 0 <= c < self.n_chunks:
                raise StoreError(f"chunk {c} out of range for a store of {self.n_chunks} chunks")
            start, stop = self.chunk_rows_range(c)
            idx = np.arange(start, stop)
            if wanted is not None:
                keep = wanted[start:stop]
                if not keep.any():
                    continue
            block = np.concatenate([self._b.read(f"features/{v.path}", slice(start, stop)) for v in vs], axis=1)
            if wanted is not None:
                idx, block = idx[keep], block[keep]
            yield idx, block.astype(dtype, copy=False)

    # -- checks and summaries
    def info(self) -> dict[str, Any]:
        """Summary: tiles, label counts, variants with dims and done %, provenance."""
        variants = {}
        for k in self.variants:
            done = self.done_chunks(k)
            vi = self.variant_info(k)
            variants[k] = {"dim": vi["dim"], "done_pct": round(100.0 * done.mean(), 1), **vi}
        labels = {}
        for t in self.tasks:
            if t in self.tiles:
                labels[t] = {str(a): int(b) for a, b in self.tiles[t].value_counts(dropna=True).items()}
        return {
            "path": self.path,
            "format": self.format,
            "n_tiles": self.n_tiles,
            "chunk_rows": self.chunk_rows,
            "tasks": labels,
            "columns": list(self.tiles.columns),
            "unreadable": int(self.unreadable.sum()),
            "variants": variants,
            "source": self.meta.get("source"),
            "tile_list_sha256": self.meta.get("tile_list_sha256"),
            "created": self.meta.get("created"),
            "versions": self.meta.get("versions"),
        }

    def verify(self) -> list[str]:
        """Problems that make the store incomplete or unsound (empty list = sound and complete)."""
        problems: list[str] = []
        tiles = self.tiles
        if len(tiles) != self.n_tiles:
            problems.append(f"tile table has {len(tiles)} rows, attributes say {self.n_tiles}")
        if "tile_id" in tiles and tile_list_hash(tiles["tile_id"].astype(str).tolist()) != self.meta.get("tile_list_sha256"):
            problems.append("tile list hash does not match the tile table")
        if not self.variants:
            problems.append("no feature variants")
        bad = self.unreadable
        for k in self.variants:
            v = parse_variant(k)
            dim = self.variant_info(k)["dim"]
            shape = self._b.shape(f"features/{v.path}")
            if shape != (self.n_tiles, dim):
                problems.append(f"{k}: shape {shape}, expected {(self.n_tiles, dim)}")
                continue
            done = self.done_chunks(k)
            if not done.all():
                problems.append(f"{k}: {int((~done).sum())} of {done.size} chunks not written")
            for idx, block in self._iter_raw(v, done):
                nan_rows = np.isnan(block).any(axis=1)
                if (nan_rows & ~bad[idx]).any():
                    problems.append(f"{k}: {int((nan_rows & ~bad[idx]).sum())} readable rows hold NaN in written chunks")
                if np.isinf(block).any():
                    problems.append(f"{k}: infinite values in written chunks")
        return problems

    def _iter_raw(self, v: Variant, done: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for c in np.flatnonzero(done):
            start, stop = self.chunk_rows_range(int(c))
            yield np.arange(start, stop), self._b.read(f"features/{v.path}", slice(start, stop))


def _backend(path: str, mode: str, fmt: str | None = None) -> _ZarrBackend | _H5Backend:
    fmt = fmt or store_format(path)
    return _H5Backend(path, mode) if fmt == "hdf5" else _ZarrBackend(path, mode)


def _column_kind(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_integer_dtype(s):
        return "int"
    if pd.api.types.is_float_dtype(s):
        return "float"
    return "str"


def create_store(
    path: str | os.PathLike,
    tiles: pd.DataFrame,
    meta: dict[str, Any],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Store:
    """Create a new store holding ``tiles`` (needs a unique ``tile_id`` column); refuses to overwrite."""
    path = str(path)
    if "tile_id" not in tiles:
        raise StoreError("the tile table needs a tile_id column")
    if tiles["tile_id"].duplicated().any():
        dup = tiles["tile_id"][tiles["tile_id"].duplicated()].iloc[0]
        raise StoreError(f"duplicate tile id {dup!r} in the tile list")
    if len(tiles) == 0:
        raise StoreError("no tiles to store")
    if chunk_rows < 1:
        raise StoreError("chunk_rows must be >= 1")
    if store_exists(path):
        raise StoreError(f"{path} already exists")
    fmt = store_format(path)
    tmp = path if "://" in path else _tmp_sibling(path)
    b = _backend(tmp, "w", fmt)
    try:
        cols = []
        for name in tiles.columns:
            s = tiles[name]
            kind = _column_kind(s)
            if kind == "str":
                vals = s.map(lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)).to_numpy()
                b.write_strings(f"tiles/{name}", vals, max(1, min(len(s), 65536)))
            else:
                arr = s.to_numpy(dtype=np.int64 if kind == "int" else np.float64)
                b.create(f"tiles/{name}", arr.shape, arr.dtype, (max(1, min(len(s), 65536)),), 0)
                b.write(f"tiles/{name}", slice(None), arr)
            cols.append({"name": str(name), "kind": kind})
        n = len(tiles)
        b.create("unreadable", (n,), "bool", (chunk_rows,), False)
        full = {
            "store_version": STORE_VERSION,
            "format": fmt,
            "created": _now(),
            "n_tiles": n,
            "chunk_rows": int(chunk_rows),
            "tile_columns": cols,
            "tile_list_sha256": tile_list_hash(tiles["tile_id"].astype(str).tolist()),
            "variants": {},
            **meta,
        }
        b.set_attrs(full)
    finally:
        b.close()
    if tmp != path:
        os.replace(tmp, path)
    return open_store(path, mode="a")


def _tmp_sibling(path: str) -> str:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.creating")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return str(tmp)


def open_store(path: str | os.PathLike, mode: str = "r") -> Store:
    """Open an existing store for reading (``r``) or appending variants (``a``)."""
    path = str(path)
    if mode not in ("r", "a"):
        raise StoreError(f"mode must be 'r' or 'a', not {mode!r}")
    if not store_exists(path):
        raise StoreError(f"no store at {path}")
    return Store(_backend(path, mode), path, writable=(mode == "a"))
