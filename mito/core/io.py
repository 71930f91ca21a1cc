"""Writing outputs safely: atomic files and folders, JSON of numpy values, names that are safe as path parts,
the manifest that marks a folder as mito's, and the guards that stop an output from replacing a store, a model,
an input or somebody's folder."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mito.core.errors import OutputError
from mito.core.version import __version__

PROBABILITY_FORMAT = "%.6g"  # p_<class> columns of every predictions CSV: 6 significant digits, float32 and float64 models alike
METRIC_CSV_FORMAT = "%.4f"  # metric columns of leaderboard.csv


def csv_probabilities(df: Any) -> Any:
    """A copy of a predictions table to write as CSV: the p_<class> columns as text in PROBABILITY_FORMAT (a float32
    model's 0.62345678 and a float64 model's 0.6234567891234 both read 0.623457; other columns untouched)."""
    out = df.copy()
    for c in out.columns:
        if str(c).startswith("p_"):
            out[c] = np.char.mod(PROBABILITY_FORMAT, np.asarray(out[c], dtype=np.float64))
    return out


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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike, doc: Any, indent: int | None = 2) -> Path:
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


def unique_stems(ids: Sequence[str], stem: Callable[[str], str] | None = None, taken: Iterable[str] = ()) -> dict[str, str]:
    """A distinct, safe file stem for each id, the same for the same set of ids (and never one in ``taken``);
    names are compared ignoring case, as some file systems do.

    Each id gets ``safe_name(stem(id))`` when no other id maps to that name. When several do, the one whose name
    needed no change keeps it; the other ids whose names needed no change try their whole id (``x.svs`` and
    ``x.ome.tif`` rather than ``x``); the rest get ``-`` and 8 hex digits of the id's SHA-1 appended
    (``a b.svs`` beside ``a_b.svs``: ``a_b-1f0c...``). So one id's output never overwrites another's."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    used = {t.casefold() for t in taken}
    out: dict[str, str] = {}
    hash_base: dict[str, str] = {}
    tiers: list[Callable[[str], str]] = [*([stem] if stem is not None else []), lambda i: i]
    todo = ids
    for k, raw in enumerate(tiers):
        names = {i: safe_name(raw(i)) for i in todo}
        for i in todo:
            hash_base.setdefault(i, names[i])
        later = _name_tier(todo, names, raw, used, out)
        todo = later if k + 1 < len(tiers) else []  # the rest are hashed below
    for i in ids:
        if i not in out:
            out[i] = _hashed_stem(i, hash_base[i], used)
    return out


def _name_tier(todo: list[str], names: dict[str, str], raw: Callable[[str], str], used: set[str], out: dict[str, str]) -> list[str]:
    """Give each name that one id alone claims (or the one id whose name needed no change) to that id, in ``out``;
    the other ids whose names needed no change, to try the next tier."""
    groups: dict[str, list[str]] = {}
    for i in todo:
        groups.setdefault(names[i].casefold(), []).append(i)
    later = []
    for key, members in groups.items():
        faithful = [i for i in members if names[i] == raw(i)]
        if key not in used and (len(members) == 1 or len(faithful) == 1):
            keep = members[0] if len(members) == 1 else faithful[0]
            out[keep] = names[keep]
            used.add(key)
            members = [i for i in members if i != keep]
        later += [i for i in members if i in faithful]
    return later


def _hashed_stem(i: str, base: str, used: set[str]) -> str:
    """``base`` with ``-`` and hex digits of ``i``'s SHA-1 appended (more digits until the name is free); marked used."""
    k = 8
    while True:  # two ids whose SHA-1s share a prefix: practically never
        n = f"{base[: 79 - k]}-{hashlib.sha1(i.encode('utf-8', 'surrogateescape')).hexdigest()[:k]}"
        if n.casefold() not in used:
            used.add(n.casefold())
            return n
        k += 8


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
        if is_store_dir(q) or artifact_kind(q)[0] in MODEL_KINDS:
            return q
    return None


def check_output_file(
    path: str | os.PathLike, overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = (), inputs: Iterable[str] = ()
) -> Path:
    """Refuse an output file that would land inside a store or model, on a folder, on a protected input, on a file
    listed in ``inputs`` (e.g. the slides and images a store was made from, even with ``overwrite``), or on an
    existing file."""
    p = Path(path)
    if str(path) in ("", ".", "/") or p.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the output")
    hit = same_file_as(p, inputs)
    if hit is not None:
        raise OutputError(f"{path} is {hit}, an input this command reads; write the output elsewhere")
    owner = containing_artifact(p.parent if not p.exists() else p)
    if owner is not None:
        raise OutputError(f"{path} lies inside {owner}, a mito store or model; write the output elsewhere")
    for q in protect:
        if q and Path(q).exists() and (inside(p, q) or inside(q, p)):
            raise OutputError(f"{path} would overwrite {q}, an input of this command")
    if p.exists() and not overwrite:
        raise OutputError(f"{path} already exists; choose another name or pass --overwrite")
    return p


