"""Training straight from the store: shuffle buffers, bounded memory, streamed fit_head matching the in-memory one."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.heads import (
    FeaturePipeline,
    FeatureStream,
    HeadError,
    fit_head,
    fit_pipeline_stream,
    make_fit_config,
    make_head,
    predict,
    select_features,
)
from mito.heads.fit import use_stream
from mito.store import create_store, open_store
from tests.conftest import FULL_AMIBR

from .conftest import PROV

RGB, GRAY = "fakenet:z1:rgb", "fakenet:z1:gray"
QUICK = {"epochs": 15, "hidden": 32}
runner = CliRunner()


def _stream(store, rows, **kw) -> FeatureStream:
    tiles = store.tiles
    return FeatureStream(store, [GRAY, RGB], rows, tiles["mitosis"].to_numpy()[rows], tiles, **kw)


def test_shuffled_epoch_visits_every_row_once_in_buffers(synth_store: Path) -> None:
    with open_store(synth_store) as s:
        rows = np.flatnonzero(s.tiles["split"] == "train")
        st = _stream(s, rows, buffer_rows=100)
        want = select_features(s, [GRAY, RGB], rows, dtype=np.float16)
        epochs = []
        for seed in (0, 1):
            seen, sizes = [], []
            for pos, x, order in st.shuffled(np.random.default_rng(seed)):
                assert sorted(order.tolist()) == list(range(len(pos)))
                np.testing.assert_array_equal(x, want[pos])  # features belong to the rows they are said to be
                seen.append(pos[order])
                sizes.append(len(pos))
            assert all(n >= 100 for n in sizes[:-1]) and sum(sizes) == len(rows)
            order_all = np.concatenate(seen)
            assert sorted(order_all.tolist()) == list(range(len(rows)))
            epochs.append(order_all)
        assert not np.array_equal(epochs[0], epochs[1])
        # a buffer mixes rows of several chunks, and the chunks come in a different order each epoch
        assert len(np.unique(rows[epochs[0][:100]] // s.chunk_rows)) >= 2
        assert not np.array_equal(rows[epochs[0][:100]] // s.chunk_rows, rows[epochs[1][:100]] // s.chunk_rows)


def test_blocks_apply_pipeline_and_metadata_like_the_in_memory_path(synth_store: Path) -> None:
    with open_store(synth_store) as s:
        rows = np.flatnonzero(s.tiles["split"] == "train")
        cats = {"dataset": ["MIDOG21", "TUPAC16"]}
        X = select_features(s, [GRAY, RGB], rows, categories={}, dtype=np.float32)
        pipe_mem = FeaturePipeline(standardize=True, pca=8).fit(X)
        pipe_st = fit_pipeline_stream(FeaturePipeline(standardize=True, pca=8), _stream(s, rows))
        np.testing.assert_allclose(pipe_st.mean_, pipe_mem.mean_, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pipe_st.scale_, pipe_mem.scale_, rtol=1e-5)
        np.testing.assert_allclose(np.abs(pipe_st.components_), np.abs(pipe_mem.components_), atol=1e-4)
        st = _stream(s, rows, categories=cats, pipeline=pipe_st)
        assert st.d == 8 + 2
        got = np.zeros((len(rows), st.d), np.float32)
        for pos, block in st.blocks():
            got[pos] = block
        want = select_features(s, [GRAY, RGB], rows, metadata_columns=["dataset"], categories=cats)
        np.testing.assert_allclose(got[:, :8], pipe_st.transform(want[:, :64]), atol=2e-2)
        np.testing.assert_array_equal(got[:, 8:], want[:, 64:])


def test_an_epoch_holds_two_buffers_not_the_features(tmp_path: Path) -> None:
    n, d = 40_000, 256
    rng = np.random.default_rng(0)
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(n)], "mitosis": np.where(rng.random(n) < 0.3, "Atypical", "Normal")})
    with create_store(tmp_path / "big.zarr", tiles, {"tasks": ["mitosis"]}, chunk_rows=256) as s:
        s.ensure_variant(RGB, d, PROV)
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            s.write_chunk(RGB, c, rng.standard_normal((b - a, d)).astype(np.float16))
    with open_store(tmp_path / "big.zarr") as s:
        st = FeatureStream(s, [RGB], np.arange(n), tiles["mitosis"].to_numpy(), buffer_rows=1000)
        full = n * d * 2
        tracemalloc.start()
        total = 0
        for pos, _x, _order in st.shuffled(np.random.default_rng(0)):
            total += len(pos)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert total == n
    assert peak < full / 8, f"an epoch peaked at {peak} bytes for {full} bytes of features"


def test_stopping_early_leaves_no_reader_thread(synth_store: Path) -> None:
    before = threading.active_count()
    with open_store(synth_store) as s:
        st = _stream(s, np.arange(s.n_tiles), buffer_rows=64)
        for _ in st.shuffled(np.random.default_rng(0)):
            break
        for _ in st.blocks():
            break
    assert threading.active_count() == before


def test_stream_refuses_nan_rows(tmp_path: Path) -> None:
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(100)], "mitosis": ["a", "b"] * 50})
    with create_store(tmp_path / "nan.zarr", tiles, {"tasks": ["mitosis"]}, chunk_rows=32) as s:
        s.ensure_variant(RGB, 4, PROV)
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            x = np.ones((b - a, 4), np.float16)
            if c == 2:
                x[3] = np.nan
            s.write_chunk(RGB, c, x)
    with open_store(tmp_path / "nan.zarr") as s:
        st = FeatureStream(s, [RGB], np.arange(100), tiles["mitosis"].to_numpy())
        with pytest.raises(HeadError, match="NaN"):
            list(st.blocks())


def test_streamed_fit_head_matches_in_memory_and_predicts(synth_store: Path, tmp_path: Path) -> None:
    common = dict(store=str(synth_store), task="mitosis", features=[GRAY, RGB], split_column="split", standardize=True, head_params=QUICK)
    mem = fit_head(make_fit_config(**common, out=str(tmp_path / "mem"), stream=False))
    st = fit_head(make_fit_config(**common, out=str(tmp_path / "st"), stream=True, buffer_rows=128))
    assert st["streamed"] and not mem["streamed"]
    assert (st["n_train"], st["n_val"], st["n_test"]) == (mem["n_train"], mem["n_val"], mem["n_test"])
    assert abs(st["balanced_accuracy"] - mem["balanced_accuracy"]) < 0.08
    if FULL_AMIBR:  # 600 tiles carry the synthetic signal; the bundled sample's 300 leave too few test tiles
        assert st["balanced_accuracy"] > 0.6
    cfg = json.loads((tmp_path / "st" / "config.json").read_text())
    assert cfg["training"]["streamed"] and cfg["training"]["buffer_rows"] == 128
    df = predict(tmp_path / "st", store=synth_store)
    test = df[(df["path"].isin(open_store(synth_store).tiles.query("split == 'test'")["path"]))]
    assert len(test) == st["n_test"]
    saved = json.loads((tmp_path / "st" / "metrics.json").read_text())
    acc = np.mean([(test["pred"][test["label"] == c] == c).mean() for c in ("Atypical", "Normal")])
    assert acc == pytest.approx(saved["balanced_accuracy"], abs=1e-9)


def test_stream_choice(synth_store: Path, tmp_path: Path) -> None:
    assert use_stream(None, make_head("mlp"), 10**16) and not use_stream(None, make_head("mlp"), 1)
    assert not use_stream(None, make_head("logreg"), 10**16)
    with pytest.raises(HeadError, match="needs its features in memory; --stream works with mlp, linear"):
        use_stream(True, make_head("lightgbm"), 1)
    r = runner.invoke(app, ["fit-head", "--store", str(synth_store), "--out", str(tmp_path / "m"), "--head", "knn", "--stream"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "in memory" in r.output
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(synth_store),
            "--out",
            str(tmp_path / "m"),
            "--task",
            "mitosis",
            "--head",
            "linear",
            "--stream",
            "--buffer-rows",
            "100",
            "--epochs",
            "3",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["streamed"] is True
    r = runner.invoke(app, ["fit-head", "--store", str(synth_store), "--out", str(tmp_path / "m2"), "--stream", "--buffer-rows", "0"])
    assert r.exit_code == 2 and "--buffer-rows: Input should be greater than or equal to 1" in r.output  # the option, not the field


def test_buffer_larger_than_the_stream_is_sized_to_it(synth_store: Path) -> None:
    with open_store(synth_store) as s:
        rows = np.flatnonzero(s.tiles["split"] == "train")
        st = _stream(s, rows, buffer_rows=2_000_000_000)  # would be 2 x 256 GB if sized by the option
        parts = list(st.shuffled(np.random.default_rng(0)))
    assert len(parts) == 1 and sorted(parts[0][0].tolist()) == list(range(len(rows)))


def test_memory_headroom_respects_cgroup_limits(tmp_path: Path) -> None:
    from mito.core.resources import available_memory
    from mito.core.resources import cgroup_room as _cgroup_room

    assert _cgroup_room(tmp_path) is None  # no cgroup files: no limit known
    (tmp_path / "memory.max").write_text("max\n")
    assert _cgroup_room(tmp_path) is None
    (tmp_path / "memory.max").write_text(str(8 << 30))
    (tmp_path / "memory.current").write_text(str(3 << 30))
    assert _cgroup_room(tmp_path) == 5 << 30
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(2 << 30))
    (v1 / "memory.usage_in_bytes").write_text(str(3 << 30))
    assert _cgroup_room(tmp_path / "v1") == 0
    free = available_memory()
    assert free is not None and 0 < free < 1 << 50


def test_negative_seed_is_refused_in_one_line(synth_store: Path, tmp_path: Path) -> None:
    for head in ("mlp", "logreg", "lightgbm"):
        with pytest.raises(HeadError, match="seed must be"):
            make_head(head, seed=-1)
    r = runner.invoke(app, ["fit-head", "--store", str(synth_store), "--out", str(tmp_path / "m"), "--seed", "-1"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "seed" in r.output
