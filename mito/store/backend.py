"""Store backends: the declared interface (in the spirit of zarr-python's ``zarr/abc/store.py``) and its two
implementations, Zarr v3 (a folder or an fsspec URL) and HDF5 (one local file).

Code above this layer asks a backend's :class:`Capabilities` instead of checking which format it is.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from mito.core.interrupts import guard_zarr_exit
from mito.store.errors import StoreError

# Codec of new float16 feature arrays (Zarr). lz4hc decodes 4-8x faster than the former Blosc-zstd clevel 3 (0.9 vs
# 3.7-7.8 ms per 1,024 x 1,280 chunk of efficientnet_lite0 features) for 16% more bytes (ratio 0.75 vs 0.65); reads
# are what repeat (every epoch of a streamed or slide-level head), writes happen once. Stores written with zstd keep
# reading: the codec is recorded in each array's zarr.json.
FEATURE_BLOSC: dict[str, Any] = {"cname": "lz4hc", "clevel": 4, "shuffle": "shuffle"}


@dataclass(frozen=True)
class Capabilities:
    """What a backend guarantees; readers and writers branch on these, never on the format."""

    supports_checksums: bool  # every chunk carries a checksum that reading verifies
    supports_locking: bool  # an OS writer lock keeps a second writer out
    atomic_chunk_writes: bool  # a chunk is replaced whole or not at all (a kill never leaves half a chunk)
    resumable_per_chunk: bool  # a killed run keeps every chunk it finished (else: per run)
    supports_urls: bool  # fsspec URLs (s3://, memory:// ...) work
    shared_writers: bool  # several processes (torchrun ranks) may write different chunks at once
    resizable_rows: bool = True  # arrays can grow along the tile axis (adding tiles to a store)


@runtime_checkable
class StoreBackend(Protocol):
    """The operations a store format provides. Arrays are named by slash paths (``features/bb/z1/rgb``)."""

    path: str
    format: str
    capabilities: Capabilities

    def get_attrs(self, fresh: bool = False) -> dict[str, Any]:
        """The ``mito`` attributes (``fresh``: re-read from storage, not from a cached copy)."""
        ...

    def set_attrs(self, meta: dict[str, Any]) -> None:
        """Replace the ``mito`` attributes."""
        ...

    def has(self, name: str) -> bool:
        """True when the array exists."""
        ...

    def create(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], fill: Any, dims: list[str]) -> None:
        """(Re)create an array, checksummed where the backend can."""
        ...

    def write_strings(self, name: str, values: np.ndarray, chunk: int, dims: list[str]) -> None:
        """Create a 1-D UTF-8 string array holding ``values``."""
        ...

    def read(self, name: str, sel: Any = slice(None)) -> np.ndarray:
        """Read (a selection of) an array; damaged data raises."""
        ...

    def write(self, name: str, sel: Any, value: np.ndarray) -> None:
        """Write a selection of an array."""
        ...

    def shape(self, name: str) -> tuple[int, ...]:
        """An array's shape."""
        ...

    def chunks(self, name: str) -> tuple[int, ...]:
        """An array's chunk shape."""
        ...

    def arrays(self, group: str) -> Iterator[str]:
        """Paths of every array below ``group``."""
        ...

    def delete(self, name: str) -> None:
        """Remove an array (no error when it is absent)."""
        ...

    def resize(self, name: str, rows: int) -> None:
        """Grow or shrink an array along its first (tile) axis; new rows read as the fill value."""
        ...

    def write_strings_at(self, name: str, start: int, values: np.ndarray) -> None:
        """Write UTF-8 strings into rows ``start ...`` of a string array (widening it where the backend must)."""
        ...

    def compact(self) -> None:
        """Give back the space of deleted arrays where the format keeps it (HDF5); a no-op elsewhere."""
        ...

    def close(self, commit: bool = True) -> None:
        """Close; ``commit=False`` drops what this session wrote where the backend can (HDF5)."""
        ...