def same_file_as(path: str | os.PathLike, files: Iterable[str]) -> str | None:
    """The entry of ``files`` that ``path`` names (same absolute or resolved path, or the same file on disk), if any.

    Only entries with ``path``'s file name are looked at, so millions of tile paths cost one pass over strings."""
    p = Path(path)
    mine = {os.path.abspath(p), os.path.realpath(p)}
    names = {os.path.basename(m) for m in mine} - {""}
    ends = tuple(names)
    cands = [f for f in map(str, files) if f.endswith(ends) and os.path.basename(f) in names] if names else []
    if not cands:
        return None
    try:
        st = p.stat()
    except OSError:
        st = None
    for f in cands:
        if os.path.abspath(f) in mine or os.path.realpath(f) in mine:
            return str(f)
        if st is not None:
            try:
                if os.path.samestat(st, os.stat(f)):
                    return str(f)
            except OSError:
                continue
    return None


MANIFEST = "mito.json"
MANIFEST_FORMAT = 2  # 2: adds "level"; a format-1 manifest (exports, QC, heatmaps, pictures) reads as its kind's level
# The kinds of folder mito writes and the level each holds by default (None: no level of its own).
ARTIFACT_KINDS: dict[str, str | None] = {
    "model": "tile",  # fit-head (level tile) and fit-head --level slide (level slide): config.json + head.json
    "ensemble": "tile",  # fit-head --ensemble
    "finetuned-model": "tile",  # a fold's model of mito lora (config.json kind "finetuned" + model.safetensors)
    "head": "tile",  # a bare head written by head.save (no config.json): level slide for MIL heads
    "bench": "tile",  # mito bench --out (leaderboard.json, predictions.npz, report.html)
    "lora-run": "tile",  # mito lora --out (fold*/ and a leaderboard)
    "export": None,
    "slides-qc": None,
    "heatmaps": None,
    "slide-pictures": None,
}
MODEL_KINDS = ("model", "ensemble", "finetuned-model", "head")  # folders an output file must never be written into


