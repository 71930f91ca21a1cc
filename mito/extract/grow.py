"""Adding tiles to an existing store: the slides (or crops) a SOURCE has that the store lacks become new rows.

Old rows and their embeddings are never touched; rows of slides (or crops) no longer in SOURCE are kept.
Slides the store already holds must still give the same tiles (same --mpp, grid, tissue threshold ...);
otherwise the store is refused, as before, in one line. After :func:`grow_store`, the source's tile table
is the store's (same rows, same order), so the extractor reads row ``i`` for store row ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from mito.cache import Store, StoreError, tile_list_hash
from mito.extract.sources import TileSource
from mito.wording import counted

APPENDABLE = ("slides", "folder", "manifest")  # a slide with --points is one fixed list


@dataclass
class Growth:
    """What bringing a store up to its SOURCE did: tiles and slides added, rows kept for what SOURCE lost."""

    added_tiles: int = 0
    added_slides: list[str] = field(default_factory=list)
    kept_tiles: int = 0  # rows whose slide (or crop) is no longer in SOURCE
    kept_slides: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (recorded in the run summary)."""
        return {"added_tiles": self.added_tiles, "added_slides": self.added_slides, "kept_tiles": self.kept_tiles,
                "kept_slides": self.kept_slides}


def _refuse(store: Store, path: str, why: str = "") -> StoreError:
    src = (store.meta.get("source") or {}).get("path")
    return StoreError(f"{path} was made from a different tile list ({store.n_tiles} tiles from {src}){why}; use a new --store")


def grow_store(store: Store, source: TileSource, path: str, may_write: bool = True, limited: bool = False) -> Growth | None:
    """Append the tiles of ``source`` that ``store`` lacks (finishing an interrupted append) and align
    ``source.tiles`` with the store's rows; None when the store holds exactly this tile list already.
    ``limited`` (a --limit run) never grows a store: its list is a cut, not new data."""
    ids = source.tiles["tile_id"].astype(str)
    pending = store.meta.get("append")
    if not pending and store.meta.get("tile_list_sha256") == tile_list_hash(ids.tolist()):
        return None
    made = store.meta.get("source") or {}
    if source.kind not in APPENDABLE or made.get("kind") != source.kind or (source.kind != "slides" and made.get("path") != source.root):
        raise _refuse(store, path)
    if limited:
        raise _refuse(store, path, "; --limit takes a fixed cut of SOURCE, so it never adds tiles")
    held = store.tiles
    old = held["tile_id"].astype(str)
    growth = Growth()
    if source.kind == "slides":
        for s in sorted(set(held["slide"]) & set(source.tiles["slide"])):
            if set(old[held["slide"] == s]) != set(ids[source.tiles["slide"] == s]):
                raise _refuse(store, path, f": slide {s} now gives other tiles (other --mpp, --stride, --min-tissue or annotations?)")
    new = source.tiles[~ids.isin(set(old)).to_numpy()].reset_index(drop=True)
    gone = ~old.isin(set(ids)).to_numpy()
    growth.kept_tiles = int(gone.sum())
    if source.kind == "slides":
        growth.added_slides = sorted(set(new["slide"]))
        growth.kept_slides = sorted(set(held["slide"][gone]) - set(source.tiles["slide"]))
    if len(new) or pending:
        if not may_write:
            raise StoreError(f"{path} lacks {len(new)} tiles of SOURCE; only rank 0 may add them")
        if len(new):
            store.append_tiles(new, {"slides": growth.added_slides} if growth.added_slides else {"tiles": len(new)})
        else:
            store.cancel_append()
    growth.added_tiles = len(new)
    source.tiles = store.tiles.copy()
    return growth


def growth_lines(g: dict[str, Any]) -> list[str]:
    """One line per thing a user must know: what was added, what was kept although SOURCE no longer has it."""
    out = []
    if g["added_tiles"]:
        what = f" from {counted(len(g['added_slides']), 'new slide')} ({', '.join(g['added_slides'][:5])}{' ...' if len(g['added_slides']) > 5 else ''})" if g["added_slides"] else ""
        out.append(f"added {counted(g['added_tiles'], 'tile')}{what}; the tiles already in the store were not embedded again")
        if g.get("incomplete"):
            keys = g["incomplete"]
            out.append(f"{', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''} {'lacks' if len(keys) == 1 else 'lack'} the new tiles "
                       "(not in this run): re-run with the store's --backbone/--zooms/--colors/--augment to embed them")
    if g["kept_tiles"]:
        what = f" of {counted(len(g['kept_slides']), 'slide')} no longer in SOURCE ({', '.join(g['kept_slides'][:5])}{' ...' if len(g['kept_slides']) > 5 else ''})" if g["kept_slides"] else " no longer in SOURCE"
        out.append(f"kept {counted(g['kept_tiles'], 'tile')}{what}: a store never drops rows (extract into a new --store to leave them out)")
    return out
