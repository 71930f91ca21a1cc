"""Bags of tiles for slide-level (multiple-instance) heads: which rows form each bag, its label, and per-batch reading.

A bag is every readable tile sharing a value of the bag column (``slide`` by default). Its label is either a
tile-table column constant within the bag, or derived (``any:VALUE``: the bag holds at least one tile whose task
label is VALUE). Features are read from the store one batch of bags at a time, through a small bounded cache of
decoded chunks, so memory follows the batch, never the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mito.core.tasks import resolve_task
from mito.datasets import PROXY_TASKS
from mito.heads.base import HeadError, column_moments
from mito.heads.engine import Prepared, keep_order
from mito.store import Store

ANY_PREFIX = "any:"
SCORE_TILES = 16384  # padded tiles (bags x longest bag) per scoring batch; a bag longer than this is scored alone
DEFAULT_CACHE_BYTES = 256 << 20  # decoded chunks kept between batches (small stores are then read once)
NEGATIVE, POSITIVE = "no", "yes"  # classes of a derived any:VALUE bag label


@dataclass
class Bags:
    """Bags of a store: names, the sorted store rows of each (CSR: ``rows[offsets[i]:offsets[i+1]]``), labels, groups."""

    names: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    classes: list[str]
    task: str
    description: str
    dropped: dict[str, str] = field(default_factory=dict)  # bag -> why it was left out (no readable tile, no label, rare class)

    def __len__(self) -> int:
        return len(self.names)

    def bag_rows(self, i: int) -> np.ndarray:
        """Store rows of bag ``i`` (sorted)."""
        return self.rows[self.offsets[i] : self.offsets[i + 1]]

    @property
    def sizes(self) -> np.ndarray:
        """Tiles per bag."""
        return np.diff(self.offsets)

    def table(self) -> pd.DataFrame:
        """One row per bag (tile_id = bag name, group, label): what the bench's fold maker takes."""
        return pd.DataFrame({"tile_id": self.names, "group": self.groups, "label": self.labels, "n_tiles": self.sizes})


def parse_bag_label(spec: str | None) -> str | None:
    """The VALUE of ``any:VALUE`` (None when the bag label is a column constant within the bag)."""
    if spec is None:
        return None
    if not spec.startswith(ANY_PREFIX) or not spec[len(ANY_PREFIX) :].strip():
        raise HeadError(f"--bag-label takes any:VALUE (a bag is positive when any tile's label is VALUE), got {spec!r}")
    return spec[len(ANY_PREFIX) :].strip()


def bag_table(
    store: Store, task: str | None, bag_column: str | None = None, group_column: str | None = None, extra: Sequence[str] = ()
) -> pd.DataFrame:
    """The tile-table columns bags need (bag, group, the task's columns, ``extra``): a 4M-tile table read whole
    holds every column in memory. When a named column is missing the whole table comes back, so make_bags' error
    lists every column there is."""
    have = store.tile_column_names
    want = [bag_column or "slide", *([group_column] if group_column else []), *extra]
    if task is not None:
        spec = PROXY_TASKS.get(task)
        want += [task] if spec is None or not all(c in have for c in spec.columns) else list(spec.columns)
    if any(c not in have for c in want if c not in extra):
        return store.tiles
    return store.tile_table(want)