def is_url(path: str | os.PathLike) -> bool:
    """True for fsspec URLs (``s3://``, ``memory://``, ``file://`` ...), False for local paths."""
    return "://" in str(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ZarrBackend:
    """Zarr v3: one file per chunk, written atomically (temporary file + rename) by zarr's LocalStore."""

    format = "zarr"

    def __init__(self, path: str, mode: str) -> None:
        import zarr

        guard_zarr_exit()
        self.path = path
        self.capabilities = backend_capabilities(path, "zarr")
        # fsspec URLs (s3://, gs://, memory://, file://) go through zarr's FsspecStore
        self._opts: dict[str, Any] = {"storage_options": {"auto_mkdir": True}} if path.startswith("file://") else {}
        # read-only: array handles are kept (opening one re-reads its zarr.json, ~1.5 ms a chunk read)
        self._arrays: dict[str, Any] | None = {} if mode == "r" else None
        modes: dict[str, Literal["r", "r+", "w"]] = {"r": "r", "a": "r+", "w": "w"}
        zmode = modes[mode]  # r+ never creates: a foreign folder gets no zarr.json
        try:
            self.root = zarr.open_group(path, mode=zmode, zarr_format=3, **self._opts)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS):
                raise
            raise StoreError(f"{path} is not a mito store (not a readable Zarr v3 group: {type(e).__name__})") from None
        except Exception as e:  # zarr raises several types for a missing or foreign folder
            raise StoreError(f"{path} is not a mito store (not a readable Zarr v3 group: {type(e).__name__})") from None

    def _node(self, name: str) -> Any:
        """The array (or group) at ``name``; typed Any: zarr types every node as Array | Group."""
        return self.root[name]

    def get_attrs(self, fresh: bool = False) -> dict[str, Any]:
        import zarr

        root = zarr.open_group(self.path, mode="r", zarr_format=3, **self._opts) if fresh else self.root
        value = root.attrs.get("mito", {})
        return dict(value) if isinstance(value, dict) else {}

    def set_attrs(self, meta: dict[str, Any]) -> None:
        self.root.attrs["mito"] = meta

    def has(self, name: str) -> bool:
        try:
            self.root[name]
            return True
        except KeyError:
            return False

    def create(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], fill: Any, dims: list[str]) -> None:
        from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

        first = BloscCodec(**FEATURE_BLOSC) if np.dtype(dtype) == np.float16 else ZstdCodec()
        self.root.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            fill_value=fill,
            overwrite=True,
            compressors=[first, Crc32cCodec()],
            dimension_names=dims,
        )

    def write_strings(self, name: str, values: np.ndarray, chunk: int, dims: list[str]) -> None:
        from zarr.codecs import Crc32cCodec, ZstdCodec

        arr = self.root.create_array(
            name,
            shape=values.shape,
            dtype=str,
            chunks=(chunk,),
            overwrite=True,
            compressors=[ZstdCodec(), Crc32cCodec()],
            dimension_names=dims,
        )
        arr[:] = values.astype(str)

    def read(self, name: str, sel: Any = slice(None)) -> np.ndarray:
        if self._arrays is None:
            return np.asarray(self.root[name][sel])
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self.root[name]
        return np.asarray(arr[sel])

    def write(self, name: str, sel: Any, value: np.ndarray) -> None:
        self._node(name)[sel] = value

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._node(name).shape)

    def chunks(self, name: str) -> tuple[int, ...]:
        return tuple(self._node(name).chunks)

    def arrays(self, group: str) -> Iterator[str]:
        try:
            g = self.root[group]
        except KeyError:
            return
        for name, _ in g.arrays() if hasattr(g, "arrays") else []:
            yield f"{group}/{name}"
        for name, _ in g.groups() if hasattr(g, "groups") else []:
            yield from self.arrays(f"{group}/{name}")

    def delete(self, name: str) -> None:
        if self.has(name):
            del self.root[name]

    def resize(self, name: str, rows: int) -> None:
        arr = self._node(name)
        arr.resize((rows, *arr.shape[1:]))  # one metadata file, replaced atomically

    def write_strings_at(self, name: str, start: int, values: np.ndarray) -> None:
        self._node(name)[start : start + len(values)] = np.asarray(values).astype(str)

    def compact(self) -> None:
        pass  # a deleted array's chunk files are gone with it

    def close(self, commit: bool = True) -> None:
        pass


RESERVE_BYTES = 512 << 10  # HDF5 writes its metadata when it likes: keep this much free, so a full disk fails in Python


def _quiet_unraisable() -> None:
    """After a failed HDF5 write, h5py objects may fail again as they are freed; keep that out of the user's terminal."""
    previous = sys.unraisablehook

    def hook(u: Any) -> None:
        if not (isinstance(u.exc_value, (RuntimeError, OSError)) and "h5py" in repr(u.object) + repr(u.exc_traceback)):
            previous(u)

    sys.unraisablehook = hook


def _h5_os_error(e: Exception, path: str) -> OSError:
    """HDF5 reports a full disk as a RuntimeError mentioning errno 28; give it back as the OSError it is."""
    if isinstance(e, OSError):
        return e
    code = errno.ENOSPC if "errno = 28" in str(e) else errno.EIO
    return OSError(code, os.strerror(code), path)


_H5_WRITERS: set[str] = set()


