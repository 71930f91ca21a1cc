"""Adding tiles to an existing store: the slides (or crops) a SOURCE has that the store lacks become new rows.

Old rows and their embeddings are never touched; rows of slides (or crops) no longer in SOURCE are kept.
Slides the store already holds must still give the same tiles (same --mpp, grid, tissue threshold ...);
otherwise the store is refused, as before, in one line. After :func:`grow_store`, the source's tile table
is the store's (same rows, same order), so the extractor reads row ``i`` for store row ``i``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mito.core.wording import counted
from mito.extract.sources import TileSource
from mito.store import Store, StoreError, stored_column, tile_list_hash

APPENDABLE = ("slides", "folder", "manifest")  # a slide with --points is one fixed list


GEOMETRY = ("x", "y", "x0", "y0", "x1", "y1", "level", "source_mpp", "slide_mpp")  # what each row's pixels were: never rewritten
KEYS = ("tile_id", "slide")
TILING = ("mpp", "tile_px", "stride", "min_tissue")  # slide options that decide a store's tiles


def _geometry(name: str) -> bool:
    return name in GEOMETRY or name.startswith("level_z")


@dataclass
class Growth:
    """What bringing a store up to its SOURCE did: tiles and slides added, rows kept for what SOURCE lost, metadata
    (labels ...) of rows already in the store updated."""

    added_tiles: int = 0
    added_slides: list[str] = field(default_factory=list)
    kept_tiles: int = 0  # rows whose slide (or crop) is no longer in SOURCE
    kept_slides: list[str] = field(default_factory=list)
    updated_tiles: int = 0  # rows whose labels or other metadata SOURCE now says otherwise
    updated_slides: list[str] = field(default_factory=list)
    updated_columns: list[str] = field(default_factory=list)
    new_columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (recorded in the run summary)."""
        return {
            "added_tiles": self.added_tiles,
            "added_slides": self.added_slides,
            "kept_tiles": self.kept_tiles,
            "kept_slides": self.kept_slides,
            "updated_tiles": self.updated_tiles,
            "updated_slides": self.updated_slides,
            "updated_columns": self.updated_columns,
            "new_columns": self.new_columns,
        }

    @property
    def changed(self) -> bool:
        """True when the run must say something about the store's rows."""
        return bool(self.added_tiles or self.kept_tiles or self.updated_tiles or self.new_columns)


def _refuse(store: Store, path: str, why: str = "") -> StoreError:
    src = (store.meta.get("source") or {}).get("path")
    return StoreError(f"{path} was made from a different tile list ({store.n_tiles} tiles from {src}){why}; use a new --store")


def _tiling(options: dict[str, Any]) -> dict[str, Any]:
    mpp, px = options.get("mpp"), options.get("tile_px")
    step = options.get("stride_px") or px
    return {"mpp": mpp, "tile_px": px, "stride": round(step * mpp, 6) if step and mpp else None, "min_tissue": options.get("min_tissue")}


def check_tiling(store: Store, path: str, options: dict[str, Any]) -> None:
    """Refuse slide options that would tile new slides unlike the store's (the store's rows share one tiling)."""
    had = ((store.meta.get("slides") or {}).get("options")) or {}
    if not had:
        return
    old, new = _tiling(had), _tiling(options)
    diff = [k for k in TILING if old[k] != new[k]]
    if diff:
        shown = {"mpp": "--mpp {:g}", "tile_px": "--tile-px {:g}", "stride": "a grid step of {:g} um", "min_tissue": "--min-tissue {:g}"}
        raise StoreError(
            f"{path} was tiled with "
            + " ".join(shown[k].format(old[k]) for k in diff)
            + ", this run "
            + " ".join(shown[k].format(new[k]) for k in diff)
            + ": its rows share one tiling; "
            "give the store's values or use a new --store"
        )


