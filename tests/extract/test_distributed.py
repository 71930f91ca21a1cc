"""Extraction sharded across real processes (gloo on CPU) writes the same store as one process."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from mito.extract import ExtractConfig, extract
from mito.extract.distributed import Dist, merge_summaries, torchrun_command
from mito.store import open_store

KEYS = ["efficientnet_lite0:z1:gray", "efficientnet_lite0:z2:gray"]


def _cfg(source: Path, store: str, **kw: object) -> ExtractConfig:
    base = dict(
        source=str(source),
        store=store,
        task="mitosis",
        zooms=[1.0, 2.0],
        colors=["gray"],
        input_size=128,
        chunk_rows=8,
        batch_size=8,
        num_workers=0,
        progress=False,
    )
    return ExtractConfig(**{**base, **kw})


def _rank_main(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    """One rank, set up exactly as torchrun would (environment variables), reporting to a JSON file."""
    import os

    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        res = {"ok": True, "summary": extract(ExtractConfig(**cfg))}
    except BaseException as e:  # reported to the test, which checks it
        res = {"ok": False, "type": type(e).__name__, "error": str(e), "tb": traceback.format_exc()}
    Path(out).write_text(json.dumps(res, default=str))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cfg: ExtractConfig, world: int, tmp: Path, timeout: float = 90) -> list[dict]:
    """Run ``extract(cfg)`` as ``world`` spawned processes; returns each rank's result (never hangs)."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    outs = [tmp / f"rank{r}.json" for r in range(world)]
    for o in outs:
        o.unlink(missing_ok=True)
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, cfg.model_dump(), str(outs[r]))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} did not finish within {timeout}s"
    return [json.loads(o.read_text()) for o in outs]


def _same_store(a: str, b: str) -> None:
    with open_store(a) as sa, open_store(b) as sb:
        assert sa.variants == sb.variants
        assert sa.meta["tile_list_sha256"] == sb.meta["tile_list_sha256"]
        np.testing.assert_array_equal(sa.unreadable, sb.unreadable)
        for k in sa.variants:
            assert sa.is_complete(k) and sb.is_complete(k)
            assert {x: y for x, y in sa.variant_info(k).items() if x != "added"} == {
                x: y for x, y in sb.variant_info(k).items() if x != "added"
            }
            np.testing.assert_array_equal(sa.read([k], dtype=np.float16), sb.read([k], dtype=np.float16))
        assert sb.verify() == []


@pytest.fixture(scope="module")
def source(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 48 real crops plus one corrupt JPEG (unreadable tiles must be recorded by whichever rank owns them)."""
    src = tmp_path_factory.mktemp("dist") / "amibr"
    shutil.copytree(amibr_dir, src)
    (src / "Normal" / "zz_corrupt.jpg").write_bytes(b"not a jpeg")
    return src


@pytest.fixture(scope="module")
def reference(source: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The single-process store every sharded run must reproduce, bit for bit. CPU kernels may round differently
    with the thread count for some batch shapes (efficientnet_lite0 at 8 x 128 px does), so the reference runs
    with one thread, as every rank does."""
    import torch

    path = str(tmp_path_factory.mktemp("ref") / "single.zarr")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(_cfg(source, path))
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.mark.slow
def test_gpus_2_runs_two_torchrun_ranks_that_write_the_single_process_store_through_a_url(
    source: Path, reference: str, tmp_path: Path
) -> None:
    url = (tmp_path / "two.zarr").as_uri()  # file:// goes through fsspec, as s3:// would
    cmd = [
        sys.executable,
        "-m",
        "mito",
        "extract",
        str(source),
        "--store",
        url,
        "--task",
        "mitosis",
        "--zooms",
        "1,2",
        "--colors",
        "gray",
        "--input-size",
        "128",
        "--chunk-rows",
        "8",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
        "--gpus",
        "2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("49 tiles embedded") == 1  # rank 0 reports the whole job, rank 1 stays quiet
    assert "Normal/zz_corrupt.jpg" in r.stdout
    with open_store(url) as s:
        run = s.meta["last_run"]
        bb = run["backbones"]["efficientnet_lite0"]
        assert run["world_size"] == 2 and bb["rows"] == 49
        assert [p["rows"] for p in bb["ranks"]] == [25, 24]  # chunks 0,2,4,6 (24 + 1 row) and 1,3,5
        assert s.meta["unreadable_tiles"] == ["Normal/zz_corrupt.jpg"]
    _same_store(reference, url)


@pytest.mark.slow
def test_resume_after_a_partial_sharded_run_redoes_exactly_the_missing_chunks(source: Path, reference: str, tmp_path: Path) -> None:
    path = str(tmp_path / "resume.zarr")
    shutil.copytree(reference, path)
    import zarr

    root = zarr.open_group(path, mode="a")
    lost = [1, 2, 5]  # as if a killed job had finished only the other chunks
    for k in KEYS:
        b, z, c = k.split(":")
        for ch in lost:
            root[f"done/{b}/{z}/{c}"][ch] = False
            root[f"features/{b}/{z}/{c}"][ch * 8 : ch * 8 + 8] = np.float16(7.0)  # garbage that must be replaced
    res = run_ranks(_cfg(source, path), 2, tmp_path)
    assert all(r["ok"] for r in res), [r.get("tb") for r in res]
    bb = res[0]["summary"]["backbones"]["efficientnet_lite0"]
    assert bb["rows"] == 8 * len(lost) and bb["skipped_chunks"] == 7 - len(lost)
    assert [p["rows"] for p in bb["ranks"]] == [8, 16]  # rank 0 owns chunk 2, rank 1 owns chunks 1 and 5
    _same_store(reference, path)


def test_a_failing_rank_stops_every_rank_with_one_clear_line(source: Path, tmp_path: Path) -> None:
    path = tmp_path / "taken.zarr"
    path.write_text("a file where the store should go")  # rank 0 cannot create or open it
    res = run_ranks(_cfg(source, str(path)), 2, tmp_path)
    assert not res[0]["ok"] and res[0]["type"] == "StoreError"
    assert not res[1]["ok"] and res[1]["type"] == "DistributedError"
    assert res[1]["error"].startswith("rank 0 of 2 failed: StoreError")


def test_sharding_covers_every_chunk_once() -> None:
    masks = [Dist(r, 3).owned(10) for r in range(3)]
    assert (np.sum(masks, axis=0) == 1).all()
    assert np.flatnonzero(masks[1]).tolist() == [1, 4, 7]
    merged = merge_summaries([{"rows": 30, "seconds": 2.0, "skipped_chunks": 1}, {"rows": 10, "seconds": 4.0, "skipped_chunks": 1}])
    assert merged["rows"] == 40 and merged["tiles_per_s"] == 10.0
    cmd = torchrun_command(4, ["extract", "src", "--store", "s.zarr"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and cmd[-4:] == ["extract", "src", "--store", "s.zarr"]
