"""Peak memory of slide-level scoring (predict / validation of a MIL head) on a store with a few huge bags.

Scoring sees every tile of a bag, and a batch pads its bags to the longest one in float32. Before issue 19 item 27
batches were a fixed number of bags (``batch_bags``, 16), so 4 bags of 50,000 tiles among 36 of 200 padded whole
batches to 50,000 tiles (16 x 50,000 x 384 x 4 bytes = 1.2 GB a batch, two batches in flight). Now batches are cut
by padded tiles (mito.heads.bags.tile_budget_batches): a huge bag is scored alone.

    python benchmarks/slide_predict_memory.py --dir /tmp/mito-slide-mem      # build (once), fit, measure both ways

Builds the store and fits an abmil head once under --dir, then scores every bag in a child process per mode under
``/usr/bin/time -v`` ("before": the old fixed cut of ``batch_bags`` bags, patched back in; "after": the code as it
is) and prints one JSON line: peak RSS (GiB) and wall seconds per mode, and whether the probabilities and attention
weights of both modes are identical (bit for bit, else their largest difference: bags scored beside a huge bag are no
longer padded to it, so float32 sums run over other lengths).

Measured 2026 on the shared 2-core, 23 GiB machine, 4 x 50,000 + 36 x 200 tiles at 384 dims (abmil, 1 epoch):
  load 11.5: before 2.17 GiB peak RSS, 71.4 s; after 1.15 GiB, 9.6 s
  load 5.5:  before 2.17 GiB peak RSS,  9.9 s; after 1.01 GiB, 2.8 s
  probabilities and attention equal to 3.0e-8 (not bit for bit), the same predicted class for every bag.
What remains after is mostly torch, the tile table and the reader's 256 MiB chunk cache, not padding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
KEY = "synth:z1:rgb"


def build(store: Path, model: Path, big: int, big_tiles: int, small: int, small_tiles: int, dims: int, seed: int = 0) -> None:
    """The store (huge bags spread among the small ones, tiles of a bag contiguous) and a 1-epoch abmil head."""
    import pandas as pd

    from mito.heads.bags import BagReader, BagSet, make_bags
    from mito.heads.mil import make_mil_head
    from mito.store import create_store

    n_bags = big + small
    every = max(1, n_bags // max(1, big))
    sizes = np.array([big_tiles if i % every == 0 and i // every < big else small_tiles for i in range(n_bags)])
    bag = np.repeat(np.arange(n_bags), sizes)
    table = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(len(bag))],
            "slide": [f"s{b:03d}" for b in bag],
            "label": np.where(bag % 2 == 1, "tumour", "normal"),
        }
    )
    s = create_store(store, table, {"tasks": ["label"]}, chunk_rows=1024)
    s.ensure_variant(KEY, dims, {"backbone": "synth", "weights_sha256": "0" * 64, "preprocessing": {"zoom": 1.0, "color": "rgb"}})
    rng = np.random.default_rng(seed)
    shift = (bag % 2 == 1)[:, None] * 0.5
    for c in range(s.n_chunks):
        a, b = s.chunk_rows_range(c)
        s.write_chunk(KEY, c, (rng.standard_normal((b - a, dims), dtype=np.float32) + shift[a:b]).astype(np.float16))
    bags = make_bags(s.tiles, "label")
    head = make_mil_head("abmil", epochs=1, batch_bags=16, max_tiles=512).fit(BagSet(BagReader(s, [KEY]), bags))
    head.save(model)
    s.close()


SCORE = """
import sys, time, numpy as np
sys.path.insert(0, {root!r})
from mito.store import open_store
from mito.heads import bags as B, mil
from mito.heads.mil import load_mil_head
if sys.argv[1] == "before":  # the fixed cut of batch_bags bags, whatever their size
    mil.tile_budget_batches = lambda sizes, which, batch_bags, budget=0: [which[s : s + batch_bags] for s in range(0, len(which), batch_bags)]
head = load_mil_head(sys.argv[3])
with open_store(sys.argv[2]) as s:
    bags = B.make_bags(s.tiles, None, None, None, None, s.unreadable)
    t0 = time.perf_counter()
    proba, rows, att = head.predict_proba(B.BagReader(s, [{key!r}]), bags)
    print("seconds", time.perf_counter() - t0)
np.savez(sys.argv[4], proba=proba, att=np.concatenate(att))
"""


def score(mode: str, store: Path, model: Path, out: Path) -> dict[str, float]:
    """Score in a child process under /usr/bin/time -v: its peak RSS and the scoring seconds."""
    code = SCORE.format(root=str(Path(__file__).resolve().parents[1]), key=KEY)
    p = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", code, mode, str(store), str(model), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    secs = float(re.search(r"seconds ([\d.]+)", p.stdout).group(1))
    return {"peak_rss_gib": round(rss_kb / 2**20, 3), "seconds": round(secs, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mito-slide-mem"))
    ap.add_argument("--big", type=int, default=4)
    ap.add_argument("--big-tiles", type=int, default=50_000)
    ap.add_argument("--small", type=int, default=36)
    ap.add_argument("--small-tiles", type=int, default=200)
    ap.add_argument("--dims", type=int, default=384)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.big}x{args.big_tiles}+{args.small}x{args.small_tiles}x{args.dims}"
    store, model = args.dir / f"{tag}.zarr", args.dir / f"{tag}.model"
    if not (model / "head.json").exists():
        t0 = time.perf_counter()
        build(store, model, args.big, args.big_tiles, args.small, args.small_tiles, args.dims)
        print(f"built {store} and {model} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    res: dict[str, object] = {"store": tag, "load": os.getloadavg()[0]}
    for mode in ("before", "after"):
        res[mode] = score(mode, store, model, args.dir / f"{mode}.npz")
    a, b = np.load(args.dir / "before.npz"), np.load(args.dir / "after.npz")
    res["identical"] = bool(np.array_equal(a["proba"], b["proba"]) and np.array_equal(a["att"], b["att"]))
    res["same_predictions"] = bool(np.array_equal(a["proba"].argmax(1), b["proba"].argmax(1)))
    res["max_abs_diff"] = float(max(np.abs(a["proba"] - b["proba"]).max(), np.abs(a["att"] - b["att"]).max()))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