def _differs(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Per row: do ``a`` and ``b`` (aligned) hold other values as the store would keep them (NaN equals NaN)?"""
    ka, va = stored_column(a)
    kb, vb = stored_column(b)
    if ka in ("int", "float") and kb in ("int", "float"):
        x, y = va.astype(np.float64), vb.astype(np.float64)
        return ~(np.isclose(x, y, rtol=1e-9, atol=1e-9) | (np.isnan(x) & np.isnan(y)))
    if ka != kb:
        return np.ones(len(va), bool)
    return va != vb


def _zoom_fix(store: Store, source: TileSource, missing: list[str]) -> str:
    zooms = sorted({c.split("_z", 1)[1] for c in missing if c.startswith(("level_z", "outside_z"))}, key=float)
    if not zooms:
        return ""
    have = sorted({c.split("_z", 1)[1] for c in store.tile_column_names if c.startswith("outside_z")}, key=float, reverse=True)
    return (
        f": the store's tiles carry zoom(s) {', '.join(zooms)} that this run lacks; add the slides with the store's zooms, "
        f"`mito extract {source.root} --store {store.path} --zooms {','.join(have)} ...` (its other options as before)"
    )


def grow_store(
    store: Store, source: TileSource, path: str, may_write: bool = True, limited: bool = False, tasks: tuple[str, ...] = ()
) -> Growth | None:
    """Bring ``store`` up to ``source``: append the tiles it lacks (finishing an interrupted append), update the labels
    and other metadata of its rows where SOURCE now says otherwise, and align ``source.tiles`` with the store's rows;
    None when the store already holds exactly this tile table. Every check (tiles, tiling, columns) is made before
    anything is written. ``limited`` (a --limit or --sample run) never grows a store: its list is a cut, not new data."""
    if store.meta.get("tile_update"):
        if not may_write:
            raise StoreError(f"{path}: updating its tile table was interrupted; only rank 0 may finish it")
        store.finish_tile_update()
    ids = source.tiles["tile_id"].astype(str)
    pending = store.meta.get("append")
    same = not pending and store.meta.get("tile_list_sha256") == tile_list_hash(ids.tolist())
    _check_source(store, source, path, same, limited)
    held = store.tiles
    old = held["tile_id"].astype(str)
    growth = Growth()
    if source.kind == "slides" and not same:
        for s in sorted(set(held["slide"]) & set(source.tiles["slide"])):
            if set(old[held["slide"] == s]) != set(ids[source.tiles["slide"] == s]):
                raise _refuse(store, path, f": slide {s} now gives other tiles (other --mpp, --stride, --min-tissue or annotations?)")
    pos = pd.Index(ids).get_indexer(old)  # each store row's row in SOURCE (-1: no longer there)
    both = pos >= 0
    _check_geometry(path, held[both].reset_index(drop=True), source.tiles.iloc[pos[both]].reset_index(drop=True))
    new = source.tiles[~ids.isin(set(old)).to_numpy()].reset_index(drop=True)
    update = _metadata_update(held, source.tiles, pos, growth)
    if len(new):
        _check_columns(store, source, path, len(new))
    gone = ~both
    growth.kept_tiles = int(gone.sum())
    if source.kind == "slides":
        growth.added_slides = sorted(set(new["slide"]))
        growth.kept_slides = sorted(set(held["slide"][gone]) - set(source.tiles["slide"]))
    if (update is not None or len(new) or pending) and not may_write:
        raise StoreError(f"{path} lacks {len(new)} tiles of SOURCE or their labels; only rank 0 may add them")
    if update is not None:  # labels first: the new rows then carry the same columns
        store.update_tile_columns(update, {"tiles": growth.updated_tiles}, tasks=[t for t in tasks if t in update])
    if len(new):
        store.append_tiles(new, {"slides": growth.added_slides} if growth.added_slides else {"tiles": len(new)})
    elif pending:
        store.cancel_append()
    growth.added_tiles = len(new)
    if same and not growth.changed:
        return None
    source.tiles = store.tiles.copy()
    return growth


def _check_source(store: Store, source: TileSource, path: str, same: bool, limited: bool) -> None:
    """Refuse a SOURCE that cannot grow this store: another kind or folder, a cut (--limit, --sample), another tiling."""
    made = store.meta.get("source") or {}
    if not same and (
        source.kind not in APPENDABLE or made.get("kind") != source.kind or (source.kind != "slides" and made.get("path") != source.root)
    ):
        raise _refuse(store, path)
    if not same and limited:
        raise _refuse(store, path, "; --limit and --sample take a fixed cut of SOURCE, so they never add tiles")
    if source.kind == "slides" and source.slides is not None and source.slides["opts"].mpp is not None:
        check_tiling(store, path, asdict(source.slides["opts"]))


def _check_geometry(path: str, mine: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """Refuse when a row both tables hold (aligned) now says other pixels were embedded."""
    for c in [c for c in mine.columns if c in theirs and _geometry(c)]:
        bad = _differs(mine[c], theirs[c])
        if bad.any():
            i = int(np.argmax(bad))
            where = f"slide {mine['slide'].iat[i]}" if "slide" in mine else f"tile {mine['tile_id'].iat[i]}"
            raise StoreError(
                f"{path}: {where} is now tiled otherwise ({c}: the store has {mine[c].iat[i]}, this run "
                f"{theirs[c].iat[i]}); its rows would no longer say what was embedded: give the store's "
                "--mpp/--tile-px/--slide-mpp or use a new --store"
            )


def _check_columns(store: Store, source: TileSource, path: str, n_new: int) -> None:
    """Refuse new tiles that lack a column of the store's tile table."""
    missing = sorted(set(store.tile_column_names) - set(source.tiles.columns))
    if missing:
        raise StoreError(
            f"cannot add {n_new} tiles to {path}: they lack the store's columns {', '.join(missing[:6])}"
            + (_zoom_fix(store, source, missing) or "; give the same manifest columns or use a new --store")
        )


def _metadata_update(held: pd.DataFrame, tiles: pd.DataFrame, pos: np.ndarray, growth: Growth) -> pd.DataFrame | None:
    """The store's metadata columns (labels, manifest columns, slide paths ...) as SOURCE now gives them for the rows it
    still has, plus the columns SOURCE has that the store lacks; None when nothing changed. Fills in ``growth``."""
    both = pos >= 0
    cols, changed = {}, np.zeros(len(held), bool)
    for c in tiles.columns:
        if c in KEYS or (_geometry(c) and c in held):
            continue
        src = tiles[c].iloc[pos[both]].reset_index(drop=True)
        if c in held:
            diff = np.zeros(len(held), bool)
            diff[both] = _differs(held[c][both].reset_index(drop=True), src)
            if not diff.any():
                continue
            rest = held[c][~both]
        else:  # a column SOURCE now has (rows it no longer has get no value)
            diff = both.copy()
            rest = pd.Series(np.full(int((~both).sum()), np.nan))
            growth.new_columns.append(str(c))
        parts = [src.set_axis(np.flatnonzero(both))] + ([rest.set_axis(np.flatnonzero(~both))] if len(rest) else [])
        cols[c] = pd.concat(parts).sort_index().reset_index(drop=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
        if c in held:
            growth.updated_columns.append(str(c))
            changed |= diff
    if not cols:
        return None
    growth.updated_tiles = int(changed.sum())
    if "slide" in held:
        growth.updated_slides = sorted(set(held["slide"][changed].astype(str)))
    return pd.DataFrame(cols)


def growth_lines(g: dict[str, Any]) -> list[str]:
    """One line per thing a user must know: what was added, what was kept although SOURCE no longer has it."""
    out = []
    if g["added_tiles"]:
        what = (
            f" from {counted(len(g['added_slides']), 'new slide')} ({', '.join(g['added_slides'][:5])}{' ...' if len(g['added_slides']) > 5 else ''})"
            if g["added_slides"]
            else ""
        )
        out.append(f"added {counted(g['added_tiles'], 'tile')}{what}; the tiles already in the store were not embedded again")
        if g.get("incomplete"):
            keys = g["incomplete"]
            out.append(
                f"{', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''} {'lacks' if len(keys) == 1 else 'lack'} the new tiles "
                "(not in this run): re-run with the store's --backbone/--zooms/--colors/--augment to embed them"
            )
    if g.get("updated_tiles"):
        slides = g.get("updated_slides") or []
        where = f" in {len(slides)} slide(s) ({', '.join(slides[:5])}{' ...' if len(slides) > 5 else ''})" if slides else ""
        out.append(
            f"updated {', '.join(g['updated_columns'])} of {g['updated_tiles']} tiles{where} as SOURCE now gives them "
            "(metadata only: no tile was embedded again)"
        )
    if g.get("new_columns"):
        out.append(f"added column(s) {', '.join(g['new_columns'])} from SOURCE to the tile table")
    if g["kept_tiles"]:
        what = (
            f" of {counted(len(g['kept_slides']), 'slide')} no longer in SOURCE ({', '.join(g['kept_slides'][:5])}{' ...' if len(g['kept_slides']) > 5 else ''})"
            if g["kept_slides"]
            else " no longer in SOURCE"
        )
        out.append(
            f"kept {counted(g['kept_tiles'], 'tile')}{what}: a store never drops rows (extract into a new --store to leave them out)"
        )
    return out
