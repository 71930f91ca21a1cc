"""An interrupted `mito extract` keeps what it finished and says how much (issue 19): Ctrl-C in the middle of a chunk
keeps the chunk's finished rows (a checkpoint), SIGTERM after whole chunks keeps them and the rows after them, a kill -9
loses at most the rows since the last timed checkpoint; each re-run embeds only the rest and equals an uninterrupted
run. A store started with one crop keeps full chunks when crops are added."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mito.core.wording import counted
from mito.extract import ExtractConfig, extract
from mito.store import StoreError, open_store
from tests.conftest import AMIBR
from tests.interrupts import ROOT, assert_one_interrupted_line, needs_proc, start

KEY = "efficientnet_lite0:z1:rgb"
ARGS = ["--zooms", "1", "--colors", "rgb", "--input-size", "128", "--batch-size", "4", "--task", "mitosis"]


def _cfg(src: Path, store: Path, **kw: object) -> ExtractConfig:
    base = {
        "source": str(src),
        "store": str(store),
        "zooms": [1.0],
        "colors": ["rgb"],
        "input_size": 128,
        "batch_size": 4,
        "task": "mitosis",
        "num_workers": 0,
        "progress": False,
    }
    return ExtractConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The 48 crops embedded by one uninterrupted run (batches of 4, as every run below)."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    extract(_cfg(amibr_dir, store))
    with open_store(store) as s:
        return s.read([KEY])


def _same(store: Path, reference: np.ndarray) -> None:
    with open_store(store) as s:
        assert s.verify() == [] and not s.meta.get("partial_chunks")
        x = s.read([KEY])
    for i in range(len(x)):  # row by row, to float16 rounding (numeric results must not depend on threads)
        np.testing.assert_allclose(x[i], reference[i], rtol=2e-3, atol=2e-3, err_msg=f"row {i}")


def _resume(amibr_dir: Path, store: Path, *extra: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "mito", "extract", str(amibr_dir), "--store", str(store), *ARGS, "--workers", "0", *extra],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _shown(err: str) -> int:
    """Tiles done so far, as the live progress bar shows them (N/48)."""
    return max([int(m) for m in re.findall(r"(\d+)/48", err)] or [0])


@pytest.mark.slow
def test_ctrl_c_in_the_middle_of_a_chunk_keeps_its_finished_rows(amibr_dir: Path, reference: np.ndarray, tmp_path: Path) -> None:
    """48 crops fit one 1,024-row chunk: before, Ctrl-C threw all of them away and said "finished chunks are kept"."""
    needs_proc()
    store = tmp_path / "s.zarr"
    # a decoding worker (it hears the Ctrl-C too) and the live bar (FORCE_COLOR: rich draws it into the pipe)
    run = start(["extract", str(amibr_dir), "--store", str(store), *ARGS, "--workers", "1"], env={"FORCE_COLOR": "1"})
    try:
        run.wait_for(lambda: _shown(run.stderr) >= 8, what="8 tiles embedded")
        run.signal(signal.SIGINT, group=True)  # Ctrl-C in a terminal
        run.finish(timeout=120)
        left = run.leftovers()
    finally:
        run.kill_session()
    line = assert_one_interrupted_line(run.stderr)
    m = re.search(
        r"kept (\d+) of 48 tiles \(0 of 1 chunk whole, (\d+) rows of unfinished chunks checkpointed\); "
        r"re-run the same command to embed only the rest",
        line,
    )
    assert m and m[1] == m[2], line
    kept = int(m[1])
    assert 8 <= kept < 48 and kept % 4 == 0, line  # whole batches, the first 8 at least
    assert run.proc.returncode == 130 and not left, (run.proc.returncode, left)
    with open_store(store) as s:
        assert s.kept_rows(KEY, 0) == kept and not s.done_chunks(KEY).any()
    out = _resume(amibr_dir, store)
    assert f"{counted(48 - kept, 'tile')} embedded, 0 chunks already done" in out, out  # only the rest
    _same(store, reference)


def _done_chunks(store: Path) -> int:
    try:
        with open_store(store) as s:
            return int(s.done_chunks(KEY).sum()) if KEY in s.variants else 0
    except (StoreError, OSError, KeyError, ValueError):  # not created yet, or attributes being replaced
        return 0


@pytest.mark.slow
def test_sigterm_from_timeout_after_whole_chunks_keeps_them_and_says_how_many(
    amibr_dir: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    needs_proc()
    store = tmp_path / "s.zarr"
    run = start(["extract", str(amibr_dir), "--store", str(store), *ARGS, "--chunk-rows", "8", "--workers", "1", "--quiet"])
    try:
        run.wait_for(lambda: _done_chunks(store) >= 1, what="a finished chunk")
        run.signal(signal.SIGTERM, group=False)  # as `timeout` does: the command, then its whole group (the decoding
        run.signal(signal.SIGTERM, group=True)  # worker dies of it, and PyTorch must not turn that into a traceback)
        run.finish(timeout=120)
        left = run.leftovers()
    finally:
        run.kill_session()
    line = assert_one_interrupted_line(run.stderr)
    m = re.search(r"kept (\d+) of 48 tiles \((\d+) of 6 chunks whole(?:, (\d+) rows? of unfinished chunks checkpointed)?\)", line)
    assert m, line
    kept, whole, rows = int(m[1]), int(m[2]), int(m[3] or 0)
    assert run.proc.returncode == 143 and not left, (run.proc.returncode, left)
    assert whole >= 1 and kept == 8 * whole + rows < 48 and rows % 4 == 0, line
    assert _done_chunks(store) == whole
    out = _resume(amibr_dir, store, "--chunk-rows", "8")
    assert f"{counted(48 - kept, 'tile')} embedded, {counted(whole, 'chunk')} already done" in out, out
    _same(store, reference)


KILLED = """
import sys
from mito.extract import ExtractConfig, extract
extract(ExtractConfig(source=sys.argv[1], store=sys.argv[2], zooms=[1.0], colors=["rgb"], input_size=128, batch_size=4,
                      task="mitosis", num_workers=0, progress=False, checkpoint_s=1e-6))
