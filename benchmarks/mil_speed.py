"""ABMIL training speed and memory on a synthetic slide store: prints seconds per epoch and peak memory (one JSON line).

    python benchmarks/mil_speed.py                                   # 1,000 slides x 1,000 tiles x 1,536 dims, 20 epochs
    python benchmarks/mil_speed.py --slides 2000 --tiles 2000 --dims 64 --epochs 1   # the 2,000 x 2,000 memory check

The store (float16 features, Zarr, 1,024-row chunks, tiles of a slide contiguous as extraction writes them) is built
once in a child process under --dir, so the peak RSS printed is the training process's own. Positive slides hold a
few planted tiles shifted along a random direction; the rest is Gaussian noise. Training reads bags batch by batch
(mito.heads.bags.BagReader) with --max-tiles tiles per bag and epoch.

``seconds_per_epoch``   median wall seconds per epoch (reading + forward + backward, then scoring the validation bags)
``cpu_seconds_per_epoch`` median CPU seconds of this process per epoch (all its threads; epoch incl. validation):
                        on a shared machine, CPU seconds / cores is the idle-machine estimate
``peak_rss_gib``        peak resident memory of the training process (ru_maxrss)
``peak_chunk_rows``     most store rows the reader held at once (cache + batch): bounded by the batch, not the store
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(path: Path, slides: int, tiles: int, dims: int, seed: int = 0) -> None:
    """Write the synthetic store chunk by chunk (memory: one chunk)."""
    import pandas as pd

    from mito.store import create_store

    n = slides * tiles
    slide = np.repeat(np.arange(slides), tiles)
    pos = np.arange(slides) % 2 == 1
    table = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(n)],
            "slide": [f"s{s:05d}" for s in slide],
            "label": np.where(pos[slide], "tumour", "normal"),
        }
    )
    s = create_store(path, table, {"tasks": ["label"]}, chunk_rows=1024)
    s.ensure_variant(
        "synth:z1:rgb", dims, {"backbone": "synth", "weights_sha256": "0" * 64, "preprocessing": {"zoom": 1.0, "color": "rgb"}}
    )
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dims).astype(np.float32)
    direction /= np.linalg.norm(direction)
    planted = np.zeros(n, bool)
    for i in np.flatnonzero(pos):
        planted[i * tiles + rng.choice(tiles, max(1, tiles // 100), replace=False)] = True
    for c in range(s.n_chunks):
        a, b = s.chunk_rows_range(c)
        x = rng.standard_normal((b - a, dims), dtype=np.float32)
        x[planted[a:b]] += 3.0 * direction
        s.write_chunk("synth:z1:rgb", c, x.astype(np.float16))
    s.close()


def main() -> None:
    """Build the store if needed (child process), train ABMIL, print one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--dims", type=int, default=1536)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--max-tiles", type=int, default=512)
    ap.add_argument("--batch-bags", type=int, default=16)
    ap.add_argument("--head", default="abmil")
    ap.add_argument("--dir", default="/tmp/mito-mil-speed")
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args()
    path = Path(a.dir) / f"synth_{a.slides}x{a.tiles}x{a.dims}.zarr"
    if a.build_only:
        build(path, a.slides, a.tiles, a.dims)
        return
    if not path.exists():
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--build-only",
                "--slides",
                str(a.slides),
                "--tiles",
                str(a.tiles),
                "--dims",
                str(a.dims),
                "--dir",
                a.dir,
            ],
            check=True,
        )
        print(f"built {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)

    from mito.heads.bags import BagReader, BagSet, bag_table, make_bags
    from mito.heads.mil import make_mil_head
    from mito.heads.model import EpochCallback
    from mito.store import open_store

    with open_store(path) as store:
        bags = make_bags(bag_table(store, "label", "slide"), "label", "slide")
        rng = np.random.default_rng(0)
        order = rng.permutation(len(bags))
        n_val = len(bags) // 5
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        reader = BagReader(store, ["synth:z1:rgb"])
        head = make_mil_head(a.head, epochs=a.epochs, patience=a.epochs + 1, max_tiles=a.max_tiles, batch_bags=a.batch_bags)
        cpu = [time.process_time()]

        def on_epoch(rec: dict, m: int) -> None:
            cpu.append(time.process_time())
            print(
                f"epoch {rec['epoch']}/{m}: {rec['seconds']:.1f} s, {cpu[-1] - cpu[-2]:.1f} CPU s, loss {rec['train_loss']:.4f}, "
                f"val bal acc {rec.get('val_balanced_accuracy', float('nan')):.3f}, load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
                flush=True,
            )

        t0 = time.perf_counter()
        head.fit(BagSet(reader, bags, train), eval_set=BagSet(reader, bags, val), callbacks=[EpochCallback(on_epoch)])
        total = time.perf_counter() - t0
    secs = np.diff([0.0] + [r["seconds"] for r in head.history_])
    print(
        json.dumps(
            {
                "store": f"{a.slides} slides x {a.tiles} tiles x {a.dims} dims (float16)",
                "head": a.head,
                "max_tiles": a.max_tiles,
                "batch_bags": a.batch_bags,
                "epochs": len(head.history_),
                "seconds_total": round(total, 1),
                "seconds_per_epoch": round(float(np.median(secs)), 2),
                "cpu_seconds_per_epoch": round(float(np.median(np.diff(cpu))), 2),
                "val_balanced_accuracy_last": head.history_[-1].get("val_balanced_accuracy"),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "peak_chunk_rows": reader.peak_chunk_rows,
                "chunks_read": reader.chunks_read,
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
