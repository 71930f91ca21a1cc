"""The embedding store: one tile table plus one float16 array per (backbone, zoom, colour) variant.

Layout (identical in Zarr v3 and HDF5):

    attrs["mito"]                 JSON: version, created, source, tile_list_sha256, chunk_rows, variants
    tiles/<column>                one 1-D array per tile-table column (strings as UTF-8; yes/no as int8, -1 = missing)
    unreadable                    bool (n,): the tile could not be decoded (its feature rows are NaN)
    features/<bb>/z<zoom>/<color> float16 (n, dim), chunked by rows
    done/<bb>/z<zoom>/<color>     bool (n_chunks,), one storage chunk per flag

What it guarantees (the backend's :class:`~mito.store.backend.Capabilities` say which format gives what):

- every chunk carries a checksum (Zarr: crc32c codec; HDF5: fletcher32); a reader refuses a damaged chunk
  in one line, and :meth:`Store.verify` names every defect it finds;
- a chunk's done flag is written only after its rows are on disk, and a done chunk that fails its checksum
  counts as not done, so re-running extract rewrites it;
- one writer at a time: an OS lock beside the store (never stale after kill -9). fsspec URLs are unlocked;
- Zarr resumes per chunk (each chunk file is replaced atomically); HDF5 is written to a copy that replaces
  the file when the writer closes, so a killed run leaves the previous file (HDF5 resumes per run);
- tiles can be added (:meth:`Store.append_tiles`): the intent is written to the attributes first, then every
  array grows, then one attribute write commits the new length and tile-list hash. A store whose append was
  killed part-way opens only for writing, where the same append (re-run) finishes it; old rows never change.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.core.errors import os_error_line
from mito.core.validation import as_dict, as_list
from mito.core.wording import counted
from mito.store.backend import Capabilities, StoreBackend, backend_capabilities, is_url, open_backend
from mito.store.errors import StoreError
from mito.store.lock import StoreLock
from mito.store.meta import meta_problems

STORE_VERSION = 1
DEFAULT_CHUNK_ROWS = 1024
TILE_DIMS = ["tile"]
FEATURE_DIMS = ["tile", "feature"]
DONE_DIMS = ["chunk"]
STAGED = "tiles_update"  # new tile-table columns wait here until an update commits


@dataclass(frozen=True)
class Variant:
    """One embedding variant: a backbone seen at one zoom in one colour mode, optionally an augmented view of it
    (``view`` e.g. ``hed0`` or ``flip``: row i holds tile i's augmented image, see mito.extract.augment)."""

    backbone: str
    zoom: float
    color: str
    view: str = ""

    @property
    def key(self) -> str:
        """The user-facing name, e.g. ``efficientnet_lite0:z1:rgb`` (a view: ``efficientnet_lite0:z1:rgb:hed0``)."""
        return f"{self.backbone}:z{format_zoom(self.zoom)}:{self.color}" + (f":{self.view}" if self.view else "")

    @property
    def path(self) -> str:
        """The array path inside the store (a view sits beside its variant: ``.../rgb.hed0``)."""
        return f"{self.backbone}/z{format_zoom(self.zoom)}/{self.color}" + (f".{self.view}" if self.view else "")

    @property
    def base(self) -> str:
        """Key of the variant this is a view of (its own key when it is no view)."""
        return f"{self.backbone}:z{format_zoom(self.zoom)}:{self.color}"


def format_zoom(zoom: float) -> str:
    """Format a zoom factor the way variant keys spell it (1, 2, 0.5)."""
    return f"{zoom:g}"


def parse_variant(key: str) -> Variant:
    """Parse ``backbone:z<zoom>:<color>[:<view>]`` into a Variant."""
    parts = key.split(":")
    if len(parts) not in (3, 4) or not parts[1].startswith("z") or (len(parts) == 4 and not parts[3].isalnum()):
        raise StoreError(f"bad feature name {key!r}: expected backbone:z<zoom>:<color>, e.g. efficientnet_lite0:z1:rgb")
    try:
        zoom = float(parts[1][1:])
    except ValueError:
        raise StoreError(f"bad zoom in feature name {key!r}: expected z1, z2, z0.5 ...") from None
    return Variant(parts[0], zoom, parts[2], parts[3] if len(parts) == 4 else "")


def variant_key(path: str) -> str:
    """The key of the variant stored at array path ``bb/z1/rgb`` (a view: ``bb/z1/rgb.hed0`` -> ``bb:z1:rgb:hed0``)."""
    bb, zoom, color = path.rsplit("/", 2)
    color, _, view = color.partition(".")
    return f"{bb}:{zoom}:{color}" + (f":{view}" if view else "")


def is_view(key: str) -> bool:
    """True for an augmented view (``backbone:z<zoom>:<color>:<view>``), which is never a feature set of its own."""
    return key.count(":") == 3


def views_of(variants: Sequence[str], key: str) -> list[str]:
    """Keys of the augmented views of variant ``key`` among ``variants``, in store order."""
    return [k for k in variants if is_view(k) and k.rsplit(":", 1)[0] == key]


def tile_list_hash(tile_ids: Sequence[str]) -> str:
    """sha256 of the ordered tile ids: two stores with the same hash hold the same rows."""
    h = hashlib.sha256()
    for t in tile_ids:
        h.update(str(t).encode())
        h.update(b"\n")
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def store_exists(path: str | os.PathLike) -> bool:
    """True when something already lives at ``path`` (a local file or non-empty folder, or a Zarr group at an fsspec URL)."""
    path = str(path)
    if not is_url(path):
        return os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path))  # an empty folder is free
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(path)
        return bool(fs.exists(root.rstrip("/") + "/zarr.json"))
    except Exception as e:  # fsspec raises many types for bad URLs, missing drivers or credentials
        raise StoreError(f"cannot reach {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def store_format(path: str | os.PathLike) -> str:
    """``hdf5`` for .h5/.hdf5 paths, ``zarr`` otherwise (the default)."""
    return "hdf5" if str(path).lower().endswith((".h5", ".hdf5")) else "zarr"


# ---------------------------------------------------------------- the store
def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def _damage(e: BaseException) -> str:
    """What a failed read says about the data, in a few words."""
    if isinstance(e, KeyError):
        return "missing"
    msg = _first_line(e)
    if "checksum" in msg.lower():
        return "checksum mismatch"
    if "filter returned failure" in msg:
        return "checksum or decompression failure"
    return f"cannot be decoded: {type(e).__name__}: {msg}"


def _pos_int(x: Any) -> int | None:
    return x if type(x) is int and x >= 1 else None


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key.sub: the store has A, this run B`` for every leaf of ``new`` that ``old`` holds differently."""
    out = []
    for k, b in new.items():
        a = old.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: the store has {a}, this run {b}")
    return out


class Store:
    """An open embedding store; use :func:`create_store` or :func:`open_store`."""

    def __init__(self, backend: StoreBackend, path: str, writable: bool, lock: StoreLock | None = None, strict: bool = True) -> None:
        self._b = backend
        self.path = path
        self.writable = writable
        self._lock = lock
        self._failed = False  # a write failed: HDF5 then drops this session's copy on close
        self._tiles: pd.DataFrame | None = None
        self.meta: dict[str, Any] = backend.get_attrs()
        self.meta_problems = meta_problems(self.meta)
        if not self.meta or self.meta.get("store_version") is None:
            self._abort()
            raise StoreError(f"{path} is not a mito store (no mito attributes)")
        if strict and self.meta.get("append") and not writable:
            self._abort()
            raise StoreError(f"{path}: adding tiles to it was interrupted; re-run the same `mito extract ... --store {path}` to finish it")
        if strict and self.meta.get("tile_update") and not writable:
            self._abort()
            raise StoreError(
                f"{path}: updating its tile table (labels) was interrupted; re-run the same `mito extract ... --store {path}` to finish it"
            )
        if (
            strict and not self.meta.get("append") and not self.meta.get("tile_update")
        ):  # a pending change is finished before anything is read
            found = self.meta_problems or self._structure_problems()
            if found:
                self._abort()
                more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
                raise StoreError(
                    f"{path} is damaged: {found[0]}{more}; `mito cache verify {path}` lists every defect; "
                    "a store missing its own bookkeeping cannot be repaired in place: extract into a new --store"
                )

    def _abort(self) -> None:
        try:
            self._b.close(commit=False)
        finally:
            if self._lock is not None:
                self._lock.release()

    # -- context manager
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store (HDF5: put this session's copy in place) and release the writer lock."""
        try:
            self._b.close(commit=not self._failed)
        finally:
            if self._lock is not None:
                self._lock.release()

    def refresh(self) -> None:
        """Re-read attributes another process wrote (e.g. variants rank 0 added in a distributed run)."""
        mode = "a" if self.writable else "r"
        self._b.close(commit=not self._failed)
        self._b = open_backend(self.path, mode, self.format)
        self.meta = self._b.get_attrs()
        self.meta_problems = meta_problems(self.meta)
        self._tiles = None

    # -- description
    @property
    def format(self) -> str:
        """``zarr`` or ``hdf5``."""
        return self._b.format

    @property
    def drops_session(self) -> bool:
        """True when closing will drop this session's writes (HDF5 after a write that failed or was interrupted)."""
        return self._failed and not self.capabilities.resumable_per_chunk

    @property
    def capabilities(self) -> Capabilities:
        """What this store's backend guarantees (checksums, locking, resume per chunk ...)."""
        return self._b.capabilities

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

    # -- reading, every failure one StoreError naming the array and chunk
    def _read(self, name: str, sel: Any = slice(None)) -> np.ndarray:
        try:
            return self._b.read(name, sel)
        except StoreError:
            raise
        except Exception as e:  # codecs, checksums, h5py and fsspec raise many types
            raise self._read_error(name, sel, e) from None

    def _read_error(self, name: str, sel: Any, e: BaseException) -> StoreError:
        if isinstance(e, KeyError) or not self._has(name):
            return StoreError(f"{self.path}: {name} is missing; run `mito cache verify {self.path}` for every defect")
        bad = self._bad_chunks(name, sel)
        where = f" chunk {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}" if bad else ""
        fix = "re-run mito extract to rewrite it" if name.startswith("features/") else f"run `mito cache verify {self.path}`"
        return StoreError(f"{self.path}: {name}{where} is damaged ({_damage(e)}); {fix}")

    def _has(self, name: str) -> bool:
        try:
            return self._b.has(name)
        except Exception:  # an unreadable group's metadata
            return False

    def _chunk_error(self, name: str, c: int, rows: int) -> BaseException | None:
        """The error reading storage chunk ``c`` (``rows`` rows per chunk) raises, or None when it reads."""
        try:
            n = self._b.shape(name)[0]
            self._b.read(name, slice(c * rows, min(n, (c + 1) * rows)))
        except Exception as e:  # any failure is the answer
            return e
        return None

    def _bad_chunks(self, name: str, sel: Any = slice(None)) -> list[int]:
        """Storage chunks of ``name`` (within a row slice ``sel``) that cannot be read."""
        try:
            rows, n = self._b.chunks(name)[0], self._b.shape(name)[0]
        except Exception:
            return []
        lo, hi = (sel.start or 0, n if sel.stop is None else sel.stop) if isinstance(sel, slice) else (0, n)
        return [c for c in range(lo // rows, math.ceil(min(hi, n) / rows)) if self._chunk_error(name, c, rows) is not None]

    @property
    def tiles(self) -> pd.DataFrame:
        """The tile table (one row per tile, aligned with every feature array)."""
        if self._tiles is None:
            self._tiles = self.tile_table()
        return self._tiles

    @property
    def tile_column_names(self) -> list[str]:
        """Names of the tile table's columns (nothing is read)."""
        return [c["name"] for c in self.meta["tile_columns"]]

    def tile_table(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The tile table, or only ``columns`` of it (in the store's order; unknown names are skipped): reading a few
        columns of a million-tile table takes a fraction of the memory of all of them."""
        if self._tiles is not None:
            return self._tiles if columns is None else self._tiles[[c for c in self._tiles.columns if c in set(columns)]]
        data = {}
        for c in self.meta["tile_columns"]:
            if columns is not None and c["name"] not in columns:
                continue
            v = self._read(f"tiles/{c['name']}", slice(0, self.n_tiles))  # a pending append may have grown the array
            kind = c["kind"]
            if kind == "str":
                s = pd.Series(v.astype(object), dtype=object)
                data[c["name"]] = s.where(s != "", None)
            elif kind == "float":
                data[c["name"]] = v.astype(np.float64)
            elif kind == "bool":
                data[c["name"]] = pd.Series(v == 1, dtype="boolean").mask(v < 0)
            else:
                data[c["name"]] = v.astype(np.int64)
        return pd.DataFrame(data, index=pd.RangeIndex(self.n_tiles))

    def input_files(self) -> list[str]:
        """The files this store was made from, which no output may replace: its source when that is a file, the
        points file, every slide it lists (skipped ones too) and the tiles' ``path`` / ``slide_path`` values."""
        src = as_dict(self.meta.get("source"))
        out = [str(v) for v in (src.get("path"), src.get("points")) if v]
        rec = as_dict(self.meta.get("slides"))
        out += [str(r["path"]) for part in ("slides", "skipped") for r in rec.get(part) or [] if isinstance(r, dict) and r.get("path")]
        cols = [c for c in ("path", "slide_path") if c in self.tile_column_names]
        if cols:
            t = self.tile_table(cols)
            for c in cols:
                out += t[c].dropna().astype(str).unique().tolist()
        return out

    @property
    def unreadable(self) -> np.ndarray:
        """Boolean mask of tiles that could not be decoded."""
        return self._read("unreadable", slice(0, self.n_tiles)).astype(bool)

    def done_chunks(self, key: str) -> np.ndarray:
        """Boolean mask over row chunks: True where the chunk is fully written for this variant."""
        self.variant_info(key)
        return self._read(f"done/{parse_variant(key).path}").astype(bool)

    def sound_done_chunks(self, key: str) -> np.ndarray:
        """Like :meth:`done_chunks`, but a chunk whose flag, rows or checksum cannot be trusted counts as not done
        (extract calls this, so re-running rewrites damaged chunks). Reads every done chunk once."""
        self.variant_info(key)
        v = parse_variant(key)
        flags = f"done/{v.path}"
        try:
            done = self._b.read(flags).astype(bool)
        except Exception:  # some flags are damaged: keep the ones that read
            done = np.zeros(self.n_chunks, bool)
            for c in range(self.n_chunks):
                with contextlib.suppress(Exception):
                    done[c] = bool(self._b.read(flags, slice(c, c + 1))[0])
        if done.shape != (self.n_chunks,):
            raise StoreError(f"{self.path}: {flags} has {done.size} flags for {self.n_chunks} chunks; run `mito cache verify {self.path}`")
        for c in map(int, np.flatnonzero(done)):
            start, stop = self.chunk_rows_range(c)
            try:
                block = self._b.read(f"features/{v.path}", slice(start, stop))
                bad = self._b.read("unreadable", slice(start, stop)).astype(bool)
            except Exception:  # checksum, codec or missing array: the chunk is redone
                done[c] = False
                continue
            holes = np.isnan(block).any(axis=1) & ~bad
            done[c] = block.shape[0] == stop - start and not holes.any() and not np.isinf(block).any()
        return done

    def is_complete(self, key: str) -> bool:
        """True when every chunk of the variant is written."""
        return bool(self.done_chunks(key).all())

    def chunk_rows_range(self, chunk: int) -> tuple[int, int]:
        """Row range [start, stop) of a chunk."""
        start = chunk * self.chunk_rows
        return start, min(self.n_tiles, start + self.chunk_rows)

    # -- writing (only with the writer lock, taken by open_store(path, "a"))
    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write becomes one line; HDF5 then drops this run's copy, Zarr keeps every finished chunk."""
        self._require_writable()
        try:
            yield
        except BaseException as e:
            self._failed = True
            if isinstance(e, OSError) and not isinstance(e, StoreError):
                kept = (
                    "finished chunks are kept; free space and re-run to resume"
                    if self.capabilities.resumable_per_chunk
                    else "the store stays as it was before this run"
                )
                raise StoreError(f"cannot write {self.path}: {os_error_line(e)} ({kept})") from None
            raise

    def _update_meta(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Re-read the attributes from storage, apply ``change`` to them and write them back: never a stale copy."""
        with self._writing():
            meta = self._b.get_attrs(fresh=True) or dict(self.meta)
            change(meta)
            self._b.set_attrs(meta)
        self.meta = meta

    def check_variant(self, key: str, dim: int, provenance: dict[str, Any]) -> bool:
        """True when the store holds ``key`` made this way, False when it lacks it; refused (nothing written) when it
        holds it made differently."""
        existing = self.meta.get("variants", {}).get(key)
        if existing is None:
            return False
        diff = _differences(existing, {"dim": int(dim), **provenance})
        if diff:
            raise StoreError(
                f"{self.path} already holds {key} made differently ({'; '.join(diff)}); "
                f"use a new --store, or remove it with `mito cache rm {self.path} {key}` and re-run"
            )
        return True

    def ensure_variant(self, key: str, dim: int, provenance: dict[str, Any]) -> bool:
        """Create a variant's arrays, or check an existing one matches; returns True if newly created."""
        self._require_writable()
        v = parse_variant(key)
        self.meta = self._b.get_attrs(fresh=True) or self.meta
        if self.check_variant(key, dim, provenance):
            return False
        rows = storage_rows(self.chunk_rows, self.n_tiles, self.capabilities.resizable_rows)
        if self.variants:  # a store made before full chunks: its arrays' chunks, so that every variant agrees
            rows = self._b.chunks(f"features/{parse_variant(self.variants[0]).path}")[0]
        with self._writing():
            self._b.create(f"features/{v.path}", (self.n_tiles, dim), "float16", (rows, dim), np.nan, FEATURE_DIMS)
            self._b.create(f"done/{v.path}", (self.n_chunks,), "bool", (1,), False, DONE_DIMS)
        self._update_meta(lambda m: m.setdefault("variants", {}).__setitem__(key, {"dim": int(dim), **provenance, "added": _now()}))
        return True

    def write_chunk(self, key: str, chunk: int, features: np.ndarray, unreadable: np.ndarray | None = None) -> None:
        """Write one whole row chunk of a variant, then mark it done."""
        self._require_writable()
        v = parse_variant(key)
        start, stop = self.chunk_rows_range(chunk)
        if features.shape[0] != stop - start:
            raise StoreError(f"chunk {chunk} of {key} needs {stop - start} rows, got {features.shape[0]}")
        with self._writing():
            if unreadable is not None:
                try:
                    cur = self._b.read("unreadable", slice(start, stop)).astype(bool)
                except Exception:  # a damaged flag chunk is rewritten whole
                    cur = None
                if cur is None or unreadable.any():
                    self._b.write("unreadable", slice(start, stop), unreadable if cur is None else cur | unreadable)
            self._b.write(f"features/{v.path}", slice(start, stop), features.astype(np.float16))
            self._b.write(f"done/{v.path}", slice(chunk, chunk + 1), np.array([True]))

    def write_rows(self, chunk: int, rows: int, features: dict[str, np.ndarray], unreadable: np.ndarray | None = None) -> None:
        """Checkpoint an unfinished chunk: write its first ``rows`` rows for each variant in ``features`` and record
        them (:meth:`kept_rows`), so a re-run embeds only the rest of the chunk. The chunk stays not done."""
        self._require_writable()
        start, stop = self.chunk_rows_range(chunk)
        if not 0 < rows < stop - start:
            raise StoreError(f"a checkpoint of chunk {chunk} needs 1..{stop - start - 1} rows, got {rows}")
        with self._writing():
            if unreadable is not None and unreadable[:rows].any():
                cur = self._b.read("unreadable", slice(start, start + rows)).astype(bool)
                self._b.write("unreadable", slice(start, start + rows), cur | unreadable[:rows])
            for key, feats in features.items():
                if feats.shape[0] != rows:
                    raise StoreError(f"a checkpoint of {rows} rows of chunk {chunk} of {key} got {feats.shape[0]}")
                self._b.write(f"features/{parse_variant(key).path}", slice(start, start + rows), feats.astype(np.float16))

        def note(m: dict[str, Any]) -> None:
            partial = dict(m.get("partial_chunks") or {})
            kept = dict(partial.get(str(chunk)) or {})
            kept.update({k: max(int(kept.get(k, 0)), rows) for k in features})
            partial[str(chunk)] = kept
            m["partial_chunks"] = partial

        self._update_meta(note)

    def forget_done_rows(self) -> None:
        """Drop the record of checkpointed rows (:meth:`kept_rows`) of chunks that are done since."""
        partial = self.meta.get("partial_chunks") or {}
        if not partial or self.meta.get("append"):
            return
        done = {k: self.done_chunks(k) for k in {k for kept in partial.values() for k in kept} if k in self.variants}
        left = {
            c: {k: r for k, r in kept.items() if k in done and int(c) < done[k].size and not done[k][int(c)]} for c, kept in partial.items()
        }
        left = {c: kept for c, kept in left.items() if kept}
        if left != partial:
            self._update_meta(lambda m: m.__setitem__("partial_chunks", left))

    def kept_rows(self, key: str, chunk: int) -> int:
        """Rows at the start of chunk ``chunk`` that already hold ``key``'s embeddings while the chunk is not done
        (the old rows of the chunk an append made grow); 0 for any other chunk."""
        return int((self.meta.get("partial_chunks") or {}).get(str(chunk), {}).get(key, 0))

    def append_tiles(self, new: pd.DataFrame, note: dict[str, Any] | None = None) -> None:
        """Add ``new`` rows at the end of the tile table; every variant's new rows start not done, old rows and their
        embeddings stay as they are. Safe to kill at any point: re-running the same append finishes it."""
        self._require_writable()
        if not self.capabilities.resizable_rows:
            raise StoreError(f"{self.path}: this store format cannot grow; extract into a new --store")
        self.meta = self._b.get_attrs(fresh=True) or self.meta
        n_old, cols, pend = self.n_tiles, self.meta["tile_columns"], self.meta.get("append")
        problem = self.append_problem(new)
        if problem:
            raise StoreError(f"the new tiles' columns differ from {self.path}'s ({problem}); extract them into a new --store")
        sha = self._appended_hash(new, n_old)
        n_new = n_old + len(new)
        keys = self.variants
        cr = self.chunk_rows
        if keys:  # stores made before full chunks were stored in chunks of their own size when smaller: keep that
            cr = min(cr, self._b.chunks(f"features/{parse_variant(keys[0]).path}")[0])
        last = (n_old - 1) // cr
        if pend and pend.get("from") == n_old and pend.get("chunk_rows") == cr:
            straddle, was_done = dict(pend["straddle"]), list(pend["was_done"])  # read before the flags were reset
        else:
            straddle, was_done = self._straddle(keys, n_old, cr)
        intent = {"from": n_old, "to": n_new, "chunk_rows": cr, "tile_list_sha256": sha, "straddle": straddle, "was_done": was_done}
        self._update_meta(lambda m: m.__setitem__("append", intent))
        n_chunks = math.ceil(n_new / cr)
        first = last if n_old % cr else n_old // cr  # the first chunk that is not done any more
        with self._writing():
            self._grow_arrays(new, cols, keys, n_old, n_chunks, first)

        def commit(m: dict[str, Any]) -> None:
            partial = dict(m.get("partial_chunks") or {})
            if straddle:
                partial[str(last)] = straddle
            m.update(n_tiles=n_new, chunk_rows=cr, tile_list_sha256=sha, partial_chunks=partial)
            m["appends"] = [*m.get("appends", []), {"rows": [n_old, n_new], "added": _now(), **(note or {})}]
            m.pop("append", None)

        self._update_meta(commit)
        self._tiles = None

    def _appended_hash(self, new: pd.DataFrame, n_old: int) -> str:
        """The tile-list hash once ``new`` follows the first ``n_old`` rows; refuses a tile id that would be there twice."""
        old_ids = [str(t) for t in self._read("tiles/tile_id", slice(0, n_old))]
        new_ids = new["tile_id"].astype(str).tolist()
        ids = pd.Series(new_ids)
        clash = sorted(set(old_ids) & set(new_ids)) or ids[ids.duplicated()].tolist()
        if clash:
            raise StoreError(f"tile id {clash[0]!r} would be in {self.path} twice")
        return tile_list_hash(old_ids + new_ids)

    def _straddle(self, keys: list[str], n_old: int, cr: int) -> tuple[dict[str, int], list[str]]:
        """Per variant, the rows its last (partly filled) chunk already holds, and the variants that had it done."""
        last = (n_old - 1) // cr
        straddle: dict[str, int] = {}
        was_done: list[str] = []
        kept = (self.meta.get("partial_chunks") or {}).get(str(last), {})
        for k in keys if n_old % cr else []:
            if bool(self._read(f"done/{parse_variant(k).path}", slice(last, last + 1))[0]):
                straddle[k] = n_old - last * cr
                was_done.append(k)
            elif kept.get(k):
                straddle[k] = int(kept[k])
        return straddle, was_done

    def _grow_arrays(self, new: pd.DataFrame, cols: list[dict[str, Any]], keys: list[str], n_old: int, n_chunks: int, first: int) -> None:
        """Write ``new``'s tile-table rows after the first ``n_old``; grow every variant, its flags from chunk ``first`` not done."""
        n_new = n_old + len(new)
        for c in cols:
            name, kind = f"tiles/{c['name']}", c["kind"]
            try:
                arr = _column_array(new[c["name"]].reset_index(drop=True), kind)
            except (TypeError, ValueError):
                raise StoreError(f"column {c['name']} of the new tiles does not fit its type in {self.path} ({kind})") from None
            self._b.resize(name, n_new)
            if kind == "str":
                self._b.write_strings_at(name, n_old, arr)
            else:
                self._b.write(name, slice(n_old, n_new), arr)
        self._b.resize("unreadable", n_new)
        self._b.write("unreadable", slice(n_old, n_new), np.zeros(n_new - n_old, bool))
        for k in keys:
            v = parse_variant(k)
            self._b.resize(f"features/{v.path}", n_new)  # new rows read NaN (the fill value) until written
            self._b.resize(f"done/{v.path}", n_chunks)
            self._b.write(f"done/{v.path}", slice(first, n_chunks), np.zeros(n_chunks - first, bool))

    def append_problem(self, new: pd.DataFrame) -> str | None:
        """Why ``new`` rows cannot be appended as they are (their columns differ from the store's), or None."""
        names = self.tile_column_names
        if set(new.columns) == set(names):
            return None
        extra, missing = sorted(set(new.columns) - set(names)), sorted(set(names) - set(new.columns))
        return "; ".join(x for x in (f"new: {', '.join(extra)}" if extra else "", f"missing: {', '.join(missing)}" if missing else "") if x)

    def update_tile_columns(self, columns: pd.DataFrame, note: dict[str, Any] | None = None, tasks: Sequence[str] = ()) -> None:
        """Replace or add whole tile-table columns (labels and other metadata; never rows or embeddings), adding
        ``tasks`` to the store's label columns. Readers see every new column or none: the columns are staged beside the
        table, the intent is recorded, they are copied in and one attribute write commits; a store killed part-way
        refuses readers in one line, and the next writer (the same `mito extract`) finishes it."""
        self._require_writable()
        if len(columns) != self.n_tiles:
            raise StoreError(f"{len(columns)} values for the {self.n_tiles} rows of {self.path}")
        if "tile_id" in columns:
            raise StoreError("tile ids are the rows' identity; they are never updated")
        self.finish_tile_update()
        kinds = {}
        with self._writing():
            for name in columns.columns:
                kinds[str(name)] = _write_column(
                    self._b,
                    f"{STAGED}/{name}",
                    columns[name].reset_index(drop=True),
                    tile_column_chunk(self._b, self.n_tiles, self.chunk_rows),
                )
        self._update_meta(lambda m: m.__setitem__("tile_update", {"columns": kinds, "tasks": list(tasks), **(note or {})}))
        self.finish_tile_update()

    def finish_tile_update(self) -> None:
        """Copy the staged columns of a tile-table update into the table and commit it (nothing when none is pending);
        staged columns a writer left before recording its intent are removed."""
        self._require_writable()
        self.meta = self._b.get_attrs(fresh=True) or self.meta
        pend = as_dict(self.meta.get("tile_update"))
        with self._writing():
            if pend:
                for name, kind in pend["columns"].items():
                    _write_array(
                        self._b,
                        f"tiles/{name}",
                        self._b.read(f"{STAGED}/{name}"),
                        kind,
                        tile_column_chunk(self._b, self.n_tiles, self.chunk_rows),
                    )

        def commit(m: dict[str, Any]) -> None:
            cols = list(m["tile_columns"])
            names = [c["name"] for c in cols]
            for name, kind in pend["columns"].items():
                if name in names:
                    cols[names.index(name)] = {"name": name, "kind": kind}
                else:
                    cols.append({"name": name, "kind": kind})
            m["tile_columns"] = cols
            m["tasks"] = [*m.get("tasks", []), *[t for t in pend.get("tasks", []) if t not in m.get("tasks", [])]]
            done = {k: v for k, v in pend.items() if k not in ("columns", "tasks")}
            m["tile_updates"] = [*m.get("tile_updates", []), {"columns": sorted(pend["columns"]), "added": _now(), **done}]
            m.pop("tile_update", None)

        if pend:
            self._update_meta(commit)
        if self._has(STAGED):
            with self._writing():
                self._b.delete(STAGED)
        self._tiles = None

    def cancel_append(self) -> None:
        """Undo an interrupted append (its tiles are no longer wanted): arrays back to the committed rows."""
        self._require_writable()
        self.meta = self._b.get_attrs(fresh=True) or self.meta
        pend = self.meta.get("append")
        if not pend:
            return
        n, cr = self.n_tiles, int(pend["chunk_rows"])
        with self._writing():
            for c in self.meta["tile_columns"]:
                self._b.resize(f"tiles/{c['name']}", n)
            self._b.resize("unreadable", n)
            for k in self.variants:
                v = parse_variant(k)
                self._b.resize(f"features/{v.path}", n)
                self._b.resize(f"done/{v.path}", self.n_chunks)
                if k in pend["was_done"]:
                    self._b.write(f"done/{v.path}", slice((n - 1) // cr, (n - 1) // cr + 1), np.array([True]))
        self._update_meta(lambda m: m.pop("append", None))
        self._tiles = None

    def remove_variants(self, keys: Sequence[str]) -> list[str]:
        """Remove variants: their provenance first, then their arrays and done flags (with the augmented views of each,
        which are no features without it); returns every key removed. Everything is checked before anything changes:
        an unknown key, a pending append, or removing every variant is refused. A key whose arrays are on disk but not
        in the attributes (an interrupted writer's leftovers) is cleared too. HDF5 is rewritten without them (space
        given back) in its private copy, which replaces the file when the store closes."""
        self._require_writable()
        self.meta = self._b.get_attrs(fresh=True) or self.meta
        if self.meta.get("append"):
            raise StoreError(f"{self.path}: adding tiles to it was interrupted; re-run that mito extract to finish it first")
        known = self.variants
        stray = {variant_key(a.removeprefix("features/")) for a in self._b.arrays("features")} - set(known)
        wanted: list[str] = []
        for k in keys:
            parse_variant(k)
            if k not in known and k not in stray:
                raise StoreError(self._unknown_variant_msg(k))
            for x in [k, *views_of(known, k)]:
                if x not in wanted:
                    wanted.append(x)
        left = [k for k in known if k not in wanted]
        if not left and known:
            raise StoreError(
                f"that would remove the last variant of {self.path} ({', '.join(known)}), leaving a store with "
                "no features; delete the store instead (or extract another variant first)"
            )

        def forget(m: dict[str, Any]) -> None:
            for k in wanted:
                m.get("variants", {}).pop(k, None)
            for rows in (m.get("partial_chunks") or {}).values():
                for k in wanted:
                    rows.pop(k, None)
            m["partial_chunks"] = {c: r for c, r in (m.get("partial_chunks") or {}).items() if r}
            m["removed"] = [*m.get("removed", []), {"variants": wanted, "removed": _now()}]

        self._update_meta(forget)  # first: a kill before the arrays go leaves arrays verify names, never a dangling entry
        with self._writing():
            for k in wanted:
                v = parse_variant(k)
                self._b.delete(f"done/{v.path}")
                self._b.delete(f"features/{v.path}")
            self._b.compact()
        return wanted

    def record(self, name: str, value: Any) -> None:
        """Store a JSON-able value in the store's attributes (e.g. the last run's summary)."""
        self._require_writable()
        self._update_meta(lambda m: m.__setitem__(name, value))

    def add_run(self, record: dict[str, Any]) -> None:
        """Append a run's record (mito.core.runrecord.run_record: job, spec, versions) to the store's ``runs`` history."""
        self._require_writable()
        self._update_meta(lambda m: m.__setitem__("runs", [*as_list(m.get("runs")), record]))

    @property
    def runs(self) -> list[dict[str, Any]]:
        """The records of the runs that wrote this store, oldest first (empty for a store made before they were kept)."""
        return [r for r in as_list(self.meta.get("runs")) if isinstance(r, dict)]

    # -- reading features
    def _check_readable(self, keys: Sequence[str], allow_incomplete: bool) -> list[Variant]:
        if not keys:
            raise StoreError("no features chosen")
        out = []
        for k in keys:
            self.variant_info(k)
            if not allow_incomplete and not self.is_complete(k):
                done = self.done_chunks(k)
                raise StoreError(f"{k} in {self.path} is incomplete ({done.sum()}/{done.size} chunks); re-run mito extract to finish it")
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
        parts = [self._read(f"features/{v.path}", sel) for v in vs]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)).astype(dtype, copy=False)

    def _read_rows(self, name: str, sorted_rows: np.ndarray) -> np.ndarray:
        """Read sorted row indices chunk by chunk (bounded memory, works for Zarr and HDF5)."""
        if sorted_rows.size == 0:
            return self._read(name, slice(0, 0))
        out = []
        chunk_of = sorted_rows // self.chunk_rows
        for c in np.unique(chunk_of):
            start, stop = self.chunk_rows_range(int(c))
            block = self._read(name, slice(start, stop))
            out.append(block[sorted_rows[chunk_of == c] - start])
        return np.concatenate(out, axis=0)

    def iter_chunks(
        self,
        keys: Sequence[str],
        rows: np.ndarray | None = None,
        dtype: Any = np.float32,
        chunks: Sequence[int] | np.ndarray | None = None,
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
            block = np.concatenate([self._read(f"features/{v.path}", slice(start, stop)) for v in vs], axis=1)
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
            **({"sample": self.meta["sample"]} if isinstance(self.meta.get("sample"), dict) else {}),
            "tile_list_sha256": self.meta.get("tile_list_sha256"),
            "created": self.meta.get("created"),
            "versions": self.meta.get("versions"),
            "capabilities": dict(self.capabilities.__dict__),
        }

    def _array_problem(self, name: str, shape: tuple[int | None, ...] | None) -> str | None:
        """Why array ``name`` is unusable (missing, unreadable metadata, wrong shape), or None."""
        try:
            if not self._b.has(name):
                return f"{name} is missing"
            got = self._b.shape(name)
        except Exception as e:  # damaged array metadata
            return f"{name} cannot be opened ({_first_line(e)})"
        if shape is not None and (len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape))):
            return f"{name} has shape {got}, the attributes say {tuple(shape)}"
        return None

    def _structure_problems(self) -> list[str]:
        """Missing arrays and shapes that disagree with the attributes (metadata only, no chunk is read)."""
        n, out = self.n_tiles, []
        for c in self.meta["tile_columns"]:
            out.append(self._array_problem(f"tiles/{c['name']}", (n,)))
        out.append(self._array_problem("unreadable", (n,)))
        for k, vi in self.meta.get("variants", {}).items():
            v = parse_variant(k)
            out.append(self._array_problem(f"features/{v.path}", (n, vi["dim"])))
            out.append(self._array_problem(f"done/{v.path}", (self.n_chunks,)))
            if out[-2] is None:
                rows = self._b.chunks(f"features/{v.path}")[0]
                if rows not in (self.chunk_rows, min(self.chunk_rows, n)):
                    out.append(f"features/{v.path} is stored in chunks of {rows} rows, the attributes say chunk_rows {self.chunk_rows}")
        return [p for p in out if p is not None]

    def verify(self) -> list[str]:
        """Every problem that makes the store incomplete or unsound, one line each (empty = sound and complete).

        Checks the attributes, that every array is there with the shape they say, every chunk's checksum,
        and that written rows hold no NaN (unless the tile was unreadable) or inf. Never raises."""
        problems: list[str] = list(self.meta_problems)
        try:
            self._verify(problems)
        except Exception as e:  # a defect the checks above did not foresee: still a verdict, not a traceback
            problems.append(f"could not check further: {type(e).__name__}: {_first_line(e)}")
        return problems

    def _scan(self, name: str, problems: list[str], prefix: str = "") -> bool:
        """Read every storage chunk of ``name``; one problem per damaged chunk. True when all read."""
        rows, n = self._b.chunks(name)[0], self._b.shape(name)[0]
        ok = True
        for c in range(math.ceil(n / rows)):
            e = self._chunk_error(name, c, rows)
            if e is not None:
                problems.append(f"{prefix}{name} chunk {c} is damaged ({_damage(e)})")
                ok = False
        return ok

    def _verify(self, problems: list[str]) -> None:
        meta = self.meta
        if isinstance(meta.get("append"), dict):
            a = meta["append"]
            problems.append(f"adding tiles {a.get('from')}..{a.get('to')} was interrupted: re-run the same mito extract to finish it")
            return
        if isinstance(meta.get("tile_update"), dict):
            problems.append("updating the tile table (labels) was interrupted: re-run the same mito extract to finish it")
            return
        n, cr = _pos_int(meta.get("n_tiles")), _pos_int(meta.get("chunk_rows"))
        bad = self._verify_tiles(n, problems)
        variants = as_dict(meta.get("variants"))
        if not variants:
            problems.append("no feature variants")
        known = set()
        for k, vi in variants.items():
            try:
                v = parse_variant(k)
            except StoreError:
                continue  # reported with the attributes
            known.add(v.path)
            self._verify_variant(k, v, vi, n, cr, bad, problems)
        for a in self._b.arrays("features"):
            if a.removeprefix("features/") not in known:
                problems.append(
                    f"{a} is on disk but not in the attributes (left by an interrupted or concurrent writer); "
                    f"`mito cache rm {self.path} {variant_key(a.removeprefix('features/'))}` removes it"
                )

    def _verify_tiles(self, n: int | None, problems: list[str]) -> np.ndarray | None:
        """Check the tile table, its hash and the unreadable flags; those flags (None when they do not read back)."""
        for c in as_list(self.meta.get("tile_columns")):
            name = c.get("name") if isinstance(c, dict) else None
            if isinstance(name, str):
                p = self._array_problem(f"tiles/{name}", (n,) if n else None)
                problems.append(p) if p else self._scan(f"tiles/{name}", problems)
        if self._array_problem("tiles/tile_id", None) is None and self._bad_chunks("tiles/tile_id") == []:
            ids = self._b.read("tiles/tile_id")
            if tile_list_hash([str(t) for t in ids]) != self.meta.get("tile_list_sha256"):
                problems.append("tile list hash does not match the tile table")
        p = self._array_problem("unreadable", (n,) if n else None)
        if p:
            problems.append(p)
        elif self._scan("unreadable", problems):
            return self._b.read("unreadable").astype(bool)
        return None

    def _verify_variant(
        self, k: str, v: Variant, vi: Any, n: int | None, cr: int | None, bad: np.ndarray | None, problems: list[str]
    ) -> None:
        """Check one variant: its arrays' shapes and chunking, its done flags, and the values of its written chunks."""
        n_chunks = math.ceil(n / cr) if n and cr else None
        dim = _pos_int(vi.get("dim")) if isinstance(vi, dict) else None
        feats, flags = f"features/{v.path}", f"done/{v.path}"
        p = self._array_problem(feats, (n, dim))
        feats_ok = p is None
        if p:
            problems.append(f"{k}: {p}")
        elif cr and self._b.chunks(feats)[0] not in (cr, min(cr, n or cr)):
            problems.append(f"{k}: {feats} is stored in chunks of {self._b.chunks(feats)[0]} rows, the attributes say chunk_rows {cr}")
            feats_ok = False
        p = self._array_problem(flags, (n_chunks,))
        if p:
            problems.append(f"{k}: {p}")
            return
        done = np.zeros(self._b.shape(flags)[0], bool)
        for c in range(done.size):
            try:
                done[c] = bool(self._b.read(flags, slice(c, c + 1))[0])
            except Exception as e:  # a damaged flag
                problems.append(f"{k}: {flags} chunk {c} is damaged ({_damage(e)})")
        if not done.all():
            problems.append(f"{k}: {int((~done).sum())} of {counted(done.size, 'chunk')} not written")
        if feats_ok and n and cr:
            self._verify_values(k, feats, done, n, cr, bad, problems)

    def _verify_values(self, k: str, feats: str, done: np.ndarray, n: int, cr: int, bad: np.ndarray | None, problems: list[str]) -> None:
        """Read every written chunk of ``feats``: checksums, NaN in readable rows, infinities."""
        nan_rows = inf = 0
        holed: list[int] = []
        for c in np.flatnonzero(done):
            start, stop = int(c) * cr, min(n, (int(c) + 1) * cr)
            try:
                block = self._b.read(feats, slice(start, stop))
            except Exception as e:  # checksum, codec, truncation
                problems.append(f"{k}: {feats} chunk {c} is damaged ({_damage(e)})")
                continue
            holes = np.isnan(block).any(axis=1)
            if bad is not None:
                holes &= ~bad[start:stop]
            nan_rows += int(holes.sum())
            holed += [int(c)] if holes.any() else []
            inf += int(np.isinf(block).any())
        if nan_rows:
            where = ", ".join(map(str, holed[:5])) + (" ..." if len(holed) > 5 else "")
            problems.append(
                f"{k}: {nan_rows} readable rows hold NaN in written chunks ({where}: a chunk file missing or "
                "overwritten); re-run mito extract to rewrite them"
            )
        if inf:
            problems.append(f"{k}: infinite values in {inf} written chunks")


def _column_kind(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_integer_dtype(s):
        return "int"
    if pd.api.types.is_float_dtype(s):
        return "float"
    present = s.dropna()
    if len(present) and present.map(lambda x: isinstance(x, (bool, np.bool_))).all():
        return "bool"  # yes/no with missing values (object column of True/False/None)
    return "str"


def _column_array(s: pd.Series, kind: str) -> np.ndarray:
    """A tile-table column as stored: strings ('' = missing), int8 yes/no (-1 = missing), int64 or float64."""
    if kind == "str":
        return s.map(lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)).to_numpy()
    if kind == "bool":
        return np.where(s.isna().to_numpy(), -1, s.fillna(False).astype(bool).to_numpy()).astype(np.int8)
    return s.to_numpy(dtype=np.int64 if kind == "int" else np.float64)


TILE_COLUMN_CHUNK = 65536  # rows per chunk of a tile-table column (read whole; one chunk for most stores)


def storage_rows(chunk_rows: int, n: int, can_grow: bool) -> int:
    """Rows per storage chunk of a feature array: ``chunk_rows``, or the data's own length when that is shorter and
    the store can never grow. A store that can grow keeps full chunks from the start (a chunk bigger than the data
    costs only its compressed fill), so tiles appended later fill them instead of making one small chunk each."""
    return chunk_rows if can_grow else max(1, min(chunk_rows, n))


def tile_column_chunk(b: StoreBackend, n: int, chunk_rows: int) -> int:
    """Rows per chunk of a tile-table column of ``n`` rows: at least ``chunk_rows`` when the store can grow."""
    return max(1, min(max(n, chunk_rows) if b.capabilities.resizable_rows else n, TILE_COLUMN_CHUNK))


def stored_column(s: pd.Series) -> tuple[str, np.ndarray]:
    """(kind, values) of a tile-table column as a store keeps it (strings with '' for missing, int8 yes/no ...)."""
    kind = _column_kind(s)
    return kind, _column_array(s.reset_index(drop=True), kind)


def _write_array(b: StoreBackend, name: str, arr: np.ndarray, kind: str, chunk: int) -> None:
    """Write (or replace) one tile-table array already in its stored form, ``chunk`` rows per chunk."""
    if kind == "str":
        b.write_strings(name, np.asarray(arr).astype(object), chunk, TILE_DIMS)  # Zarr reads back StringDType
    else:
        b.create(name, arr.shape, arr.dtype, (chunk,), -1 if kind == "bool" else 0, TILE_DIMS)
        b.write(name, slice(None), arr)


def _write_column(b: StoreBackend, name: str, s: pd.Series, chunk: int) -> str:
    """Write one tile-table column at ``name``; returns its kind."""
    kind = _column_kind(s)
    _write_array(b, name, _column_array(s, kind), kind, chunk)
    return kind


def _write_tiles(b: StoreBackend, tiles: pd.DataFrame, chunk_rows: int) -> list[dict[str, str]]:
    chunk = tile_column_chunk(b, len(tiles), chunk_rows)
    return [{"name": str(name), "kind": _write_column(b, f"tiles/{name}", tiles[name], chunk)} for name in tiles.columns]


RESERVED_NAMES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}  # Zarr metadata documents


def check_column_names(names: Sequence[Any], where: str = "the tile table") -> None:
    """Refuse tile-table column names a store cannot keep as arrays (each column is one array named after it):
    empty, '.', '..', a name with '/', '\\' or NUL, a leading '.', or a Zarr metadata name such as zarr.json."""
    for name in names:
        n = str(name)
        if not n.strip() or n in (".", "..") or n.startswith(".") or any(c in n for c in "/\\\0") or n.lower() in RESERVED_NAMES:
            raise StoreError(
                f"{where}: column {n!r} cannot be stored (a column becomes an array of that name): rename it, "
                "e.g. without '/', '\\' or a leading '.'"
            )


def create_store(
    path: str | os.PathLike,
    tiles: pd.DataFrame,
    meta: dict[str, Any],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Store:
    """Create a new store holding ``tiles`` (needs a unique ``tile_id`` column); refuses to overwrite.

    The store is built in a hidden sibling and moved into place, so a failure leaves nothing behind."""
    path = str(path)
    _check_tile_table(tiles, chunk_rows)
    fmt = store_format(path)
    if not backend_capabilities(path, fmt).supports_urls and is_url(path):
        raise StoreError(f"{fmt} stores must be local files ({path}); use a .zarr store for fsspec URLs")
    lock = StoreLock(path).acquire() if backend_capabilities(path, fmt).supports_locking else None
    try:
        if store_exists(path):
            raise StoreError(f"{path} already exists")
        tmp = path if is_url(path) else _tmp_sibling(path)
        try:
            _write_new_store(tmp, fmt, tiles, meta, chunk_rows)
            if tmp != path:
                os.replace(tmp, path)
        except BaseException as e:
            if tmp != path:
                _remove(tmp)
            if isinstance(e, OSError) and not isinstance(e, StoreError):
                raise StoreError(f"cannot create {path}: {os_error_line(e)} (nothing was left behind)") from None
            raise
        return open_store(path, mode="a")
    finally:
        if lock is not None:
            lock.release()


def _check_tile_table(tiles: pd.DataFrame, chunk_rows: int) -> None:
    """Refuse a tile table a store cannot hold: no or duplicate tile ids, bad column names, no rows."""
    if "tile_id" not in tiles:
        raise StoreError("the tile table needs a tile_id column")
    check_column_names(list(tiles.columns))
    if tiles["tile_id"].duplicated().any():
        dup = tiles["tile_id"][tiles["tile_id"].duplicated()].iloc[0]
        raise StoreError(f"duplicate tile id {dup!r} in the tile list")
    if len(tiles) == 0:
        raise StoreError("no tiles to store")
    if chunk_rows < 1:
        raise StoreError("chunk_rows must be >= 1")


def _write_new_store(tmp: str, fmt: str, tiles: pd.DataFrame, meta: dict[str, Any], chunk_rows: int) -> None:
    """Write a store with ``tiles`` and no variants at ``tmp``."""
    b = open_backend(tmp, "w", fmt)
    try:
        cols = _write_tiles(b, tiles, chunk_rows)
        n = len(tiles)
        b.create("unreadable", (n,), "bool", (storage_rows(chunk_rows, n, b.capabilities.resizable_rows),), False, TILE_DIMS)
        b.set_attrs(
            {
                "store_version": STORE_VERSION,
                "format": fmt,
                "created": _now(),
                "n_tiles": n,
                "chunk_rows": int(chunk_rows),
                "tile_columns": cols,
                "tile_list_sha256": tile_list_hash(tiles["tile_id"].astype(str).tolist()),
                "checksums": "fletcher32" if fmt == "hdf5" else "crc32c",
                "variants": {},
                **meta,
            }
        )
    finally:
        b.close()


def _remove(path: str | Path) -> None:
    p = Path(path)
    with contextlib.suppress(OSError):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _tmp_sibling(path: str) -> str:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.creating")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return str(tmp)


def store_input_files(path: str | os.PathLike | None) -> list[str]:
    """Store.input_files of the store at ``path`` ([] when there is none: the command then fails on it in its own words)."""
    if path is None or not store_exists(path):
        return []
    with open_store(path, "r") as s:
        return s.input_files()


def open_store(path: str | os.PathLike, mode: str = "r", *, lock: bool = True, lenient: bool = False) -> Store:
    """Open an existing store for reading (``r``) or appending variants (``a``, which takes the writer lock).

    ``lock=False`` is for the ranks of one torchrun job, whose rank 0 holds the lock for all of them.
    ``lenient`` opens a store with malformed attributes or missing arrays (for :meth:`Store.verify`)."""
    path = str(path)
    if mode not in ("r", "a"):
        raise StoreError(f"mode must be 'r' or 'a', not {mode!r}")
    if not store_exists(path):
        if not is_url(path) and os.path.isdir(path):
            raise StoreError(f"{path} is not a mito store (an empty folder)")
        raise StoreError(f"no store at {path}")
    fmt = store_format(path)
    held = StoreLock(path).acquire() if mode == "a" and lock and backend_capabilities(path, fmt).supports_locking else None
    try:
        return Store(open_backend(path, mode, fmt), path, writable=(mode == "a"), lock=held, strict=not lenient)
    except BaseException:
        if held is not None:
            held.release()
        raise
