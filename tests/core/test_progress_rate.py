"""The per-slide progress line shows a measured rate: never items / 1e-9 when a slide starts and ends in one batch."""

from __future__ import annotations

import time

import numpy as np
import pytest


def test_a_slide_done_within_one_batch_gets_the_batch_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    from mito.core.progress import group_progress, progress_bar

    clock = iter([10.0, 12.0, 14.0, 16.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    with progress_bar("tiles", enabled=False) as bar:
        g = group_progress(bar, np.arange(36), np.repeat(["a.svs", "b.svs", "c.svs"], 12), "slides")
        g.advance(np.arange(0, 12))  # slide a in the first batch: no time measured yet, no rate
        assert bar.tasks[g.task].fields["rate"] == "-"
        g.advance(np.arange(12, 24))  # slide b, all of it in a batch of 2 s
        assert float(bar.tasks[g.task].fields["rate"]) == pytest.approx(6.0)
        g.advance(np.arange(24, 30))  # slide c over two batches of 6 tiles in 2 s each: 3 tiles/s
        assert float(bar.tasks[g.task].fields["rate"]) == pytest.approx(3.0)
        g.advance(np.arange(30, 36))
        assert float(bar.tasks[g.task].fields["rate"]) == pytest.approx(3.0)