"""


def _checkpointed(store: Path) -> int:
    try:
        with open_store(store) as s:
            return s.kept_rows(KEY, 0)
    except (StoreError, OSError, KeyError, ValueError):
        return 0


@pytest.mark.slow
def test_kill_9_loses_only_the_rows_since_the_last_checkpoint(amibr_dir: Path, reference: np.ndarray, tmp_path: Path) -> None:
    """Checkpoints come every ``checkpoint_s`` seconds of embedding (60 by default; here after every batch)."""
    store = tmp_path / "s.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(amibr_dir), str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 600
        while _checkpointed(store) < 12 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    kept = _checkpointed(store)
    assert 12 <= kept < 48 and kept % 4 == 0
    summary = extract(_cfg(amibr_dir, store))
    assert summary["backbones"]["efficientnet_lite0"]["rows"] == 48 - kept  # the checkpointed rows were not embedded again
    _same(store, reference)


@pytest.mark.slow
def test_a_finished_store_says_one_chunk_already_done(amibr_dir: Path, reference: np.ndarray, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    extract(_cfg(amibr_dir, store))
    out = " ".join(_resume(amibr_dir, store).split())  # as one line, whatever the terminal width
    assert "efficientnet_lite0: 0 tiles embedded, 1 chunk already done, nothing left to do" in out, out
    assert out.endswith("s.zarr (48 tiles)"), out


def test_crops_added_to_a_one_crop_store_fill_its_chunk(tmp_path: Path) -> None:
    """Before, the store kept the 1-row chunk it was made with: 61 chunk files per array once 60 crops were added."""
    src = tmp_path / "crops"
    crops = sorted((AMIBR / "Normal").glob("*.jpg"))[:61]
    assert len(crops) == 61
    (src / "Normal").mkdir(parents=True)
    shutil.copy(crops[0], src / "Normal" / crops[0].name)
    store = tmp_path / "s.zarr"
    fast = {"input_size": 64, "batch_size": 32}
    extract(_cfg(src, store, **fast))
    for f in crops[1:]:
        shutil.copy(f, src / "Normal" / f.name)
    summary = extract(_cfg(src, store, **fast))
    assert summary["grown"]["added_tiles"] == 60 and summary["backbones"]["efficientnet_lite0"]["rows"] == 60  # the old row is kept
    with open_store(store) as s:
        assert s.n_tiles == 61 and s.chunk_rows == 1024 and s.n_chunks == 1 and s.verify() == []
    for array in ("features/efficientnet_lite0/z1/rgb", "done/efficientnet_lite0/z1/rgb", "tiles/tile_id"):
        files = [f for f in (store / array).rglob("*") if f.is_file() and f.name != "zarr.json"]
        assert len(files) == 1, (array, len(files))
