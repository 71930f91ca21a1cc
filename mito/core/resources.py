"""What the machine has right now: idle cores, available memory (cgroup-aware), peak RSS, and the CPU allocator setting."""

from __future__ import annotations

import os
import time
from pathlib import Path


def idle_cores(window: float = 0.25) -> float | None:
    """Cores of this process's CPU set left idle by everyone over the next ``window`` seconds (/proc/stat), None off Linux.

    Sampled now, while this process waits, unlike the 1-minute load average, which still counts this
    process's own work of the last minute (reading the features) as load.
    """
    try:
        cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        return None

    def sample() -> tuple[int, int]:
        idle = total = 0
        for line in Path("/proc/stat").read_text().splitlines():
            f = line.split()
            if f and f[0] in cpus:
                ticks = [int(v) for v in f[1:9]]  # user nice system idle iowait irq softirq steal
                idle += ticks[3] + ticks[4]
                total += sum(ticks)
        return idle, total

    try:
        i0, t0 = sample()
        time.sleep(window)
        i1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    return len(cpus) * (i1 - i0) / (t1 - t0)


def available_memory() -> int | None:
    """Bytes this process may still take: MemAvailable, capped by a cgroup limit (Slurm, Docker, Kubernetes); None if unknown."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    room = cgroup_room()
    if room is not None:
        free = room if free is None else min(free, room)
    return free


def cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory limit minus usage of this process's cgroup (v2, else v1), None when unlimited or unknown."""
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:  # v1 writes a huge number for "no limit"
                return None
            return max(0, int(limit) - int((root / usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss), in bytes."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20, top_pad: int = 64 << 20) -> bool:
    """glibc only: keep up to ``trim_threshold`` of freed heap in the process instead of handing it back after every op.

    Otherwise each batch's activations come back as fresh zeroed pages, and on a small VM the page faults
    (system time) cost as much as the convolutions. Process-wide (DataLoader workers forked later inherit it),
    so the retained memory is bounded: at most ``trim_threshold`` + ``top_pad`` per heap, blocks over
    ``mmap_threshold`` always go back to the kernel. Returns True when applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return all(
            libc.mallopt(opt, val) == 1
            for opt, val in ((m_mmap_threshold, mmap_threshold), (m_trim_threshold, trim_threshold), (m_top_pad, top_pad))
        )
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
