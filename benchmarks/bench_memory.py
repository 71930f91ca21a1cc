"""Peak memory of `mito bench` on a big store: 300,000 tiles x 1,536 dims (float16), 2 worker processes.

Builds a synthetic store (class-dependent features, a tile table with slide groups and a published split), then
runs the bench command in a child process and samples the resident memory of its whole process tree (the bench
process and its joblib workers, summed) every 0.1 s:

    python benchmarks/bench_memory.py --out /tmp/mito-bench-mem            # build (once) and measure
    python benchmarks/bench_memory.py --out /tmp/mito-bench-mem --keep     # reuse the store

Goal (issue 10, "one fit path"): under 2 GiB peak. Prints one JSON line.

Measured 2026-11-24 on the shared 2-core, 23 GiB machine (load average 10-13 from other work, so the seconds are
loose), heads mlp,linear, 2 folds, 2 epochs, 2 jobs:
  before (every worker read the whole store as float32): peak RSS sum 9.67 GiB, PSS sum 8.76 GiB, 252 s
  after (fit_on_rows: float16, streamed past a 256 MiB budget per job): peak RSS sum 2.65 GiB, PSS sum 1.96 GiB, 170 s
The RSS sum counts pages shared by the three processes (torch's libraries) three times; the PSS sum does not. What
is left per worker is mostly `import torch` (0.48 GiB RSS) and torch's training scratch, not features.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KEY = "synthetic:z1:rgb"
SIGNAL_DIMS = 32


def build_store(store: str, n: int, dim: int, chunk_rows: int, seed: int) -> float:
    """Write the store one chunk at a time (float16; 30 % 'mitotic'; 1,000 slides, a fifth of them published as test)."""
    import pandas as pd

    from mito.store import create_store

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    slides = np.arange(n) // max(1, n // 1000)
    tiles = pd.DataFrame(
        {
            "tile_id": [f"s{s}_{i}" for s, i in zip(slides, range(n))],
            "label": np.where(y, "mitotic", "non-mitotic"),
            "group": np.char.add("slide", slides.astype(str)),
            "split": np.where(slides % 5 == 0, "test", "train"),
        }
    )
    with create_store(store, tiles, {"tasks": ["label"], "source": {"kind": "synthetic", "seed": seed}}, chunk_rows=chunk_rows) as s:
        s.ensure_variant(KEY, dim, {"backbone": "synthetic", "note": f"random normal, signal in the first {SIGNAL_DIMS} dims"})
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            x = np.random.default_rng([seed, c]).standard_normal((b - a, dim), dtype=np.float32)
            x[:, :SIGNAL_DIMS] += np.where(y[a:b], 0.35, -0.15)[:, None]
            s.write_chunk(KEY, c, x.astype(np.float16))
    return time.perf_counter() - t0


def tree_memory(proc: object) -> tuple[int, int, list[int]]:
    """(summed RSS, summed PSS, RSS per process) of a process and all its descendants.

    RSS counts pages shared between the processes (torch's libraries, the interpreter) once per process; PSS
    splits each shared page between its users, so the PSS sum is what the tree really takes.
    """
    import psutil

    rss = pss = 0
    each = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            m = p.memory_full_info()
        except psutil.Error:
            continue
        rss += m.rss
        pss += getattr(m, "pss", m.rss)
        each.append(m.rss)
    return rss, pss, each


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time and the peaks of its process tree's summed RSS and PSS (sampled every 0.2 s)."""
    import psutil

    t0 = time.perf_counter()
    log = open(Path(cmd[cmd.index("--out") + 1]).with_suffix(".log"), "w")
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(child.pid)
    peak_rss = peak_pss = 0
    at_peak: list[int] = []
    while child.poll() is None:
        rss, pss, each = tree_memory(proc)
        if rss > peak_rss:
            peak_rss, at_peak = rss, each
        peak_pss = max(peak_pss, pss)
        time.sleep(0.2)
    log.close()
    if child.returncode != 0:
        raise SystemExit(f"bench failed ({child.returncode}); see {log.name}")
    gib = lambda b: round(b / 2**30, 2)  # noqa: E731
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_gib": gib(peak_rss),
        "peak_pss_gib": gib(peak_pss),
        "rss_per_process_at_peak_gib": [gib(b) for b in at_peak],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/mito-bench-mem")
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--chunk-rows", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", default="mlp,linear", help="heads to bench (logreg/knn/lightgbm cannot stream: they hold their rows)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the torch heads (a budget: memory, not accuracy, is measured)")
    ap.add_argument("--keep", action="store_true", help="reuse an existing store")
    a = ap.parse_args()
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    store = str(root / f"synthetic_{a.n}x{a.dim}.zarr")
    build_s = None
    if not (a.keep and Path(store).exists()):
        shutil.rmtree(store, ignore_errors=True)
        build_s = round(build_store(store, a.n, a.dim, a.chunk_rows, a.seed), 1)
    report = root / "report"
    shutil.rmtree(report, ignore_errors=True)
    params = [p for h in a.heads.split(",") if h in ("mlp", "linear") for p in ("--param", f"{h}.epochs={a.epochs}")]
    cmd = [
        sys.executable,
        "-m",
        "mito",
        "bench",
        "--store",
        store,
        "--out",
        str(report),
        "--task",
        "label",
        "--features",
        KEY,
        "--heads",
        a.heads,
        "--folds",
        "2",
        "--cv",
        "kfold",
        "--jobs",
        str(a.jobs),
        "--n-boot",
        "0",
        "--no-umap",
        *params,
    ]
    m = run_measured(cmd)
    rows = json.loads((report / "leaderboard.json").read_text())["rows"]
    print(
        json.dumps(
            {
                "n": a.n,
                "dim": a.dim,
                "heads": a.heads,
                "jobs": a.jobs,
                "folds": 2,
                "epochs": a.epochs,
                "store_build_s": build_s,
                **m,
                "goal_gib": 2.0,
                "under_goal": m["peak_pss_gib"] < 2.0,
                "balanced_accuracy": {r["head"]: round(r["balanced_accuracy"], 3) for r in rows},
            }
        )
    )


if __name__ == "__main__":
    main()
