"""fit_on_rows, the one fit path of fit-head and bench: rows in any order, in memory or streamed, the bench's worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mito.heads import fit_on_rows, make_head, select_features
from mito.store import open_store

RGB, GRAY = "fakenet:z1:rgb", "fakenet:z1:gray"


def _parts(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)  # deliberately unsorted
    return {"train": idx[: n // 2], "val": idx[n // 2 : 3 * n // 4], "test": idx[3 * n // 4 :]}


def test_scores_come_back_in_the_order_the_rows_were_given(synth_store: Path) -> None:
    with open_store(synth_store) as s:
        y = s.tiles["mitosis"].to_numpy()
        parts = _parts(s.n_tiles)
        for stream, head in ((False, "logreg"), (True, "linear")):
            r = fit_on_rows(s, [RGB, GRAY], parts, y, make_head(head, **({"epochs": 5} if stream else {})), stream=stream, buffer_rows=100)
            assert r.streamed == stream and r.n_features_in == 64
            ys, proba = r.scored["test"]
            assert (ys == y[parts["test"]]).all()
            X = select_features(s, [RGB, GRAY], parts["test"], dtype=np.float16)
            np.testing.assert_allclose(proba, r.head.predict_proba(X), atol=1e-5)


def test_bench_worker_streams_under_its_memory_budget(synth_store: Path) -> None:
    from mito.bench.cv import Fold
    from mito.bench.rows import fit_one

    with open_store(synth_store) as s:
        y = s.tiles["mitosis"].to_numpy().astype(object)
        p = _parts(s.n_tiles, seed=1)
    fold = Fold(0, np.sort(p["train"]), np.sort(p["val"]), p["test"])
    big = fit_one(str(synth_store), (RGB,), "linear", {"epochs": 3}, fold, y, ["Atypical", "Normal"], memory_budget=1 << 30)
    small = fit_one(str(synth_store), (RGB,), "linear", {"epochs": 3}, fold, y, ["Atypical", "Normal"], memory_budget=1000)
    assert not big["streamed"] and small["streamed"]
    for r in (big, small):
        assert r["proba"].shape == (len(fold.test), 2) and np.allclose(r["proba"].sum(axis=1), 1)
    meta = fit_one(str(synth_store), (RGB,), "logreg", {}, fold, y, ["Atypical", "Normal"], metadata_columns=["dataset"])
    assert meta["proba"].shape == (len(fold.test), 2)
