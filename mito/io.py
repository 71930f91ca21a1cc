"""Writing outputs safely: atomic files and folders, JSON of numpy values, names that are safe as path parts,
and the guards that stop an output from replacing a store, a model or somebody's folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mito.errors import OutputError


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then move it into place: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"), Path(path).suffix)


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, doc: Any, indent: int = 2) -> Path:
    """Write JSON atomically (numpy values allowed)."""
    return atomic_write_text(path, json.dumps(doc, indent=indent, default=json_default) + "\n")


def atomic_dir(out: str | os.PathLike, fill: Callable[[Path], Any], replace: Callable[[Path], bool] | None = None) -> Path:
    """Build a folder in a hidden sibling with ``fill(tmp)``, then move it to ``out``: a crash never leaves half a folder.

    An existing ``out`` is replaced only when ``replace(out)`` says it may be (else OutputError); it is moved
    aside first and deleted only once the new folder is in place. Leftovers of an interrupted earlier run
    (``.<name>.writing`` / ``.<name>.old``) are cleaned up.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(f".{out.name}.writing"), out.with_name(f".{out.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    try:
        tmp.mkdir()
        fill(tmp)
        if out.exists() or out.is_symlink():
            if replace is None or not replace(out):
                raise OutputError(f"{out} already exists")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def safe_name(name: Any, fallback: str = "x") -> str:
    """``name`` made safe as one path component: no separators, no '..', no leading dot, at most 80 characters."""
    s = _UNSAFE.sub("_", str(name)).strip("._") or fallback
    return s[:80]


def inside(path: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """True when ``path`` is ``parent`` or lies below it (after resolving links)."""
    p, q = Path(path).resolve(), Path(parent).resolve()
    return p == q or q in p.parents


def is_store_dir(path: str | os.PathLike) -> bool:
    """True for a folder or file that holds a mito store (Zarr group with mito attributes, or an HDF5 file)."""
    p = Path(path)
    if p.is_dir() and (p / "zarr.json").is_file():
        try:
            return "mito" in json.loads((p / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            return True  # damaged, but a Zarr group all the same: never ours to delete
    return p.is_file() and p.suffix.lower() in (".h5", ".hdf5")


def containing_artifact(path: str | os.PathLike) -> Path | None:
    """The mito store or model folder that ``path`` is inside of (or is), if any."""
    p = Path(path).resolve()
    for q in (p, *p.parents):
        if is_store_dir(q) or (q / "config.json").is_file() and ((q / "head.json").is_file() or (q / "model.safetensors").is_file()):
            return q
    return None


def check_output_file(path: str | os.PathLike, overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse an output file that would land inside a store or model, on a folder, on a protected input, or on an existing file."""
    p = Path(path)
    if str(path) in ("", ".", "/") or p.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the output")
    owner = containing_artifact(p.parent if not p.exists() else p)
    if owner is not None:
        raise OutputError(f"{path} lies inside {owner}, a mito store or model; write the output elsewhere")
    for q in protect:
        if q and Path(q).exists() and (inside(p, q) or inside(q, p)):
            raise OutputError(f"{path} would overwrite {q}, an input of this command")
    if p.exists() and not overwrite:
        raise OutputError(f"{path} already exists; choose another name or pass --overwrite")
    return p


def check_output_dir(path: str | os.PathLike, overwrite: bool, is_ours: Callable[[Path], bool],
                     protect: tuple[str | os.PathLike, ...] = (), what: str = "output folder") -> Path:
    """Refuse an output folder that is '.', '/', a file, an input, inside a store/model, or an existing folder
    that ``is_ours`` does not recognise (only folders mito wrote are ever replaced, and only with ``overwrite``)."""
    p = Path(path)
    if str(path) in ("", ".", "/", "..") or p.resolve() in (Path.cwd().resolve(), Path.home().resolve(), Path("/")):
        raise OutputError(f"refusing to use {path} as the {what}; give a new folder")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{path} exists and is not a folder")
    for q in protect:
        if q and Path(str(q)).exists() and inside(p, q):
            raise OutputError(f"{path} would replace or sit inside {q}, an input of this command")
        if q and Path(str(q)).exists() and inside(q, p):
            raise OutputError(f"{path} holds {q}, an input of this command (the {what} is written as a whole); give a new folder")
    owner = containing_artifact(p) if p.exists() else containing_artifact(p.parent)
    if owner is not None and not (p.exists() and owner == p.resolve() and is_ours(p)):
        raise OutputError(f"{path} lies inside or is {owner}, a mito store or model; choose another {what}")
    if p.exists() and any(p.iterdir()):
        if not is_ours(p):
            raise OutputError(f"{path} holds files mito did not write; choose a new {what}")
        if not overwrite:
            raise OutputError(f"{path} already exists; choose another {what} or pass --overwrite")
    return p


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compressed: bool = True) -> Path:
    """Write numpy arrays to an .npz file atomically (the handle closed before the file is moved into place)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a path would get ".npz" appended by numpy
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    return atomic_write(path, write, ".npz")
