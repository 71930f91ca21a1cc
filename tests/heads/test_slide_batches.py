"""Scoring slide-level heads on stores with a few huge bags: batches are bounded by padded tiles, not bags (issue 19,
item 27), and the probabilities are those of scoring every bag alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.heads import mil
from mito.heads.bags import BagReader, BagSet, make_bags, tile_budget_batches
from mito.store import create_store, open_store

KEY = "synth:z1:rgb"


def test_batches_keep_the_order_and_bound_the_padding() -> None:
    rng = np.random.default_rng(0)
    sizes = np.array([200] * 36 + [50_000] * 4)
    which = rng.permutation(40)
    batches = tile_budget_batches(sizes, which, 16, budget=16384)
    assert np.array_equal(np.concatenate(batches), which)  # every bag once, in the order given
    for b in batches:
        assert len(b) <= 16 and (len(b) == 1 or len(b) * sizes[b].max() <= 16384)
    assert sum(len(b) == 1 and sizes[b[0]] == 50_000 for b in batches) == 4  # each huge bag alone
    # bags that fit are cut exactly as before: batch_bags at a time
    small = np.full(40, 100)
    assert [b.tolist() for b in tile_budget_batches(small, np.arange(40), 16)] == [
        list(range(16)),
        list(range(16, 32)),
        list(range(32, 40)),
    ]


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 bags of 3,000 tiles among 21 bags of 20 (16 dims), odd bags shifted."""
    path = tmp_path_factory.mktemp("huge") / "h.zarr"
    sizes = np.array([3000 if i % 8 == 0 else 20 for i in range(24)])
    bag = np.repeat(np.arange(24), sizes)
    table = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(len(bag))],
            "slide": [f"s{b:02d}" for b in bag],
            "label": np.where(bag % 2 == 1, "tumour", "normal"),
        }
    )
    s = create_store(path, table, {"tasks": ["label"]}, chunk_rows=512)
    s.ensure_variant(KEY, 16, {"backbone": "synth", "weights_sha256": "0" * 64, "preprocessing": {"zoom": 1.0, "color": "rgb"}})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(bag), 16)).astype(np.float32) + (bag % 2 == 1)[:, None]
    for c in range(s.n_chunks):
        a, b = s.chunk_rows_range(c)
        s.write_chunk(KEY, c, x[a:b].astype(np.float16))
    s.close()
    return path


@pytest.mark.parametrize("name", ["abmil", "mean-mlp"])
def test_scoring_pads_a_huge_bag_alone_and_matches_scoring_each_bag_alone(huge: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(huge)
    bags = make_bags(s.tiles, "label")
    reader = BagReader(s, [KEY])
    head = mil.make_mil_head(name, epochs=2, batch_bags=8, max_tiles=64).fit(BagSet(reader, bags))
    monkeypatch.setattr(mil, "tile_budget_batches", lambda sizes, which, batch_bags: tile_budget_batches(sizes, which, batch_bags, 1000))
    shapes: list[tuple[int, ...]] = []
    real = mil.pad
    monkeypatch.setattr(mil, "pad", lambda xs: shapes.append((len(xs), max(len(x) for x in xs))) or real(xs))
    proba, rows, att = head.predict_bags(BagSet(reader, bags))
    # before: 8 bags a batch, each padded to the 3,000-tile bag among them (24,000 padded tiles); now at most one bag
    assert max(n * m for n, m in shapes) == 3000 and sorted(shapes).count((1, 3000)) == 3
    assert [len(r) for r in rows] == bags.sizes.tolist() and all(abs(a.sum() - 1) < 1e-5 for a in att)
    alone = [head.predict_bags(BagSet(reader, bags, np.array([i]))) for i in range(len(bags))]  # one bag a batch: no padding
    np.testing.assert_allclose(proba, np.concatenate([p for p, _, _ in alone]), rtol=0, atol=1e-6)
    for a, (_, _, b) in zip(att, alone):
        np.testing.assert_allclose(a, b[0], rtol=0, atol=1e-6)
