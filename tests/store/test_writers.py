"""Writers never lose or corrupt a store: one writer at a time (an OS lock that kill -9 cannot leave stale),
attribute updates that keep another writer's work, HDF5 that survives kill -9 and a full disk, one-line
errors for full and read-only disks, no writing into a foreign folder, stores smaller than one chunk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.store import LockedError, StoreError, create_store, open_store

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["--task", "mitosis", "--zooms", "1", "--colors", "gray", "--input-size", "64", "--workers", "0", "--device", "cpu", "--quiet"]


def _mito(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mito", *args], check=False, capture_output=True, text=True, timeout=timeout, env=ENV)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one error line and no traceback; returns that line."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@contextlib.contextmanager
def _tmpfs(where: Path, opts: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def _tiles(n: int) -> pd.DataFrame:
    return pd.DataFrame({"tile_id": [f"t{i}" for i in range(n)], "label": ["a", "b"] * (n // 2)})


# ---------------------------------------------------------------- 10.2: fewer tiles than --chunk-rows
@pytest.mark.slow
@pytest.mark.parametrize("name", ["small.h5", "small.zarr"])
def test_a_store_smaller_than_one_chunk_is_written_and_sound(amibr_dir: Path, tmp_path: Path, name: str) -> None:
    store = tmp_path / name
    r = _mito("extract", str(amibr_dir), "--store", str(store), *SMALL)  # 48 tiles, default --chunk-rows 1024
    assert r.returncode == 0, r.stderr[-3000:]
    with open_store(store) as s:
        assert s.n_tiles == 48 and s.chunk_rows == 1024 and s.n_chunks == 1 and s.verify() == []
        # full chunks from the start (tiles added later fill them, issue 19): the rows beyond the data cost only their
        # compressed fill on disk
        assert s._b.chunks("features/efficientnet_lite0/z1/gray") == (1024, 1280)
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) if store.is_dir() else store.stat().st_size
    assert size < 1024 * 1280 * 2 // 4, size  # under a quarter of one uncompressed 1,024-row chunk


# ---------------------------------------------------------------- 10.13 / 15.2: one writer at a time
HOLD = "import sys, time; from mito.store import open_store; s = open_store(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(600)"


def test_a_second_writer_is_refused_in_one_line_and_a_killed_holder_leaves_no_stale_lock(
    amibr_dir: Path, amibr_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(amibr_store, store)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "ready"
        # the fixture's own settings: without the lock this run would go ahead (and exit 0)
        r = _mito(
            "extract",
            str(amibr_dir),
            "--store",
            str(store),
            "--task",
            "mitosis",
            "--zooms",
            "1,2",
            "--colors",
            "rgb,gray",
            "--input-size",
            "128",
            "--chunk-rows",
            "16",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--quiet",
        )
        line = _one_error_line(r)
        assert f"is being written by pid {holder.pid} on host " in line and "wait for it to finish or stop it" in line
        with pytest.raises(LockedError):
            open_store(store, "a")
        with open_store(store) as s:  # readers are never locked out
            assert s.verify() == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with open_store(store, "a") as s:  # the kernel dropped the dead holder's lock
        s.record("note", "written after kill -9")
    with open_store(store) as s:
        assert s.meta["note"] == "written after kill -9" and s.verify() == []


def test_attribute_updates_keep_what_another_writer_added(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    create_store(path, _tiles(6), {}, chunk_rows=4).close()
    a, b = open_store(path, "a"), open_store(path, "a")  # b's copy of the attributes is stale after a writes
    a.ensure_variant("bb:z1:gray", 3, {"backbone": "bb"})
    b.ensure_variant("bb:z2:gray", 3, {"backbone": "bb"})
    a.record("last_run", {"rows": 6})
    a.close(), b.close()
    with open_store(path) as s:
        assert s.variants == ["bb:z1:gray", "bb:z2:gray"] and s.meta["last_run"] == {"rows": 6}


def test_one_process_cannot_open_an_hdf5_store_twice_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with create_store(path, _tiles(4), {}) as s:
        with pytest.raises(StoreError, match="already open for writing in this process"):
            open_store(path, "a")
        s.record("note", 1)
    with open_store(path, "a") as s:  # closed: free again
        assert s.meta["note"] == 1


def test_creating_a_store_someone_else_is_writing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    create_store(path, _tiles(4), {}).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "ready"
        path.unlink()  # even with the file gone, the live writer's lock keeps a second creator out
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            create_store(path, _tiles(4), {})
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- 15.6: HDF5 survives kill -9
@pytest.mark.slow
def test_hdf5_killed_mid_run_keeps_the_previous_file_and_the_rerun_completes(amibr_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    r = _mito("extract", str(amibr_dir), "--store", str(store), *SMALL, "--chunk-rows", "8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("is HDF5") == 1  # one line up front: HDF5 resumes per run, use .zarr for long runs
    more = [
        "extract",
        str(amibr_dir),
        "--store",
        str(store),
        "--task",
        "mitosis",
        "--zooms",
        "1,2",
        "--colors",
        "rgb",
        "--input-size",
        "224",
        "--chunk-rows",
        "8",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    p = subprocess.Popen([sys.executable, "-m", "mito", *more], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    copy = tmp_path / ".s.h5.writing"
    while not copy.exists() and p.poll() is None:  # the run has started writing its copy
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    with open_store(store) as s:  # the file is the one the first run left: opens, sound, z1:gray only
        assert s.variants == ["efficientnet_lite0:z1:gray"] and s.verify() == []
    r = _mito(*more)
    assert r.returncode == 0, r.stderr[-3000:]
    with open_store(store) as s:
        assert len(s.variants) == 3 and s.verify() == []
    assert not copy.exists()


# ---------------------------------------------------------------- 10.14 / 15.6: full and read-only disks
@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("s.zarr", "300k"), ("s.h5", "650k")])  # HDF5 keeps 512 KiB free
def test_a_full_disk_gives_one_line_leaves_a_sound_store_and_a_rerun_resumes(amibr_dir: Path, tmp_path: Path, name: str, size: str) -> None:
    args = [
        "extract",
        str(amibr_dir),
        "--task",
        "mitosis",
        "--zooms",
        "1,2",
        "--colors",
        "rgb,gray",
        "--input-size",
        "64",
        "--chunk-rows",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    with _tmpfs(tmp_path / "mnt", f"size={size}") as mnt:
        store = mnt / name
        r = _mito(*args, "--store", str(store))
        assert "no space left on the device" in _one_error_line(r)
        if store.exists():
            with open_store(store, lenient=True) as s:  # incomplete, never unsound
                assert all("chunks not written" in p or p == "no feature variants" for p in s.verify()), s.verify()
        assert not [f for f in os.listdir(mnt) if f.endswith((".writing", ".creating"))]
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        r = _mito(*args, "--store", str(store))
        assert r.returncode == 0, r.stderr[-3000:]
        with open_store(store) as s:
            assert len(s.variants) == 4 and s.verify() == []


def test_a_read_only_target_gives_one_line(amibr_dir: Path, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as mnt:
        r = _mito("extract", str(amibr_dir), "--store", str(mnt / "s.zarr"), *SMALL)
        assert "read-only" in _one_error_line(r)
        assert os.listdir(mnt) == []


# ---------------------------------------------------------------- 15.11: foreign folders are left alone
@pytest.mark.slow
def test_a_foreign_folder_or_zarr_group_is_refused_before_anything_is_written(amibr_dir: Path, tmp_path: Path) -> None:
    import zarr

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.txt").write_text("mine")
    group = tmp_path / "other.zarr"
    zarr.open_group(group, mode="w").attrs["owner"] = "someone else"
    before = (group / "zarr.json").read_text()
    for target in (folder, group):
        r = _mito("extract", str(amibr_dir), "--store", str(target), *SMALL)
        assert "is not a mito store" in _one_error_line(r)
    assert sorted(os.listdir(folder)) == ["holiday.txt"]
    assert (group / "zarr.json").read_text() == before
    empty = tmp_path / "empty.zarr"
    empty.mkdir()  # an empty folder is free to use
    create_store(empty, _tiles(4), {}).close()
    assert json.loads((empty / "zarr.json").read_text())["attributes"]["mito"]["n_tiles"] == 4


def test_the_lock_is_taken_by_every_writer_path(tmp_path: Path) -> None:
    from mito.store.lock import lock_path

    path = tmp_path / "s.zarr"
    create_store(path, _tiles(4), {}).close()
    with open_store(path, "a") as s:
        info = json.loads(lock_path(path).read_text())
        assert info["pid"] == os.getpid() and s.capabilities.supports_locking
    assert lock_path(path).read_text() == ""  # released on close
    with open_store(path) as s:
        assert not s.writable
        np.testing.assert_array_equal(s.unreadable, np.zeros(4, bool))
