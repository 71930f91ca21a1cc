"""Features streamed from the store chunk by chunk: training and scoring with memory bounded by a shuffle buffer.

A training epoch visits the store's chunks in a fresh random order and mixes rows in a shuffle buffer of
``buffer_rows`` rows (the WebDataset / tf.data scheme): rows from many chunks, hence many slides, meet in
each batch, while only the buffer (and the one being read ahead in a background thread) sits in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mito.heads.base import HeadError, column_moments
from mito.heads.features import FeaturePipeline, feature_dims, one_hot
from mito.store import Store

DEFAULT_BUFFER_ROWS = 65_536


@dataclass
class FeatureStream:
    """Rows of a store (sorted indices) with their labels, read chunk by chunk through the pipeline, plus metadata one-hots."""

    store: Store
    keys: list[str]
    rows: np.ndarray
    labels: np.ndarray
    tiles: pd.DataFrame | None = None
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    pipeline: FeaturePipeline | None = None
    buffer_rows: int = DEFAULT_BUFFER_ROWS

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        if len(self.rows) > 1 and not (np.diff(self.rows) > 0).all():
            raise HeadError("stream rows must be sorted and distinct")
        if len(self.labels) != len(self.rows):
            raise HeadError(f"{len(self.labels)} labels for {len(self.rows)} rows")
        if self.buffer_rows < 1:
            raise HeadError(f"buffer_rows must be >= 1, got {self.buffer_rows}")
        if self.categories and self.tiles is None:
            raise HeadError("metadata one-hots need the tile table")
        self._raw_d = sum(feature_dims(self.store, self.keys))
        self._meta_d = sum(len(c) for c in self.categories.values())

    @property
    def n(self) -> int:
        """Rows in the stream."""
        return len(self.rows)

    @property
    def d(self) -> int:
        """Width of the blocks it yields (after the pipeline, with metadata columns)."""
        return (self.pipeline.out_dim(self._raw_d) if self.pipeline else self._raw_d) + self._meta_d

    def with_pipeline(self, pipeline: FeaturePipeline | None, categories: Mapping[str, Sequence[str]] | None = None) -> FeatureStream:
        """The same rows through another pipeline (and metadata vocabulary)."""
        return FeatureStream(
            self.store,
            self.keys,
            self.rows,
            self.labels,
            self.tiles,
            self.categories if categories is None else categories,
            pipeline,
            self.buffer_rows,
        )

    def chunks(self) -> np.ndarray:
        """Store chunks holding at least one of the rows, in store order."""
        return np.unique(self.rows // self.store.chunk_rows)

    def _read(self, chunk_order: Sequence[int] | np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for idx, block in self.store.iter_chunks(self.keys, self.rows, dtype=np.float16, chunks=chunk_order):
            if self.pipeline is not None and self.pipeline.active:
                block = self.pipeline.transform(block)
            if not np.isfinite(block).all():
                raise HeadError("features hold NaN or infinite values (unreadable tiles?); drop those rows first")
            if self._meta_d:
                block = np.concatenate([block, one_hot(self.tiles, idx, self.categories).astype(block.dtype)], axis=1)
            yield np.searchsorted(self.rows, idx), block

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions in ``rows``, float16 features) one chunk at a time in store order, read ahead in a thread."""
        return read_ahead(self._read(self.chunks()))

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One epoch in random order: (positions, features, order) per shuffle buffer; ``order`` permutes the buffer's rows.

        Chunks come in random order and fill a buffer of at least ``buffer_rows`` rows (the last may be smaller).
        Two buffers alternate: a thread fills one while the caller trains on the other, so memory stays at two
        buffers. A buffer is reused once the caller asks for the next one: copy anything kept beyond that.
        """
        fill_to = min(self.buffer_rows, self.n)
        cap = fill_to + self.store.chunk_rows
        try:
            free: queue.Queue = queue.Queue()
            for _ in range(2):
                free.put((np.empty(cap, np.int64), np.empty((cap, self.d), np.float16)))
        except MemoryError:
            raise HeadError(f"two shuffle buffers of {cap:,} x {self.d} do not fit in memory; lower --buffer-rows") from None
        chunk_order = rng.permutation(self.chunks())
        stop = threading.Event()

        def fill() -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
            item = free.get()
            m = 0
            for pos, block in self._read(chunk_order):
                if item is None or stop.is_set():
                    return
                p, x = item
                p[m : m + len(pos)] = pos
                x[m : m + len(pos)] = block
                m += len(pos)
                if m >= fill_to:
                    yield p, x, m
                    item, m = free.get(), 0
            if m and item is not None:
                yield item[0], item[1], m

        it = read_ahead(fill())
        try:
            for p, x, m in it:
                yield p[:m], x[:m], rng.permutation(m)
                free.put((p, x))
        finally:
            stop.set()  # a producer filling a buffer stops at its next chunk
            free.put(None)  # one waiting for a buffer stops too
            it.close()

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``fn`` applied block by block, its rows put back in row order (one output row per stream row)."""
        parts = [(pos, np.asarray(fn(X))) for pos, X in self.blocks()]
        if not parts:
            raise HeadError("no rows to work on")
        out = np.empty((self.n, *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
        for pos, y in parts:
            out[pos] = y
        return out

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column mean and variance over all rows (one pass)."""
        return column_moments(b for _, b in self.blocks())

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Up to ``n`` random rows as float32 (through the pipeline, without metadata), for fits that need a sample."""
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(self.n, n, replace=False)) if self.n > n else np.arange(self.n)
        X = self.store.read(self.keys, self.rows[pick], dtype=np.float32)
        return self.pipeline.transform(X) if self.pipeline is not None and self.pipeline.active else X


def fit_pipeline_stream(pipeline: FeaturePipeline, stream: FeatureStream, seed: int = 0) -> FeaturePipeline:
    """Fit standardisation (one pass over the stream) and PCA (on a sample of rows) without loading all features."""
    raw = stream.with_pipeline(None, categories={})
    mean, var = raw.moments() if pipeline.standardize else (None, None)
    return pipeline.fit_from(raw.n, raw.d, mean, var, lambda n: raw.sample(n, seed), seed)


def stream_proba(head: Any, stream: FeatureStream) -> np.ndarray:
    """Class probabilities of every row of ``stream`` (in row order), predicted block by block."""
    return head.predict_proba(stream)


def read_ahead(it: Iterator[Any], depth: int = 1) -> Generator[Any, None, None]:
    """Run ``it`` in a background thread, ``depth`` items ahead of the consumer (reading overlaps training)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", done))
        except BaseException as e:  # handed to the consumer, raised there
            q.put(("error", e))

    t = threading.Thread(target=work, name="mito-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.05)