def make_bags(
    tiles: pd.DataFrame,
    task: str | None,
    bag_column: str | None = None,
    bag_label: str | None = None,
    group_column: str | None = None,
    exclude: np.ndarray | None = None,
    min_per_class: int = 2,
) -> Bags:
    """Group the tile table into labelled bags; a bag whose label is not constant is refused in one line naming it.

    ``task`` names the tile-table column (or proxy task) giving the labels (None: unlabelled bags, for predict); ``bag_label='any:VALUE'`` makes the bag
    label ``yes`` when any tile has VALUE, else ``no``. Tiles with no bag value or in ``exclude`` are left out;
    ``group_column`` (e.g. patient) must be constant within a bag and keeps bags of a group on one side of a split.
    """
    bag_column = bag_column or "slide"
    if bag_column not in tiles:
        raise HeadError(f"no bag column {bag_column!r} in the tile table (it has: {', '.join(tiles.columns)}); pass --bag-column COL")
    if group_column is not None and group_column not in tiles:
        raise HeadError(f"no group column {group_column!r} in the tile table (it has: {', '.join(tiles.columns)})")
    value = parse_bag_label(bag_label)
    if task is None:
        tile_y = np.full(len(tiles), "", dtype=object)
        value = None
    else:
        tile_y = resolve_task(tiles, task, PROXY_TASKS).labels(tiles).to_numpy(dtype=object)
    idx, bag_of, dropped = _bag_tiles(tiles, task, bag_column, tile_y, value is None, exclude)
    names_all = np.array([str(v) for v in bag_of[idx]], dtype=str)
    order = np.lexsort((idx, names_all))
    idx, names_all = idx[order], names_all[order]
    names, starts = np.unique(names_all, return_index=True)
    offsets = np.append(starts, len(idx)).astype(np.int64)
    labels = _bag_labels(names, offsets, idx, tile_y, task, value, bag_label)
    groups = names.astype(object) if group_column is None else _bag_groups(tiles[group_column], group_column, names, offsets, idx)
    if task is None:
        return Bags(
            names.astype(str), offsets, idx.astype(np.int64), labels.astype(str), np.asarray(groups).astype(str), [], "", "", dropped
        )
    counts = pd.Series(labels).value_counts()
    classes = sorted(str(c) for c, n in counts.items() if n >= min_per_class)
    if len(classes) < 2:
        raise HeadError(
            f"slide-level task {task!r} needs two classes with >= {min_per_class} bags each; the bags have "
            + ", ".join(f"{c}: {n}" for c, n in counts.items())
        )
    ok = np.isin(labels.astype(str), classes)
    if not ok.all():  # bags of a rare class are left out, as rare tile classes are
        dropped |= {str(names[i]): f"class {labels[i]!r} has fewer than {min_per_class} bags" for i in np.flatnonzero(~ok)}
        sel = np.flatnonzero(ok)
        rows = np.concatenate([idx[offsets[i] : offsets[i + 1]] for i in sel])
        offsets = np.append(0, np.cumsum(np.diff(offsets)[sel])).astype(np.int64)
        names, labels, groups, idx = names[sel], labels[sel], groups[sel], rows
    name, desc = _bag_task(task, value, bag_column)
    # row order within a bag: sorted store rows (reads come chunk by chunk)
    rows = np.concatenate([np.sort(idx[offsets[i] : offsets[i + 1]]) for i in range(len(names))]).astype(np.int64)
    return Bags(names.astype(str), offsets, rows, labels.astype(str), np.asarray(groups).astype(str), classes, name, desc, dropped)


def _bag_task(task: str, value: str | None, bag_column: str) -> tuple[str, str]:
    """(the bag task's name, what its label says)."""
    if value is not None:
        desc = f"{POSITIVE} = the {bag_column} has at least one tile labelled {value!r} in {task!r}, {NEGATIVE} = none has"
        return f"{task}:{ANY_PREFIX}{value}", desc
    return task, f"the {task!r} label of the {bag_column} (constant within each {bag_column})"


