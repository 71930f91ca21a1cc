"""Scale check: write, verify and train on a synthetic store of 1,000,000 tiles x 1,536 dims.

Each step runs in its own process so its wall time and peak resident memory (from wait4) are its own:

    python benchmarks/scale_1m.py --out /tmp/mito-scale            # write + verify + fit-head --stream
    python benchmarks/scale_1m.py --out /tmp/mito-scale --n 100000 # a quicker look
    python benchmarks/scale_1m.py --keep --fit-args "--epochs 3 --in-memory"   # the same store, features loaded whole

The features are random normal float16 with a weak class signal in the first 32 dims (so the head has
something to learn); labels are 30 % "mitotic", tiles belong to 1,000 slides. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KEY = "synthetic:z1:rgb"
SIGNAL_DIMS = 32


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < 0.3


def step_write(store: str, n: int, dim: int, chunk_rows: int, seed: int) -> dict:
    """Create the store and write every chunk (one chunk of features in memory at a time)."""
    import pandas as pd

    from mito.store import create_store

    y = _labels(n, seed)
    slides = np.arange(n) // max(1, n // 1000)
    tiles = pd.DataFrame(
        {
            "tile_id": np.char.add(np.char.add("s", slides.astype(str)), np.char.add("_", np.arange(n).astype(str))),
            "label": np.where(y, "mitotic", "non-mitotic"),
            "group": np.char.add("slide", slides.astype(str)),
        }
    )
    t0 = time.perf_counter()
    with create_store(store, tiles, {"tasks": ["label"], "source": {"kind": "synthetic", "seed": seed}}, chunk_rows=chunk_rows) as s:
        del tiles
        t_table = time.perf_counter() - t0
        s.ensure_variant(KEY, dim, {"backbone": "synthetic", "note": f"random normal, signal in the first {SIGNAL_DIMS} dims"})
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            rng = np.random.default_rng([seed, c])
            x = rng.standard_normal((b - a, dim), dtype=np.float32)
            x[:, :SIGNAL_DIMS] += np.where(y[a:b], 0.35, -0.15)[:, None]
            s.write_chunk(KEY, c, x.astype(np.float16))
        return {"n_chunks": s.n_chunks, "table_s": round(t_table, 2)}


def step_verify(store: str) -> dict:
    """Check the whole store (tile hash, shapes, done flags, NaN/inf in every chunk)."""
    from mito.store import open_store

    with open_store(store) as s:
        problems = s.verify()
        return {"problems": problems, "complete": s.is_complete(KEY)}


def _child(cmd: list[str], env: dict | None = None) -> dict:
    """Run a child; wall time and peak RSS of that child alone (os.wait4), and its last stdout line."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, etext = out.read(), err.read()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({p.returncode}):\n{etext[-4000:]}")
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(ru.ru_maxrss / 2**20, 2), "last_line": last}


def _du(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return round(total / 2**30, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/mito-scale", help="working folder (the store and the model go here)")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--chunk-rows", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", default="mlp", help="head for mito fit-head")
    ap.add_argument("--fit-args", default="--epochs 3 --stream", help="extra mito fit-head options")
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep an existing store (skip the write step)")
    ap.add_argument("--step", choices=["write", "verify"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    store = str(Path(a.out) / f"synthetic_{a.n}.zarr")

    if a.step == "write":
        print(json.dumps(step_write(store, a.n, a.dim, a.chunk_rows, a.seed)))
        return
    if a.step == "verify":
        print(json.dumps(step_verify(store)))
        return

    Path(a.out).mkdir(parents=True, exist_ok=True)
    me = [
        sys.executable,
        os.path.abspath(__file__),
        "--out",
        a.out,
        "--n",
        str(a.n),
        "--dim",
        str(a.dim),
        "--chunk-rows",
        str(a.chunk_rows),
        "--seed",
        str(a.seed),
    ]
    res: dict = {"n_tiles": a.n, "dim": a.dim, "chunk_rows": a.chunk_rows, "cpus": os.cpu_count(), "store": store}
    if not (a.keep and os.path.exists(store)):
        shutil.rmtree(store, ignore_errors=True)
        w = _child(me + ["--step", "write"])
        res["write"] = {**json.loads(w.pop("last_line")), **w}
    res["store_gib_on_disk"] = _du(store)
    v = _child(me + ["--step", "verify"])
    res["verify"] = {**json.loads(v.pop("last_line")), **v}
    if not a.skip_fit:
        model = str(Path(a.out) / "head")
        cmd = [
            sys.executable,
            "-m",
            "mito",
            "fit-head",
            "--store",
            store,
            "--task",
            "label",
            "--out",
            model,
            "--head",
            a.head,
            "--overwrite",
            "--json",
            *a.fit_args.split(),
        ]
        f = _child(cmd)
        f.pop("last_line")
        res["fit_head"] = {"cmd": " ".join(cmd[2:]), **f, "metrics": json.loads((Path(model) / "metrics.json").read_text())}
        m = res["fit_head"]["metrics"]
        res["fit_head"]["metrics"] = {
            k: m.get(k)
            for k in (
                "auroc",
                "balanced_accuracy",
                "n_train",
                "n_val",
                "n_test",
                "streamed",
                "epochs_run",
                "train_seconds",
                "total_seconds",
            )
        }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