class H5Backend:
    """HDF5: one local file, fletcher32 on every chunk. Writing goes to a copy (``.<name>.writing``) that
    replaces the file only when the writer closes cleanly, so a kill or a full disk leaves the previous file."""

    format = "hdf5"
    capabilities = Capabilities(
        supports_checksums=True,
        supports_locking=True,
        atomic_chunk_writes=False,
        resumable_per_chunk=False,
        supports_urls=False,
        shared_writers=False,
    )

    def __init__(self, path: str, mode: str) -> None:
        if is_url(path):
            raise StoreError(f"HDF5 stores must be local files ({path}); use a .zarr store for fsspec URLs")
        self.path = path
        self.mode = mode
        self.f: Any = None
        self.tmp: Path | None = None  # the copy being written (mode "a", after the first write)
        self._key = os.path.abspath(path)
        if mode == "a":  # two writers in one process would share one copy (the OS lock lets a process in twice)
            if self._key in _H5_WRITERS:
                raise StoreError(f"{path} is already open for writing in this process; close it first")
            _H5_WRITERS.add(self._key)
        try:
            self._open(path, "w" if mode == "w" else "r")
        except BaseException:
            _H5_WRITERS.discard(self._key)
            raise

    def _open(self, path: str | Path, mode: str) -> None:
        import h5py

        try:
            self.f = h5py.File(path, mode, libver="latest")
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot open HDF5 store {self.path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def _writable(self) -> Any:
        """Switch from the file to a private copy on the first write (mode ``a``)."""
        if self.mode == "r":
            raise StoreError(f"{self.path} is open read-only")
        if self.mode == "a" and self.tmp is None:
            p = Path(self.path)
            tmp = p.with_name(f".{p.name}.writing")
            self.f.close()
            self.f = None
            try:
                tmp.unlink(missing_ok=True)  # left by a killed writer: never the store itself
                self._ensure_space(p.stat().st_size, p.parent)
                shutil.copyfile(p, tmp)
            except OSError:
                tmp.unlink(missing_ok=True)
                self._open(self.path, "r")
                raise
            self.tmp = tmp
            self._open(tmp, "a")
        return self.f

    def _ensure_space(self, nbytes: int, where: Path | None = None) -> None:
        where = where or Path(self.f.filename).parent
        if shutil.disk_usage(where).free < nbytes + RESERVE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def _guarded(self, nbytes: int, fn: Any) -> Any:
        """Run an HDF5 write after checking the disk has room; a failure becomes an OSError."""
        f = self._writable()
        self._ensure_space(nbytes)
        try:
            out = fn(f)
            f.flush()
            return out
        except (RuntimeError, OSError) as e:
            _quiet_unraisable()
            raise _h5_os_error(e, self.path) from None

    def get_attrs(self, fresh: bool = False) -> dict[str, Any]:
        raw = self.f.attrs.get("mito")
        if raw is None:
            return {}
        try:
            meta = json.loads(raw)
        except (TypeError, ValueError):
            return {"_unparsable": str(raw)[:60]}
        return meta if isinstance(meta, dict) else {"_unparsable": str(raw)[:60]}

    def set_attrs(self, meta: dict[str, Any]) -> None:
        text = json.dumps(meta)
        self._guarded(len(text), lambda f: f.attrs.__setitem__("mito", text))

    def has(self, name: str) -> bool:
        return name in self.f

    def create(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], fill: Any, dims: list[str]) -> None:
        kw: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if np.dtype(dtype) == np.float16 else {}

        def make(f: Any) -> None:
            if name in f:
                del f[name]
            f.create_dataset(
                name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill, fletcher32=True, maxshape=(None, *shape[1:]), **kw
            )

        self._guarded(int(np.prod(chunks)) * np.dtype(dtype).itemsize, make)

    def write_strings(self, name: str, values: np.ndarray, chunk: int, dims: list[str]) -> None:
        enc = np.array([str(v).encode("utf-8") for v in values], dtype=bytes)
        if enc.dtype.itemsize == 0:
            enc = enc.astype("S1")

        def make(f: Any) -> None:
            if name in f:
                del f[name]
            f.create_dataset(name, data=enc, chunks=(chunk,), fletcher32=True, maxshape=(None,))

        self._guarded(enc.nbytes, make)

    def read(self, name: str, sel: Any = slice(None)) -> np.ndarray:
        ds = self.f[name]
        if ds.dtype.kind == "O":  # stores made before checksums: variable-length strings
            return np.asarray(ds.asstr()[sel], dtype=object)
        out = np.asarray(ds[sel])
        if out.dtype.kind == "S":
            return np.char.decode(out, "utf-8").astype(object)
        return out

    def write(self, name: str, sel: Any, value: np.ndarray) -> None:
        self._guarded(np.asarray(value).nbytes, lambda f: f[name].__setitem__(sel, value))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.f[name].shape)

    def chunks(self, name: str) -> tuple[int, ...]:
        ds = self.f[name]
        return tuple(ds.chunks) if ds.chunks else tuple(ds.shape)

    def arrays(self, group: str) -> Iterator[str]:
        import h5py

        g = self.f.get(group)
        if not isinstance(g, h5py.Group):
            return
        names: list[str] = []
        g.visititems(lambda n, obj: names.append(f"{group}/{n}") if isinstance(obj, h5py.Dataset) else None)
        yield from names

    def delete(self, name: str) -> None:
        if name in self.f:
            del self._writable()[name]

    def resize(self, name: str, rows: int, dtype: Any = None) -> None:
        def grow(f: Any) -> None:
            ds = f[name]
            if dtype is None and (ds.maxshape[0] is None or ds.maxshape[0] >= rows):
                ds.resize(rows, axis=0)
                return
            # made before datasets were resizable (or strings that need more bytes): copy into a new dataset
            tmp = f"{name}.resizing"
            if tmp in f:
                del f[tmp]
            kw = {"compression": ds.compression, "compression_opts": ds.compression_opts, "shuffle": ds.shuffle}
            new = f.create_dataset(
                tmp,
                shape=(rows, *ds.shape[1:]),
                maxshape=(None, *ds.shape[1:]),
                dtype=dtype or ds.dtype,
                chunks=ds.chunks,
                fillvalue=ds.fillvalue,
                fletcher32=True,
                **kw,
            )
            step = ds.chunks[0] if ds.chunks else max(1, ds.shape[0])
            for a in range(0, min(rows, ds.shape[0]), step):  # one chunk at a time: memory stays bounded
                b = min(rows, ds.shape[0], a + step)
                new[a:b] = ds[a:b]
            del f[name]
            f.move(tmp, name)

        ds = self.f[name]
        self._guarded(max(0, rows - ds.shape[0]) * int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize, grow)

    def write_strings_at(self, name: str, start: int, values: np.ndarray) -> None:
        enc = np.array([str(v).encode("utf-8") for v in values], dtype=bytes)
        ds = self.f[name]
        if ds.dtype.kind == "S" and enc.dtype.itemsize > ds.dtype.itemsize:  # fixed-width strings: widen first
            self.resize(name, ds.shape[0], dtype=enc.dtype)
        self.write(name, slice(start, start + len(enc)), enc)

    def compact(self) -> None:
        """Rewrite this session's copy object by object into a fresh file (HDF5 never gives a deleted dataset's space
        back to the file system); the fresh file becomes the copy that replaces the store on close."""
        import h5py

        src = self._writable()
        assert self.tmp is not None
        fresh = self.tmp.with_name(self.tmp.name + ".compact")
        try:
            self._ensure_space(self.tmp.stat().st_size, self.tmp.parent)
            with h5py.File(fresh, "w", libver="latest") as dst:
                for k, v in src.attrs.items():
                    dst.attrs[k] = v
                for name in src:
                    src.copy(src[name], dst, name=name)  # chunks, filters (fletcher32), fill values and maxshape kept
            src.close()
            self.f = None
            os.replace(fresh, self.tmp)
        except (RuntimeError, OSError) as e:
            fresh.unlink(missing_ok=True)
            _quiet_unraisable()
            raise _h5_os_error(e, self.path) from None
        finally:
            if self.f is None:
                self._open(self.tmp, "a")

    def close(self, commit: bool = True) -> None:
        if self.f is None:
            return
        if self.mode == "a":
            _H5_WRITERS.discard(self._key)
        tmp, self.tmp = self.tmp, None
        try:
            self.f.close()
        except Exception as e:  # a full disk at the last flush
            _quiet_unraisable()
            commit = False
            if tmp is None:
                raise _h5_os_error(e, self.path) from None
        finally:
            self.f = None
        if tmp is None:
            return
        if not commit:
            tmp.unlink(missing_ok=True)
            return
        try:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(Path(self.path).parent)


def backend_capabilities(path: str, fmt: str) -> Capabilities:
    """What the backend for ``path`` will guarantee, known before opening it (e.g. to take the lock first)."""
    if fmt == "hdf5":
        return H5Backend.capabilities
    url = is_url(path)
    return Capabilities(
        supports_checksums=True,
        supports_locking=not url,
        atomic_chunk_writes=not url,
        resumable_per_chunk=True,
        supports_urls=True,
        shared_writers=True,
    )


def open_backend(path: str, mode: str, fmt: str) -> StoreBackend:
    """The backend for ``fmt`` (``zarr`` or ``hdf5``) at ``path`` in mode ``r``, ``a`` or ``w``."""
    return H5Backend(path, mode) if fmt == "hdf5" else ZarrBackend(path, mode)