def write_manifest(folder: str | os.PathLike, kind: str, level: str | None = None, **info: Any) -> Path:
    """Mark ``folder`` as written by mito: ``mito.json`` with its kind, level, format, mito's version, the time and
    every entry the folder holds now (write it last). Only a folder with a manifest is ever replaced (see
    is_mito_folder); mito.core.io.artifact_kind reads it back."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    folder = Path(folder)
    files = sorted(f.name for f in folder.iterdir() if f.name != MANIFEST)
    doc = {
        "kind": kind,
        "level": level or ARTIFACT_KINDS[kind],
        "format_version": MANIFEST_FORMAT,
        "mito_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        **info,
    }
    return write_json(folder / MANIFEST, doc)


def artifact_kind(folder: str | os.PathLike) -> tuple[str | None, str | None]:
    """(kind, level) of a folder mito wrote, from its mito.json; a folder without one (written before manifests, or a
    bare head) is recognised by the files it holds (the one place that still guesses); (None, None) for anything else."""
    p = Path(folder)
    if p.is_symlink() or not p.is_dir():
        return None, None
    doc = read_manifest(p)
    if doc is not None:
        level = doc.get("level")
        return doc["kind"], level if isinstance(level, str) else ARTIFACT_KINDS.get(doc["kind"])
    return _kind_without_manifest(p)


def is_artifact(folder: str | os.PathLike, *kinds: str) -> bool:
    """True for a folder mito wrote whose kind is one of ``kinds`` (mito.json, else an earlier mito's files)."""
    return artifact_kind(folder)[0] in kinds


RUN_KINDS = ("bench", "lora-run")  # folders a bench or lora --out may replace (with --overwrite)


def _read_object(f: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _kind_without_manifest(p: Path) -> tuple[str | None, str | None]:
    """What the sniffers of mito <= 0.1 (is_model_dir, is_slide_model, is_ensemble, is_mil_head_dir, is_finetuned,
    is_run_folder) said of a folder without mito.json, as (kind, level)."""
    config = _read_object(p / "config.json")
    head = _read_object(p / "head.json") if (p / "head.json").is_file() else None
    if (p / "config.json").is_file() and (p / "head.json").is_file():
        if config is not None and config.get("level") == "slide":
            return "model", "slide"
        return ("ensemble" if head is not None and head.get("head") == "ensemble" else "model"), "tile"
    if config is not None and config.get("kind") == "finetuned":
        return "finetuned-model", "tile"
    if head is not None:
        return ("ensemble", "tile") if head.get("head") == "ensemble" else ("head", "slide" if head.get("level") == "slide" else "tile")
    return _run_kind_without_manifest(p)


def _run_kind_without_manifest(p: Path) -> tuple[str | None, str | None]:
    """A bench or lora run folder without mito.json, as (kind, level); (None, None) for anything else."""
    if (p / "leaderboard.json").is_file() or any(p.glob("fold*/result.json")) or any(p.glob("fold*/checkpoint.pt")):
        if any(q.is_dir() for q in p.glob("fold*")):
            return "lora-run", "tile"
        meta = (_read_object(p / "leaderboard.json") or {}).get("meta")
        return "bench", "slide" if isinstance(meta, dict) and meta.get("level") == "slide" else "tile"
    return None, None


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a folder mito wrote, or None (none there, unreadable, or not a manifest mito writes)."""
    f = Path(folder) / MANIFEST
    try:
        if f.is_symlink() or not f.is_file() or f.stat().st_size > 16 << 20:
            return None
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    ok = isinstance(doc, dict) and isinstance(doc.get("kind"), str) and isinstance(doc.get("format_version"), int)
    return doc if ok else None


def is_mito_folder(folder: str | os.PathLike, kind: str) -> bool:
    """True for a folder whose manifest says ``kind`` and that holds nothing the manifest does not list (a file put
    there since, e.g. a user's notes, makes the folder not mito's to delete)."""
    p = Path(folder)
    if p.is_symlink() or not p.is_dir():
        return False
    doc = read_manifest(p)
    if doc is None or doc["kind"] != kind or not isinstance(doc.get("files"), list):
        return False
    listed = {str(f) for f in doc["files"]} | {MANIFEST}
    try:
        return all(f.name in listed for f in p.iterdir())
    except OSError:
        return False


def check_output_dir(
    path: str | os.PathLike,
    overwrite: bool,
    is_ours: Callable[[Path], bool] | None = None,
    protect: tuple[str | os.PathLike, ...] = (),
    what: str = "output folder",
    kind: str | None = None,
) -> Path:
    """Refuse an output folder that is '.', '/', a file, an input, inside a store/model, or an existing folder
    that ``is_ours`` does not recognise (only folders mito wrote are ever replaced, and only with ``overwrite``).

    With ``kind`` (and no ``is_ours``) a folder is ours when its manifest says ``kind`` (is_mito_folder)."""
    if is_ours is None:
        if kind is None:
            raise ValueError("check_output_dir needs is_ours or kind")

        def is_ours(q: Path) -> bool:
            return is_mito_folder(q, kind)

    p = Path(path)
    if str(path) in ("", ".", "/", "..") or p.resolve() in (Path.cwd().resolve(), Path.home().resolve(), Path("/")):
        raise OutputError(f"refusing to use {path} as the {what}; give a new folder")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{path} exists and is not a folder")
    _check_not_input(path, protect, what)
    owner = containing_artifact(p) if p.exists() else containing_artifact(p.parent)
    if owner is not None and not (p.exists() and owner == p.resolve() and is_ours(p)):
        raise OutputError(f"{path} lies inside or is {owner}, a mito store or model; choose another {what}")
    if p.exists() and any(p.iterdir()):
        _check_replaceable(path, overwrite, is_ours, what, kind)
    return p


def _check_not_input(path: str | os.PathLike, protect: tuple[str | os.PathLike, ...], what: str) -> None:
    """Refuse an output folder that is, lies inside or holds an existing input in ``protect``."""
    for q in protect:
        if q and Path(str(q)).exists() and inside(path, q):
            raise OutputError(f"{path} would replace or sit inside {q}, an input of this command")
        if q and Path(str(q)).exists() and inside(q, path):
            raise OutputError(f"{path} holds {q}, an input of this command (the {what} is written as a whole); give a new folder")


def _check_replaceable(path: str | os.PathLike, overwrite: bool, is_ours: Callable[[Path], bool], what: str, kind: str | None) -> None:
    """Refuse to replace a non-empty folder mito did not write, or one it did without ``overwrite``."""
    p = Path(path)
    if not is_ours(p):
        hint = (
            f" (it has no {MANIFEST}; if an earlier mito wrote it, delete it by hand)"
            if kind is not None and not (p / MANIFEST).exists()
            else ""
        )
        raise OutputError(f"{path} holds files mito did not write; choose a new {what}{hint}")
    if not overwrite:
        raise OutputError(f"{path} already exists; choose another {what} or pass --overwrite")


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compressed: bool = True) -> Path:
    """Write numpy arrays to an .npz file atomically (the handle closed before the file is moved into place)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a path would get ".npz" appended by numpy
            save: Any = np.savez_compressed if compressed else np.savez  # numpy's stubs type **arrays as its keywords
            save(f, **arrays)

    return atomic_write(path, write, ".npz")
