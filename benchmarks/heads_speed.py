"""Fit seconds and peak memory of the mlp head on a synthetic 100,000 x 2,560 float16 store (30 epochs).

    python benchmarks/heads_speed.py                 # builds /tmp/mito-speed.zarr once, then times each setting
    python benchmarks/heads_speed.py --rows 20000    # a quicker look

Each setting runs in a fresh process so its peak RSS is its own; the store is two 1,280-d variants
(read and concatenated like z1:rgb + z1:gray), 90% train / 10% val by a split column, patience = epochs
so all epochs run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

KEYS = ("synth:z1:rgb", "synth:z1:gray")


def build_store(path: Path, rows: int, dim: int, seed: int = 0) -> float:
    """Write the synthetic store (labels 1 in 4.5 minority, 500 slides); returns seconds."""
    from mito.store import create_store

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    y = rng.random(rows) < 1 / 4.5
    tiles = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(rows)],
            "mitosis": np.where(y, "Atypical", "Normal"),
            "group": [f"slide{i}" for i in rng.integers(0, 500, rows)],
            "split": np.where(np.arange(rows) < int(rows * 0.9), "train", "val"),
        }
    )
    s = create_store(path, tiles, {"tasks": ["mitosis"]}, chunk_rows=4096)
    half = dim // len(KEYS)
    direction = rng.normal(size=half).astype(np.float32) * 0.05
    for k in KEYS:
        color = k.split(":")[2]
        prov = {"backbone": "synth", "weights_sha256": "0" * 64, "preprocessing": {"zoom": 1.0, "color": color, "input_size": 224}}
        s.ensure_variant(k, half, prov)
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            block = np.abs(rng.standard_normal((b - a, half), dtype=np.float32)) + y[a:b, None] * direction
            s.write_chunk(k, c, block.astype(np.float16))
    s.close()
    return time.perf_counter() - t0


def run_one(store: str, setting: dict[str, Any], epochs: int, threads: int | None) -> dict[str, Any]:
    """One fit_head run in this (fresh) process: seconds and peak memory."""
    from mito.heads import FitConfig, fit_head

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    m = fit_head(
        FitConfig(
            store=store,
            task="mitosis",
            head="mlp",
            features=list(KEYS),
            split_column="split",
            head_params={"epochs": epochs, "patience": epochs, "n_threads": threads, **setting},
        )
    )
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "precision": m["precision"],
        "threads": m["threads"],
        "fit_s": m["train_seconds"],
        "total_s": total,
        "epochs": m["epochs_run"],
        "n_train": m["n_train"],
        "peak_mib": peak / 1024,
        "grow_mib": (peak - base) / 1024,
        "val_ba": m["balanced_accuracy"],
    }


SETTINGS = {
    "mlp defaults": {},
    "mlp defaults + noise 0.5": {"noise": 0.5},
    "mlp fp32": {"precision": "fp32"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2560)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--store", default="/tmp/mito-speed.zarr")
    ap.add_argument("--threads", type=int, default=None, help="Default: the head's own choice (idle cores).")
    ap.add_argument("--only", default=None, help="Comma-separated setting names to run (default: all).")
    args = ap.parse_args()

    store = Path(args.store)
    if not store.exists():
        print(f"building {args.rows:,} x {args.dim:,} float16 store at {store} ...", flush=True)
        print(f"  built in {build_store(store, args.rows, args.dim):.1f} s", flush=True)
    feat_mib = args.rows * args.dim * 2 / 2**20
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SETTINGS)
    print(f"features in memory (float16): {feat_mib:.0f} MiB; cpu: {os.cpu_count()} cores; load before: {os.getloadavg()[0]:.1f}")
    print(
        "| setting | precision | threads | epochs | train rows | fit s | fit_head total s | peak RSS MiB | RSS growth in fit_head MiB | val bal. acc |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ctx = mp.get_context("spawn")
    for name in names:
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
            r = ex.submit(run_one, str(store), SETTINGS[name], args.epochs, args.threads).result()
        print(
            f"| {name} | {r['precision']} | {r['threads']} | {r['epochs']} | {r['n_train']:,} | {r['fit_s']:.1f} | {r['total_s']:.1f} | {r['peak_mib']:.0f} | {r['grow_mib']:.0f} | {r['val_ba']:.3f} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
