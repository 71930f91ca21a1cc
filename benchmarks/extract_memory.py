"""Peak memory of `mito extract` (the whole process tree: main + DataLoader workers) and its speed: ONE JSON line.

    python benchmarks/extract_memory.py                    # 1,000 real AMi-Br crops, CLI defaults (zooms 1,2 x rgb,gray)
    python benchmarks/extract_memory.py --n 300 --repeat 3
    python benchmarks/extract_memory.py -- --batch-size 32  # anything after -- goes to `mito extract`

``peak_rss_mib``    the largest sum of RSS over the `mito extract` process and all its children, sampled every
                    ``--interval`` seconds (/proc via psutil). Forked workers share pages with the parent, so the sum
                    counts shared pages more than once: it is an upper bound, and what `top` users add up.
``peak_pss_mib``    the same sum of PSS (shared pages split between the processes that map them): the tree's real
                    footprint. Read from /proc/<pid>/smaps_rollup; null where that is not readable.
``tiles_per_s``     tiles / wall time of the whole command (interpreter start, imports, model build included).
``loop_tiles_per_s`` the rate `mito extract` itself prints (once the model is built).

Each repeat runs a fresh `python -m mito extract` into a new store; ranges over repeats are reported as they
are (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AMIBR = Path(os.environ.get("MITO_SHARED", ROOT.parent / "shared")) / "data" / "amibr"


def make_source(n: int, dest: Path, src: Path = AMIBR) -> Path:
    """A folder of ``n`` crops (symlinks to real AMi-Br crops, classes interleaved), as benchmarks/extract_speed.py
    makes it; copied here so this process never imports torch (its own memory stays out of the way)."""
    by_class = {c: sorted((src / c).glob("*.jpg")) for c in ("Atypical", "Normal")}
    if not all(by_class.values()):
        raise SystemExit(f"no AMi-Br crops under {src} (set MITO_SHARED)")
    for c in by_class:
        (dest / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = ("Atypical", "Normal")[i % 2]
        f = by_class[c][(i // 2) % len(by_class[c])]
        os.symlink(f, dest / c / f"{i:07d}_{f.name}")
    return dest


def _pss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(pid: int) -> int:
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


class Sampler:
    """Samples the summed RSS and PSS of a process tree on a background thread; keeps the peaks."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.pss_seen = False
        self.max_procs = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            self.max_procs = max(self.max_procs, len(pids))
            self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in pids))
            vals = [v for v in (_pss(p) for p in pids) if v is not None]
            if vals:
                self.pss_seen = True
                self.peak_pss = max(self.peak_pss, sum(vals))
            self.stop.wait(self.interval)

    def close(self) -> None:
        self.stop.set()
        self.t.join()


def run_once(src: Path, store: Path, extra: list[str], interval: float) -> dict[str, float | int | None]:
    """One `python -m mito extract` run: peak tree RSS/PSS, wall time, the CLI's own rate."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "mito", "extract", str(src), "--store", str(store), "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    s = Sampler(proc.pid, interval)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    s.close()
    if proc.returncode != 0:
        raise SystemExit(f"mito extract failed ({proc.returncode}): {err.strip().splitlines()[-1] if err.strip() else out}")
    m = re.search(r"([\d.]+) tiles/s", out)
    return {
        "peak_rss": s.peak_rss,
        "peak_pss": s.peak_pss if s.pss_seen else None,
        "wall": wall,
        "loop_rate": float(m.group(1)) if m else None,
        "procs": s.max_procs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="tiles (real AMi-Br crops, default 1,000)")
    ap.add_argument("--repeat", type=int, default=2, help="fresh runs; ranges are reported")
    ap.add_argument("--interval", type=float, default=0.1, help="sampling period in seconds")
    ap.add_argument("--source", type=Path, default=AMIBR, help="AMi-Br-shaped folder of real crops")
    ap.add_argument("extra", nargs="*", help="options passed to mito extract (after --)")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mito-mem-"))
    try:
        src = make_source(a.n, work / "tiles", a.source)
        runs = [run_once(src, work / f"run{r}.zarr", a.extra, a.interval) for r in range(a.repeat)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 1 << 20
    rss = [r["peak_rss"] / mib for r in runs]
    pss = [r["peak_pss"] / mib for r in runs if r["peak_pss"] is not None]
    tps = [a.n / r["wall"] for r in runs]
    loop = [r["loop_rate"] for r in runs if r["loop_rate"] is not None]
    print(
        json.dumps(
            {
                "n": a.n,
                "extract_args": a.extra or "defaults (zooms 1,2 x rgb,gray, efficientnet_lite0)",
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "peak_rss_mib": round(max(rss), 1),
                "peak_rss_mib_runs": [round(v, 1) for v in rss],
                "peak_pss_mib": round(max(pss), 1) if pss else None,
                "peak_pss_mib_runs": [round(v, 1) for v in pss],
                "tiles_per_s": round(max(tps), 2),
                "tiles_per_s_runs": [round(v, 2) for v in tps],
                "loop_tiles_per_s_runs": loop,
                "processes": max(r["procs"] for r in runs),
            }
        )
    )


if __name__ == "__main__":
    main()
