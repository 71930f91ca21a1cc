"""Slide read path vs the model: prints one JSON line.

    python benchmarks/slide_read.py                # 12288 x 12288 px Aperio .svs (3 levels, JPEG), 0.5 um/px, 224 px tiles

``read_tiles_per_s``     tiles read and resampled per second by a DataLoader with 1 and 2 workers: each tile is
                         read from level 1 (0.5 um/px) of a JPEG-tiled pyramidal .svs through OpenSlide,
                         resampled exactly to 224 px (Lanczos) and turned into the uint8 tensor the extractor
                         ships (``prepare``); the same path as ``mito extract --mpp 0.5 --tile-px 224``.
``read_cpu_ms_per_tile`` CPU time of one worker per tile (robust to neighbours on a shared machine).
``forward_tiles_per_s``  efficientnet_lite0 on CPU, batch 16, 224 px, pre-loaded tensors, in this run
                         (and its CPU ms per tile: on a shared machine the CPU-time ratio is the robust one).
``workers_for_h100``     ceil(1650 / one worker's rate): workers needed to feed an H100 at ~1,650 tiles/s.

The slide is a mosaic of real AMi-Br H&E crops (written by mito.wsi.writer) on white glass.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Reads(Dataset):
    def __init__(self, source, n: int) -> None:
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> tuple[torch.Tensor, float]:
        from mito.extract.variants import Preprocess, prepare

        t0 = time.process_time()
        img = self.source.read_views(k % len(self.source), [1.0])[0]
        x = prepare(img, Preprocess(224, (0.5,) * 3, (0.5,) * 3))
        return x, time.process_time() - t0


def build_slide(dest: Path, side: int) -> Path:
    """A side x side px .svs at 0.25 um/px covered with real crops (cycled), 3 levels (1, 2, 4), JPEG tiles."""
    from PIL import Image

    from mito.wsi.writer import write_svs
    from tests.conftest import AMIBR

    crops = []
    for f in sorted(AMIBR.glob("*/*.jpg"))[:300]:
        with Image.open(f) as im:
            crops.append(np.asarray(im.convert("RGB").resize((128, 128))))
    img = np.empty((side, side, 3), np.uint8)
    k = 0
    for y in range(0, side, 128):
        for x in range(0, side, 128):
            c = crops[(k * 7) % len(crops)]
            img[y : y + 128, x : x + 128] = c[: side - y, : side - x]
            k += 1
    return write_svs(dest / "bench.svs", img)


def read_rate(source, n: int, workers: int) -> tuple[float, float]:
    loader = DataLoader(_Reads(source, n), batch_size=32, num_workers=workers, prefetch_factor=4 if workers else None)
    t0 = time.perf_counter()
    cpu = 0.0
    for _, c in loader:
        cpu += float(c.sum())
    return n / (time.perf_counter() - t0), 1000 * cpu / n


def forward_rate(n: int) -> tuple[float, float]:
    from mito.backbones import create_backbone
    from mito.extract.extractor import tune_cpu_allocator

    tune_cpu_allocator()  # as extract() does on CPU
    enc = create_backbone("efficientnet_lite0", device=torch.device("cpu"))
    x = torch.randn(16, 3, 224, 224)
    with torch.inference_mode():
        enc.embed(x)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < n:
            enc.embed(x)
            done += 16
    return done / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=12288, help="level-0 side in px")
    ap.add_argument("--n", type=int, default=None, help="tiles read per measurement (default: every tile once)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the forward (1 beat 2 on the shared 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mito.extract import open_source
    from mito.extract.slide_tiles import SlideOptions

    with tempfile.TemporaryDirectory() as tmp:
        path = build_slide(Path(tmp), args.side)
        src = open_source(path, slide_options=SlideOptions(mpp=0.5, tile_px=224, min_tissue=0.5), progress=False)
        n_tiles = len(src)
        n = min(args.n or n_tiles, n_tiles)  # each tile once, in table order, as the extractor reads them
        read_rate(src, 64, 0)  # warm the page cache (each worker opens its own handle: no decoded tiles carried over)
        r1, ms1 = read_rate(src, n, 1)
        r2, ms2 = read_rate(src, n, 2)
        fwd, fwd_ms = forward_rate(256)
    out = {
        "slide": f"{args.side}x{args.side} px .svs, 0.25 um/px, levels 1/2/4, JPEG q90",
        "tiles_read": n,
        "tiles_on_tissue": n_tiles,
        "tile": "224 px at 0.5 um/px (level 1, Lanczos)",
        "read_tiles_per_s": {"1_worker": round(r1, 1), "2_workers": round(r2, 1)},
        "read_cpu_ms_per_tile": round((ms1 + ms2) / 2, 2),
        "forward_tiles_per_s": round(fwd, 1),
        "forward_cpu_ms_per_tile": round(fwd_ms, 2),
        "forward_threads": args.threads,
        "read_over_forward_by_cpu": round(fwd_ms / ((ms1 + ms2) / 2), 1),
        "read_over_forward_1_worker": round(r1 / fwd, 2),
        "workers_for_h100": math.ceil(1650 / r1),
        "workers_for_h100_by_cpu": math.ceil(1650 * (ms1 + ms2) / 2 / 1000),
        "cores": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
