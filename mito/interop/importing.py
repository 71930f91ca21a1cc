"""`mito import`: a folder of TRIDENT / CLAM / STAMP / eva features becomes a mito store, through the store's own
create and append paths, so every command that reads a store reads it.

Every file is read and checked (shape, encoder, finite values, coordinates inside the slide) before anything is
written: bad input leaves no store and no change. Each slide becomes one tile row per patch; the features one
variant ``<encoder>:z1:rgb``; each source file is recorded with its sha256. Re-running with more files appends their
slides (Store.append_tiles); a run cut short is finished by running it again.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.core.io import file_sha256 as sha256_file
from mito.core.progress import add_task, progress_bar
from mito.core.runrecord import run_record
from mito.core.version import __version__
from mito.interop.base import FLOAT16_MAX, SAFE_NAME, InteropError, SourceSlide, safe_encoder_name
from mito.interop.formats import scan
from mito.store import DEFAULT_CHUNK_ROWS, Store, create_store, open_store, store_exists

SLIDE_KEYS = ("slide", "slide_id", "FILENAME", "path")  # a labels CSV's slide column (mito, CLAM, STAMP's slide table, a slide manifest)
PATIENT_KEYS = ("patient", "case_id", "PATIENT")  # its patient column (mito, CLAM, STAMP)
NOT_TASKS = ("patient", "group", "split")  # label-CSV columns that are no task
BLOCK_ROWS = 16384  # rows read at a time when checking a file


@dataclass
class ImportResult:
    """What an import did."""

    store: str
    format: str
    variant: str
    created: bool
    added_slides: list[str] = field(default_factory=list)
    known_slides: list[str] = field(default_factory=list)  # already in the store from the same files
    empty_slides: list[str] = field(default_factory=list)  # files with no patch (no rows to add)
    added_tiles: int = 0
    unlabelled: list[str] = field(default_factory=list)  # slides the labels CSV does not name
    unused_labels: int = 0  # rows of the labels CSV naming no slide of the store
    label_columns: list[str] = field(default_factory=list)
    written_chunks: int = 0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _variant_name(slides: list[SourceSlide], name: str | None) -> tuple[str, str | None]:
    """(backbone part of the variant key, the encoder the files record)."""
    recorded = sorted({s.encoder for s in slides if s.encoder})
    if len(recorded) > 1:
        raise InteropError(
            f"the files record several encoders ({', '.join(recorded[:4])}): import one encoder's files per store "
            "(or per variant name: --name)"
        )
    enc = recorded[0] if recorded else None
    if name is not None:
        if not SAFE_NAME.match(name):
            raise InteropError(f"--name {name!r}: use letters, digits, _ . + - (it names the variant <name>:z1:rgb)")
        return name, enc
    unknown = [s.files[0].name for s in slides if not s.encoder]
    if unknown or enc is None:
        raise InteropError(
            f"{unknown[0] if unknown else 'the files'} records no encoder (CLAM and eva files never do): pass --name ENCODER (e.g. uni_v1)"
        )
    safe = safe_encoder_name(enc)
    if not safe or not SAFE_NAME.match(safe):
        raise InteropError(f"the encoder name {enc!r} cannot name a variant: pass --name")
    return safe, enc


def _check_slide(s: SourceSlide, dim: int) -> None:
    """Read every row once: finite, within float16; coordinates inside the slide when its size is recorded."""
    where = s.files[0] if len(s.files) == 1 else f"{s.files[0]} (+{len(s.files) - 1} files)"
    if s.dim != dim:
        raise InteropError(f"mixed dimensions: {where} holds {s.dim}-d features, the others {dim}-d")
    for a in range(0, s.n, BLOCK_ROWS):
        x = s.read(a, min(s.n, a + BLOCK_ROWS))
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise InteropError(f"{where}: row {a + int(np.argmax(bad))} holds NaN or inf ({int(bad.sum())} such rows in this block)")
        big = (np.abs(x) > FLOAT16_MAX).any(axis=1)
        if big.any():
            raise InteropError(
                f"{where}: row {a + int(np.argmax(big))} holds a value beyond float16's range (+-65504), which a store keeps as float16"
            )
    if s.coords is not None and s.size is not None and s.unit == "px":
        w, h = s.size
        out = (s.coords[:, 0] < 0) | (s.coords[:, 1] < 0) | (s.coords[:, 0] >= w) | (s.coords[:, 1] >= h)
        if out.any():
            i = int(np.argmax(out))
            raise InteropError(
                f"{where}: patch {i} at ({s.coords[i, 0]:g}, {s.coords[i, 1]:g}) lies outside the {w}x{h} slide "
                f"({int(out.sum())} patches do)"
            )


def _geometry_columns(s: SourceSlide) -> dict[str, np.ndarray]:
    """The tile-table columns of a slide's patches: level-0 top-left and box (px), or the same in um (STAMP)."""
    if s.coords is None:
        return {}
    c = s.coords
    whole = np.all(c == np.round(c))
    xy = c.astype(np.int64) if whole and s.unit == "px" else c
    if s.unit == "um":
        out = {"x0_um": c[:, 0], "y0_um": c[:, 1]}
        if s.side:
            out.update(x1_um=c[:, 0] + s.side, y1_um=c[:, 1] + s.side)
        return out
    out = {"x0": xy[:, 0], "y0": xy[:, 1]}
    if s.side:
        side = int(s.side) if float(s.side).is_integer() and whole else float(s.side)
        out.update(
            x1=xy[:, 0] + side,
            y1=xy[:, 1] + side,
            x=np.floor(c[:, 0] + s.side / 2).astype(np.int64),
            y=np.floor(c[:, 1] + s.side / 2).astype(np.int64),
        )
    return out


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A labels CSV as a table indexed by slide: its slide column (slide, slide_id or FILENAME) and every other column;
    a patient column (patient, case_id or PATIENT) becomes ``patient``."""
    p = Path(path)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InteropError(f"no labels file at {p}") from None
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InteropError(f"{p} is not a readable CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    key = next((k for k in SLIDE_KEYS if k in df), None)
    if key is None:
        raise InteropError(f"{p} has no slide column ({' / '.join(SLIDE_KEYS)}); it has: {', '.join(df.columns[:8])}")
    df = df.rename(columns={key: "slide"})
    pat = next((k for k in PATIENT_KEYS if k in df), None)
    if pat is not None and pat != "patient":
        if "patient" in df:
            df = df.drop(columns=[pat])
        else:
            df = df.rename(columns={pat: "patient"})
    if key == "FILENAME":
        df["slide"] = df["slide"].str.removesuffix(".h5")
    if key == "path":
        df["slide"] = [os.path.basename(v) for v in df["slide"]]
    df["slide"] = df["slide"].str.strip()
    dup = df["slide"][df["slide"].duplicated()]
    if len(dup):
        raise InteropError(f"{p}: slide {dup.iloc[0]!r} has several rows")
    out = df.set_index("slide").replace("", None)
    out.attrs["path"] = str(p)
    return out


def _label_lookup(labels: pd.DataFrame, slide: str) -> pd.Series | None:
    for k in (slide, os.path.splitext(slide)[0]):
        if k in labels.index:
            return labels.loc[k]
    stems = {os.path.splitext(str(i))[0]: i for i in labels.index}
    return labels.loc[stems[slide]] if slide in stems else None


def _label_frame(
    slides: list[str], sizes: list[int], labels: pd.DataFrame | None, own: list[dict[str, Any]]
) -> tuple[pd.DataFrame, list[str], set[str]]:
    """Per tile: the labels of its slide (the CSV's, else what the format carries); slides the CSV misses; CSV rows used."""
    cols: dict[str, list[Any]] = {}
    missing, used = [], set()
    names = list(labels.columns) if labels is not None else sorted({k for o in own for k in o})
    for slide, o in zip(slides, own):
        row = _label_lookup(labels, slide) if labels is not None else None
        if labels is not None and row is None:
            missing.append(slide)
        if row is not None:
            used.add(str(row.name))
        for c in names:
            v = row[c] if row is not None else (o.get(c) if labels is None else None)
            cols.setdefault(c, []).append(None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    frame = pd.DataFrame({c: pd.Series(np.repeat(np.array(v, dtype=object), sizes), dtype=object) for c, v in cols.items()})
    if "patient" in frame and "group" not in frame:
        frame["group"] = frame["patient"]
    return frame, missing, used


def _records(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every slide an import put in the store: slide, rows [a, b), source files with sha256 (creation and appends)."""
    out = [r for run in meta.get("imports") or [] for r in run.get("slides", [])]
    for a in meta.get("appends") or []:
        out += list((a.get("import") or {}).get("slides", []))
    return out


def import_features(
    folder: str | os.PathLike,
    store: str | os.PathLike,
    fmt: str = "auto",
    name: str | None = None,
    labels: str | os.PathLike | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = False,
) -> ImportResult:
    """Import a folder of peer features into ``store`` (created, or appended to when it is an earlier import)."""
    store = str(store)
    fmt, slides = scan(folder, fmt)
    seen: dict[str, SourceSlide] = {}
    for s in slides:
        if s.slide in seen:
            raise InteropError(f"duplicate slide {s.slide!r}: {seen[s.slide].files[0]} and {s.files[0]}")
        seen[s.slide] = s
    backbone, encoder = _variant_name(slides, name)
    key = f"{backbone}:z1:rgb"
    dim = slides[0].dim
    table = read_labels(labels) if labels is not None else None
    exists = store_exists(store)
    held = _held_slides(store, key, dim) if exists else {}
    result = ImportResult(store, fmt, key, created=not exists)
    new, digests = _new_slides(slides, held, store, dim, result, progress)
    if not exists and not new:
        raise InteropError(f"no patches in the files of {folder}: nothing to import")
    with open_store(store, "a") if exists else _create(store, fmt, folder, new, digests, key, table, result, chunk_rows) as st:
        if exists:
            _append(st, fmt, folder, new, digests, table, result)
        st.ensure_variant(key, dim, {"backbone": backbone, "imported": {"format": fmt, "encoder": encoder}})
        result.written_chunks = _fill(st, key, {x.slide: x for x in slides}, progress)
        st.forget_done_rows()
        spec = dict(folder=str(folder), format=fmt, name=name, labels=None if labels is None else str(labels), chunk_rows=chunk_rows)
        st.add_run(run_record("import", spec, st.meta.get("tile_list_sha256")))
    return result


def _held_slides(store: str, key: str, dim: int) -> dict[str, dict[str, Any]]:
    """The slides an earlier import put in ``store`` (by name); refuses a store these files cannot join."""
    with open_store(store, "a") as st:
        src = st.meta.get("source") or {}
        if src.get("kind") != "import":
            raise InteropError(f"{store} was made by mito extract, not mito import: import into a new --store")
        if st.variants not in ([], [key]):  # none yet: a first import cut short before its variant was made
            raise InteropError(
                f"{store} holds {', '.join(st.variants)}; these files are {key}: import them into a new --store (or give --name as before)"
            )
        if st.variants and int(st.variant_info(key)["dim"]) != dim:
            raise InteropError(f"mixed dimensions: {store} holds {st.variant_info(key)['dim']}-d features, these files {dim}-d")
        return {r["slide"]: r for r in _records(st.meta)}


def _new_slides(
    slides: list[SourceSlide], held: dict[str, dict[str, Any]], store: str, dim: int, result: ImportResult, progress: bool
) -> tuple[list[SourceSlide], dict[str, list[dict[str, Any]]]]:
    """(the slides with patches the store lacks, every slide's files with their sha256); refuses a slide the store holds
    from other bytes, notes the known and empty slides in ``result``."""
    new: list[SourceSlide] = []
    digests: dict[str, list[dict[str, Any]]] = {}
    with progress_bar("files", enabled=progress) as bar:
        task = add_task(bar, "checking", len(slides))
        for s in slides:
            digests[s.slide] = [{"path": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in s.files]
            if s.slide in held:
                was = [f["sha256"] for f in held[s.slide]["files"]]
                if was != [f["sha256"] for f in digests[s.slide]]:
                    raise InteropError(
                        f"slide {s.slide!r} is already in {store} from other bytes ({held[s.slide]['files'][0]['path']}); "
                        f"{s.files[0]} differs: import it into a new --store"
                    )
                result.known_slides.append(s.slide)
            else:
                _check_slide(s, dim)
                if s.n == 0:
                    result.empty_slides.append(s.slide)
                else:
                    new.append(s)
            bar.update(task, advance=1)
    return new, digests


def _tile_frame(new: list[SourceSlide], table: pd.DataFrame | None, result: ImportResult) -> tuple[pd.DataFrame, list[str]]:
    """The new slides' tile rows (id, slide, coordinates, labels) and which of their columns are labels."""
    sizes = [s.n for s in new]
    base = pd.DataFrame(
        {
            "tile_id": [f"{s.slide}#{i}" for s in new for i in range(s.n)],
            "slide": np.repeat(np.array([s.slide for s in new], dtype=object), sizes),
        }
    )
    geo = [_geometry_columns(s) for s in new]
    for c in geo[0] if geo else {}:
        base[c] = np.concatenate([g[c] for g in geo]) if all(c in g for g in geo) else np.nan
    lab, missing, used = _label_frame([s.slide for s in new], sizes, table, [s.labels for s in new])
    result.unlabelled += missing
    if table is not None:
        result.unused_labels = len(set(map(str, table.index)) - used)
    clash = [c for c in lab.columns if c in base.columns]
    if clash:
        raise InteropError(f"the labels CSV has a column {clash[0]!r}, which mito import writes itself: rename it")
    return pd.concat([base, lab], axis=1), [c for c in lab.columns if c not in NOT_TASKS]


def _entries(new: list[SourceSlide], digests: dict[str, list[dict[str, Any]]], start: int) -> list[dict[str, Any]]:
    out, a = [], start
    for s in new:
        out.append({"slide": s.slide, "rows": [a, a + s.n], "files": digests[s.slide], **({"attrs": s.attrs} if s.attrs else {})})
        a += s.n
    return out


def _create(
    store: str,
    fmt: str,
    folder: Any,
    new: list[SourceSlide],
    digests: dict[str, list[dict[str, Any]]],
    key: str,
    table: pd.DataFrame | None,
    result: ImportResult,
    chunk_rows: int,
) -> Store:
    tiles, tasks = _tile_frame(new, table, result)
    result.label_columns = tasks
    result.added_slides = [s.slide for s in new]
    result.added_tiles = len(tiles)
    run = {"format": fmt, "folder": str(Path(folder).resolve()), "added": _now(), "slides": _entries(new, digests, 0)}
    meta = {
        "source": {"path": str(Path(folder).resolve()), "kind": "import", "format": fmt},
        "tasks": tasks,
        "imports": [run],
        "versions": {"mito": __version__},
    }
    return create_store(store, tiles, meta, chunk_rows=chunk_rows)


def _append(
    s: Store,
    fmt: str,
    folder: Any,
    new: list[SourceSlide],
    digests: dict[str, list[dict[str, Any]]],
    table: pd.DataFrame | None,
    result: ImportResult,
) -> None:
    have = s.tile_column_names
    labels, change = _relabelled(s, table, have) if table is not None else (None, [])
    after = [*have, *[c for c in change if c not in have]]
    tiles = _appended_tiles(s, new, table, result, after) if new else None  # every check of the new files before anything is written
    if labels is not None and change and table is not None:
        s.update_tile_columns(
            labels[change].reset_index(drop=True),
            {"labels": str(table.attrs.get("path", ""))},
            tasks=[c for c in change if c not in NOT_TASKS],
        )
        have = s.tile_column_names
    if tiles is None:
        return
    result.added_slides = [x.slide for x in new]
    result.added_tiles = len(tiles)
    run = {"format": fmt, "folder": str(Path(folder).resolve()), "added": _now(), "slides": _entries(new, digests, s.n_tiles)}
    s.append_tiles(tiles[have], {"slides": result.added_slides, "import": run})


def _relabelled(s: Store, table: pd.DataFrame, have: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """(the labels of the slides already in the store, as the CSV ``table`` gives them, the columns that change)."""
    old = s.tile_table(["slide"])["slide"].astype(str)
    order = list(dict.fromkeys(old))
    sizes = old.value_counts().reindex(order).tolist()
    lab, unnamed, _ = _label_frame(order, sizes, table, [{} for _ in order])
    if np.repeat(np.array(order, dtype=object), sizes).tolist() != old.tolist():  # an import keeps a slide's rows together
        raise InteropError(f"{s.path}: the rows of a slide are not contiguous; import into a new --store")
    known = [c for c in lab.columns if c in have]
    cur = s.tile_table(known) if known else pd.DataFrame(index=range(len(old)))
    keep = old.isin(unnamed).to_numpy()  # slides this CSV does not name keep the labels they have
    for c in known:
        lab.loc[keep, c] = cur[c].astype(object).where(cur[c].notna(), None).to_numpy()[keep]
    return lab, [c for c in lab.columns if c not in have or not _same(cur[c], lab[c])]


def _appended_tiles(s: Store, new: list[SourceSlide], table: pd.DataFrame | None, result: ImportResult, after: list[str]) -> pd.DataFrame:
    """The new slides' tile rows with every column in ``after``; refuses files that give columns the store lacks."""
    tiles, _ = _tile_frame(new, table, result)
    for c in after:
        if c not in tiles:
            tiles[c] = None
    extra = [c for c in tiles.columns if c not in after]
    if extra:
        raise InteropError(
            f"these files give columns {', '.join(extra[:5])} that {s.path} lacks (another format or no patch size?): "
            "import them into a new --store"
        )
    return tiles


def _same(a: pd.Series, b: pd.Series) -> bool:
    x = a.astype(object).where(a.notna(), None).map(lambda v: None if v is None else str(v))
    y = b.astype(object).where(b.notna(), None).map(lambda v: None if v is None else str(v))
    return x.reset_index(drop=True).equals(y.reset_index(drop=True))


def _fill(s: Store, key: str, sources: dict[str, SourceSlide], progress: bool) -> int:
    """Write every chunk of ``key`` not done yet from the recorded slides' files (rows an append kept: from the store)."""
    done = s.done_chunks(key)
    todo = np.flatnonzero(~done)
    if not len(todo):
        return 0
    recs = sorted(_records(s.meta), key=lambda r: r["rows"][0])
    starts = np.array([r["rows"][0] for r in recs])
    dim = int(s.variant_info(key)["dim"])
    with progress_bar("chunks", enabled=progress) as bar:
        task = add_task(bar, f"writing {key}", len(todo))
        for c in todo:
            a, b = s.chunk_rows_range(int(c))
            block = np.empty((b - a, dim), np.float32)
            kept = s.kept_rows(key, int(c))
            if kept:
                block[:kept] = s.read([key], np.arange(a, a + kept), allow_incomplete=True)
            row = a + kept
            i = max(0, int(np.searchsorted(starts, row, side="right")) - 1)
            while row < b:
                r = recs[i]
                lo, hi = r["rows"]
                if not lo <= row < hi:
                    raise InteropError(f"{s.path}: row {row} belongs to no imported slide; import into a new --store")
                src = sources.get(r["slide"])
                if src is None:
                    raise InteropError(
                        f"{s.path} still lacks the features of slide {r['slide']!r} ({r['files'][0]['path']}): "
                        "re-run mito import with the folder that holds it"
                    )
                stop = min(b, hi)
                block[row - a : stop - a] = src.read(row - lo, stop - lo)
                row, i = stop, i + 1
            s.write_chunk(key, int(c), block)
            bar.update(task, advance=1)
    return len(todo)