def _bag_tiles(
    tiles: pd.DataFrame, task: str | None, bag_column: str, tile_y: np.ndarray, need_label: bool, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(the rows that join a bag, every row's bag value, bags left out with why); refuses a table where no row joins one."""
    bag_of = tiles[bag_column].astype(object).to_numpy()
    has_bag = np.array([not (v is None or v == "" or (not isinstance(v, str) and pd.isna(v))) for v in bag_of], bool)
    readable = has_bag & ~(np.zeros(len(tiles), bool) if exclude is None else np.asarray(exclude, bool))
    keep = readable.copy()
    if need_label:
        keep &= np.array([v is not None for v in tile_y], bool)
    dropped = dict.fromkeys(_bag_names(bag_of, has_bag) - _bag_names(bag_of, readable), "no readable tile")
    dropped |= dict.fromkeys(_bag_names(bag_of, readable) - _bag_names(bag_of, keep), f"no tile with a {task!r} label")
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        why = f"no tile has both a {bag_column!r} value and a {task!r} label" if task else f"no tile has a {bag_column!r} value"
        unread = sum(1 for w in dropped.values() if w == "no readable tile")
        raise HeadError(why + (f" ({unread} bags have no readable tile)" if unread else ""))
    return idx, bag_of, dropped


def _bag_labels(
    names: np.ndarray,
    offsets: np.ndarray,
    idx: np.ndarray,
    tile_y: np.ndarray,
    task: str | None,
    value: str | None,
    bag_label: str | None,
) -> np.ndarray:
    """Each bag's label: '' without a task, yes/no for any:VALUE, else its tiles' one label (mixed labels are refused)."""
    labels = np.empty(len(names), dtype=object)
    if value is not None:
        seen = {str(v) for v in tile_y if v is not None}
        if value not in seen:
            raise HeadError(
                f"--bag-label {bag_label}: no tile of task {task!r} has the label {value!r} (it has: {', '.join(sorted(seen))})"
            )
    for i in range(len(names)):
        if task is None:
            labels[i] = ""
            continue
        ys = tile_y[idx[offsets[i] : offsets[i + 1]]]
        if value is not None:
            labels[i] = POSITIVE if any(v == value for v in ys) else NEGATIVE
        else:
            distinct = sorted({str(v) for v in ys})
            if len(distinct) > 1:
                raise HeadError(
                    f"bag {str(names[i])!r} mixes {task!r} labels ({', '.join(distinct[:4])}); a slide-level label must be constant "
                    "within a bag (use --bag-label any:VALUE for a derived one)"
                )
            labels[i] = distinct[0]
    return labels


def _bag_groups(column: pd.Series, group_column: str, names: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Each bag's group (its tiles' one value of ``column``; a bag spanning several is refused)."""
    g_all = column.astype(object).to_numpy()[idx]
    groups = np.empty(len(names), dtype=object)
    for i in range(len(names)):
        in_bag = {str(v) for v in g_all[offsets[i] : offsets[i + 1]]}
        if len(in_bag) > 1:
            raise HeadError(f"bag {str(names[i])!r} spans several {group_column!r} values; a bag must belong to one group")
        groups[i] = in_bag.pop()
    return groups


def _bag_names(bag_of: np.ndarray, mask: np.ndarray) -> set[str]:
    return {str(v) for v in pd.unique(bag_of[mask])}


def left_out(bags: Bags, store_meta: dict, bag_column: str | None = None) -> dict[str, str]:
    """Bags of a store that ``bags`` leaves out, with why: those make_bags dropped and, for bags by slide, the slides
    the store records that hold no tile on tissue. Reported, so no slide vanishes from a count unsaid."""
    out = dict(bags.dropped)
    if (bag_column or "slide") == "slide":
        have = set(bags.names.tolist())
        slides = store_meta.get("slides")
        rec = slides if isinstance(slides, dict) else {}
        for r in rec.get("slides") or []:
            if isinstance(r, dict) and r.get("n_tiles") == 0 and str(r.get("slide")) not in have:
                out.setdefault(str(r.get("slide")), "no tile on tissue")
    return dict(sorted(out.items()))


def left_out_line(dropped: dict[str, str], done: str = "left out", what: str = "bag") -> str | None:
    """One line naming the bags left out and why: '3 bags left out: a.svs, b.svs (no readable tile); c.svs (...)'."""
    if not dropped:
        return None
    by: dict[str, list[str]] = {}
    for b, why in dropped.items():
        by.setdefault(why, []).append(b)
    parts = [", ".join(bs[:3]) + (f" and {len(bs) - 3} more" if len(bs) > 3 else "") + f" ({why})" for why, bs in by.items()]
    n = len(dropped)
    return f"{n} {what}{'s' if n != 1 else ''} {done}: " + "; ".join(parts)


def subsample(rows: np.ndarray, max_tiles: int | None, dropout: float, rng: np.random.Generator | None) -> np.ndarray:
    """The rows a bag shows this epoch: tile dropout (each tile kept with 1 - ``dropout``, at least one), then at most
    ``max_tiles`` at random (sorted). Without ``rng`` (scoring) only the cap applies, deterministically (evenly spaced)."""
    if rng is None:
        if max_tiles is not None and len(rows) > max_tiles:
            return rows[np.linspace(0, len(rows) - 1, max_tiles).round().astype(np.int64)]
        return rows
    if dropout > 0 and len(rows) > 1:
        keep = rng.random(len(rows)) >= dropout
        if not keep.any():
            keep[rng.integers(len(rows))] = True
        rows = rows[keep]
    if max_tiles is not None and len(rows) > max_tiles:
        rows = np.sort(rng.choice(rows, max_tiles, replace=False))
    return rows


def finite16(x: np.ndarray) -> np.ndarray:
    """np.isfinite of a float16 array from its exponent bits (13x faster than np.isfinite on float16)."""
    return (x.view(np.uint16) & 0x7C00) != 0x7C00


@dataclass
class BagReader:
    """Reads the tiles of a batch of bags from the store (float16, the variants side by side), chunk by chunk.

    Decoded chunks stay in an LRU cache of at most ``cache_bytes`` (0 = none); ``peak_chunk_rows`` records the most
    store rows held at once (cache plus the batch), the figure that must not grow with the store.
    """

    store: Store
    keys: Sequence[str]
    cache_bytes: int = DEFAULT_CACHE_BYTES
    peak_chunk_rows: int = 0
    chunks_read: int = 0
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cached_bytes: int = 0

    def __post_init__(self) -> None:
        self.keys = list(self.keys)
        if not self.keys:
            raise HeadError("choose at least one feature variant")
        for k in self.keys:
            if not self.store.is_complete(k):
                raise HeadError(f"{k} in {self.store.path} is incomplete; re-run mito extract to finish it")
        self.d = sum(int(self.store.variant_info(k)["dim"]) for k in self.keys)

    def _chunk(self, c: int, held: dict[int, np.ndarray]) -> np.ndarray:
        if c in held:
            return held[c]
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        a, b = self.store.chunk_rows_range(c)
        # completeness was checked once in __post_init__ (checking per chunk re-reads every variant's done flags)
        block = self.store.read(self.keys, slice(a, b), dtype=np.float16, allow_incomplete=True)
        self.chunks_read += 1
        if not finite16(block).all():
            block = block.copy()
            block[~finite16(block)] = 0  # unreadable tiles are excluded from bags; their rows are never used
        if self.cache_bytes > 0 and block.nbytes <= self.cache_bytes:
            self._cache[c] = block
            self._cached_bytes += block.nbytes
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return block

    def read(self, bag_rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Features (float16, one array per bag, rows in the given order) of a batch of bags."""
        cr = self.store.chunk_rows
        all_rows = np.concatenate(bag_rows) if len(bag_rows) else np.zeros(0, np.int64)
        held: dict[int, np.ndarray] = {}
        out = [np.empty((len(r), self.d), np.float16) for r in bag_rows]
        for c in np.unique(all_rows // cr):
            held[int(c)] = self._chunk(int(c), held)
        rows_held = sum(len(b) for b in held.values()) + sum(len(b) for c, b in self._cache.items() if c not in held)
        self.peak_chunk_rows = max(self.peak_chunk_rows, rows_held)
        for o, r in zip(out, bag_rows):
            ch = r // cr
            for c in np.unique(ch):
                m = ch == c
                o[m] = held[int(c)][r[m] - int(c) * cr]
        return out

    def batches(
        self,
        bags: Bags,
        which: np.ndarray,
        batch_bags: int,
        rng: np.random.Generator | None = None,
        max_tiles: int | None = None,
        dropout: float = 0.0,
    ) -> Iterator[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]:
        """(bag indices, store rows per bag, features per bag) batch by batch over the bags ``which`` (in that order)."""
        yield from self.read_batches(bags, [which[s : s + batch_bags] for s in range(0, len(which), batch_bags)], rng, max_tiles, dropout)

    def read_batches(
        self,
        bags: Bags,
        batches: Sequence[np.ndarray],
        rng: np.random.Generator | None = None,
        max_tiles: int | None = None,
        dropout: float = 0.0,
    ) -> Iterator[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]:
        """(bag indices, store rows per bag, features per bag) for each batch of bag indices given."""
        for sel in batches:
            rows = [subsample(bags.bag_rows(int(i)), max_tiles, dropout, rng) for i in sel]
            yield sel, rows, self.read(rows)

    def moments(self, bags: Bags, which: np.ndarray, batch_bags: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Per-column mean and variance over every tile of the bags ``which`` (one pass, batch by batch)."""

        return column_moments(x for _, _, xs in self.batches(bags, which, batch_bags) for x in xs)


def local_batches(bags: Bags, which: np.ndarray, batch_bags: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: bags in store order cut into batches at a random offset, the batches in random order.

    Neighbouring bags share store chunks, so each chunk is decoded about once per epoch instead of once per bag
    (a chunk holds several small bags, or a big bag spans several chunks); the offset changes which bags meet.
    """
    first = bags.rows[bags.offsets[which]]
    ordered = np.asarray(which)[np.argsort(first, kind="stable")]
    shift = int(rng.integers(batch_bags)) if len(ordered) > batch_bags else 0
    cuts = list(range(shift, len(ordered), batch_bags))
    parts = [p for p in np.split(ordered, cuts) if len(p)]
    return [parts[i] for i in rng.permutation(len(parts))]


def tile_budget_batches(sizes: np.ndarray, which: np.ndarray, batch_bags: int, budget: int = SCORE_TILES) -> list[np.ndarray]:
    """The bags ``which``, in order, cut into batches of at most ``batch_bags`` bags whose padded size (bags x the
    longest bag) stays within ``budget`` tiles; a bag longer than the budget forms a batch of its own. Padding every
    bag of a batch to its longest (float32) then costs at most ``budget`` tiles, or one bag, never bags x a huge bag."""
    out: list[np.ndarray] = []
    start, longest = 0, 0
    which = np.asarray(which)
    for j, i in enumerate(which):
        n = int(sizes[int(i)])
        wide = max(longest, n)
        if j > start and (j - start >= batch_bags or (j - start + 1) * wide > budget):
            out.append(which[start:j])
            start, wide = j, n
        longest = wide
    if len(which) > start:
        out.append(which[start:])
    return out


@dataclass(frozen=True)
class BagSet:
    """Bags of store rows as a slide-level model's X (mito.heads.model.Model): the reader, the bags, and which of them
    (bag indices; None: every bag). Its labels are the y of the chosen bags."""

    reader: BagReader
    bags: Bags
    which: np.ndarray | None = None

    @property
    def index(self) -> np.ndarray:
        """The chosen bags' indices into ``bags``."""
        return np.arange(len(self.bags)) if self.which is None else np.asarray(self.which, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """The chosen bags' labels."""
        return self.bags.labels[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def take(self, which: np.ndarray) -> BagSet:
        """The same reader and bags with other bags chosen (indices into ``bags``)."""
        return BagSet(self.reader, self.bags, np.asarray(which, dtype=np.int64))

    def prepare(self, model: Any, parts: Mapping[str, np.ndarray]) -> Prepared:
        """The engine's inputs (mito.heads.engine): ``parts`` are bag indices; the labels come with the bags."""
        score = {n: (self.take(parts[n]), self.bags.labels[parts[n]], keep_order) for n in ("val", "test") if len(parts[n])}
        eval_set = self.take(parts["val"]) if len(parts["val"]) else None
        return Prepared(self.take(parts["train"]), None, eval_set, None, score, n_features_in=self.reader.d)
