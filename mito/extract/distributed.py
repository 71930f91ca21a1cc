"""Extraction across processes: each rank of a torchrun job embeds whole chunks of one shared store.

Rank ``r`` of ``N`` owns row chunk ``c`` when ``c % N == r``. Every rank skips chunks whose done flag is
set, so a resumed run redoes exactly the unfinished chunks, whatever ``N`` the interrupted run had.
Only rank 0 creates the store and adds variants; the others wait at a checked barrier and then open it.
Ranks exchange only small control messages (errors, summaries) over gloo, so the same code runs on CPU
and on GPUs, where rank ``r`` uses ``cuda:<LOCAL_RANK>``.

    torchrun --standalone --nproc-per-node 8 -m mito extract SOURCE --store s3://bucket/run.zarr ...
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import distributed as tdist

from mito.extract.errors import ExtractError

T = TypeVar("T")
TIMEOUT = _dt.timedelta(minutes=int(os.environ.get("MITO_DIST_TIMEOUT_MIN", "60")))


class DistributedError(ExtractError):
    """Another rank of the job failed; this rank stops too (the message names the rank and its error)."""


class Dist:
    """This process's place in the job: rank ``rank`` of ``world`` (rank 0 of 1 outside torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._broken = False  # after a failed sync no rank starts another collective

    def __repr__(self) -> str:
        return f"Dist(rank={self.rank}, world={self.world}, local_rank={self.local_rank})"

    @property
    def main(self) -> bool:
        """True on rank 0, the only rank that creates stores and writes their attributes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when more than one rank takes part."""
        return self.world > 1

    def owned(self, n_chunks: int) -> np.ndarray:
        """Boolean mask of the row chunks this rank embeds."""
        return np.arange(n_chunks) % self.world == self.rank

    def device(self, device: torch.device) -> torch.device:
        """One GPU per rank on a multi-GPU box (``cuda:<LOCAL_RANK>``); CPU stays CPU."""
        if device.type != "cuda" or not self.active:
            return device
        n = torch.cuda.device_count()
        if self.local_rank >= n:
            raise ExtractError(f"rank {self.rank} wants cuda:{self.local_rank}, but this machine has {n} GPU(s)")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def sync(self, error: BaseException | None = None, payload: Any = None) -> list[Any]:
        """A checked barrier: every rank reports its error (or none) and a payload; returns all payloads.

        If any rank failed, every rank raises (its own error, or a DistributedError naming the failed
        rank), and none starts another collective, so no rank is left waiting for a partner.
        """
        if not self.active or self._broken:
            if error is not None:
                raise error
            return [payload]
        msg = None if error is None else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        got: list[Any] = [None] * self.world
        tdist.all_gather_object(got, (msg, payload))
        failed = [(r, m) for r, (m, _) in enumerate(got) if m is not None]
        if failed:
            self._broken = True
            if error is not None:
                raise error
            r, m = failed[0]
            raise DistributedError(f"rank {r} of {self.world} failed: {m}")
        return [p for _, p in got]

    def fail(self, error: BaseException) -> None:
        """Tell the other ranks this one failed (once), so they stop at their next sync instead of hanging."""
        if self.active and not self._broken:
            try:
                self.sync(error)
            except BaseException:
                pass
        self._broken = True

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 while the others wait; an error in it is raised on every rank."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except Exception as e:  # re-raised below, after the other ranks learned of it
                error = e
        self.sync(error)
        return result


_STATE: dict[str, Any] = {}


def setup() -> Dist:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Outside torchrun (no WORLD_SIZE, or 1) this is rank 0 of 1 and nothing is initialised. The process
    group uses gloo even on GPUs: ranks exchange only small Python objects, never tensors.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    if not tdist.is_available():
        raise ExtractError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not tdist.is_initialized():
        tdist.init_process_group("gloo", timeout=TIMEOUT)
        _STATE["owner"] = True
        atexit.register(teardown)
    if tdist.get_world_size() != world:
        raise ExtractError(f"WORLD_SIZE={world}, but the process group has {tdist.get_world_size()} ranks")
    return Dist(tdist.get_rank(), world, int(os.environ.get("LOCAL_RANK", tdist.get_rank())))


def teardown() -> None:
    """Leave the process group if :func:`setup` created it."""
    if _STATE.pop("owner", False) and tdist.is_initialized():
        tdist.destroy_process_group()


def merge_summaries(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine the per-rank summaries of one backbone: rows add up, the slowest rank sets the time."""
    rows = sum(int(p.get("rows", 0)) for p in parts)
    secs = max(float(p.get("seconds", 0.0)) for p in parts)
    out = dict(parts[0])
    out.update(
        rows=rows,
        seconds=round(secs, 2),
        tiles_per_s=round(rows / secs, 2) if secs > 0 else None,
        skipped_chunks=min(int(p.get("skipped_chunks", 0)) for p in parts),
        ranks=[{"rows": int(p.get("rows", 0)), "seconds": p.get("seconds"), "tiles_per_s": p.get("tiles_per_s")} for p in parts],
    )
    return out


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs ``mito <args>`` as ``nproc`` ranks on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "mito", *args]


def strip_option(args: Sequence[str], name: str) -> list[str]:
    """``args`` without ``name VALUE`` / ``name=VALUE`` (so the ranks do not launch again)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``mito <args>`` under torchrun with ``nproc`` ranks (one per GPU); returns the exit code."""
    if nproc < 1:
        raise ExtractError("--gpus must be >= 1")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ExtractError("--gpus inside a torchrun job: drop --gpus (torchrun already started the ranks)")
    return subprocess.call(torchrun_command(nproc, args))
