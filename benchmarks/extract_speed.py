"""How close `mito extract` runs to the bare model: prints ONE JSON line.

    python benchmarks/extract_speed.py                                  # efficientnet_lite0, CPU, 384 AMi-Br crops
    python benchmarks/extract_speed.py --device cuda --arch virchow2 --random-weights --compile

``tiles_per_s``          mito extract end to end: the whole ``extract()`` call on JPEG files on disk
                         (store creation, model build and weights load, decoding, resizing, forward,
                         float16 writes), not the interpreter start or imports.
``forward_tiles_per_s``  the bare model on pre-loaded tensors already on the device, same batch size,
                         dtype, memory format and compile setting as the extractor.
``efficiency``           tiles_per_s / forward_tiles_per_s (both measured in this run, best of --repeat,
                         interleaved so a noisy neighbour hits both alike).
``loop_tiles_per_s``     the extractor's own rate once the model is built (excludes startup).
``cpu_efficiency``       forward CPU ms per tile / extract CPU ms per tile (workers included): the share of
                         the CPU the model gets, robust to neighbours on a shared machine.
``mfu``                  tiles_per_s x FLOPs per tile / peak; FLOPs from torch.utils.flop_counter; the peak
                         is stated in ``peak_flops`` (800e12 for cuda, as issue 6; CPU: unknown, so mfu is null).

The source is ``--n`` real AMi-Br crops (128 px JPEGs, resized to the model input), cycled through
symlinks when --n exceeds the crops on disk, so every tile is a real decode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

AMIBR = Path(os.environ.get("MITO_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "amibr"
CUDA_PEAK = 800e12  # bf16 dense FLOP/s used for mfu on CUDA (issue 6's H100 figure)


def make_source(n: int, dest: Path, src: Path = AMIBR) -> Path:
    """A folder of ``n`` crops (Atypical/Normal subfolders of symlinks to real crops, interleaved by class)."""
    by_class = {c: sorted((src / c).glob("*.jpg")) for c in ("Atypical", "Normal")}
    if not all(by_class.values()):
        raise SystemExit(f"no AMi-Br crops under {src} (set MITO_SHARED)")
    for c in by_class:
        (dest / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = ("Atypical", "Normal")[i % 2]
        files = by_class[c]
        f = files[(i // 2) % len(files)]
        os.symlink(f, dest / c / f"{i:07d}_{f.name}")
    return dest


def flops_per_tile(spec, size: int, enc=None) -> float:
    """FLOPs of one tile's forward at ``size`` px, counted by torch.utils.flop_counter on the meta device
    (no memory, no compute; the 1B-parameter models cost nothing), else on ``enc`` itself."""
    from torch.utils.flop_counter import FlopCounterMode

    from mito.backbones.registry import Encoder, _timm_model

    try:
        with torch.device("meta"):
            enc, dev = Encoder(_timm_model(spec).eval(), spec, "", None), "meta"
    except Exception:  # e.g. a transformers model: count on the real one
        dev = next(enc.model.parameters()).device
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        enc.embed(torch.zeros(1, 3, size, size, device=dev))
    return float(fc.get_total_flops())


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its reaped children (the DataLoader workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def forward_rate(forward, x: torch.Tensor, n_tiles: int, device: torch.device, warmup: int = 2) -> tuple[float, float]:
    """Tiles/s of the bare forward on a pre-loaded batch, repeated to cover about ``n_tiles``; and CPU ms per tile."""
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    steps = max(2, round(n_tiles / x.shape[0]))
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            forward(x).float().cpu()
        if cuda:
            torch.cuda.synchronize()
        c0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(steps):
            out = forward(x)
        out.float().cpu()  # waits for the device
        n = steps * x.shape[0]
        return n / (time.perf_counter() - t0), 1000 * (cpu_seconds() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--arch", default="efficientnet_lite0", help="registry name (see `mito backbones`)")
    ap.add_argument("--random-weights", action="store_true", help="random init (gated models without their weights)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    ap.add_argument("--n", type=int, default=None, help="tiles (default 384 on CPU, 65536 on CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile in both measurements")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the extractor's)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="interleaved (forward, extract) rounds; best of each")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the peak used for mfu")
    ap.add_argument("--source", type=Path, default=AMIBR, help="AMi-Br-shaped folder of real crops")
    a = ap.parse_args()

    from mito.backbones import create_backbone, get_backbone
    from mito.core.resources import tune_cpu_allocator
    from mito.extract import ExtractConfig, extract, pick_device
    from mito.extract.extractor import default_batch_size, default_workers
    from mito.extract.sources import read_image
    from mito.extract.variants import Preprocess, preprocess

    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    if not cuda:
        tune_cpu_allocator()  # as extract() does on CPU, so the bare forward gets the same allocator
    name = f"random_{a.arch}" if a.random_weights and not a.arch.startswith("random_") else a.arch
    spec = get_backbone(name)
    bs = a.batch_size or default_batch_size(device)
    n = a.n or (65536 if cuda else 384)  # on CUDA: ~40 s at the 1,650 tiles/s goal, so model start-up is amortised
    size = a.input_size or spec.input_size
    workers = a.workers if a.workers is not None else default_workers(device)
    peak = a.peak_tflops * 1e12 if a.peak_tflops else (CUDA_PEAK if cuda else None)

    work = Path(tempfile.mkdtemp(prefix="mito-speed-"))
    try:
        src = make_source(n, work / "tiles", a.source)
        # the bare model, set up the way the extractor sets it up
        enc = create_backbone(name, device=device)
        model = enc.model
        if cuda:
            model.to(memory_format=torch.channels_last)
        prep = Preprocess(size, spec.mean, spec.std)
        files = sorted(src.rglob("*.jpg"))[:bs]
        x = torch.stack([preprocess(read_image(str(f)), prep) for f in files])
        while x.shape[0] < bs:
            x = torch.cat([x, x])[:bs]
        x = x.to(device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        flops = flops_per_tile(spec, size, enc)
        forward = torch.compile(enc.embed, dynamic=False) if a.compile else enc.embed

        fwd, e2e, loop, startup, cpu_fwd, cpu_e2e = [], [], [], [], [], []
        for r in range(a.repeat):
            rate, cpu_ms = forward_rate(forward, x, n, device)
            fwd.append(rate)
            cpu_fwd.append(cpu_ms)
            cfg = ExtractConfig(
                source=str(src),
                store=str(work / f"run{r}.zarr"),
                backbones=[name],
                input_size=a.input_size,
                batch_size=bs,
                num_workers=workers,
                device=device.type,
                compile=a.compile,
                progress=False,
            )
            c0, t0 = cpu_seconds(), time.perf_counter()
            summary = extract(cfg)
            wall = time.perf_counter() - t0
            cpu_e2e.append(1000 * (cpu_seconds() - c0) / n)
            b = summary["backbones"][name]
            e2e.append(n / wall)
            loop.append(float(b["tiles_per_s"]))
            startup.append(wall - float(b["seconds"]))
        tps, ftps = max(e2e), max(fwd)
        out = {
            "arch": a.arch,
            "backbone": name,
            "device": torch.cuda.get_device_name(device)
            if cuda
            else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "dtype": "bf16 autocast" if cuda else "float32",
            "n": n,
            "batch_size": bs,
            "input_size": size,
            "workers": workers,
            "threads": torch.get_num_threads(),
            "compile": a.compile,
            "tiles_per_s": round(tps, 2),
            "forward_tiles_per_s": round(ftps, 2),
            "efficiency": round(tps / ftps, 3),
            "loop_tiles_per_s": round(max(loop), 2),
            "loop_efficiency": round(max(loop) / ftps, 3),
            "startup_s": round(min(startup), 2),
            "cpu_ms_per_tile": round(min(cpu_e2e), 2),
            "forward_cpu_ms_per_tile": round(min(cpu_fwd), 2),
            "cpu_efficiency": round(min(cpu_fwd) / min(cpu_e2e), 3),
            "gflops_per_tile": round(flops / 1e9, 3),
            "peak_flops": peak,
            "peak_note": ("given by --peak-tflops" if a.peak_tflops else "stated bf16 dense peak (issue 6), not measured")
            if peak
            else "peak unknown on this CPU: mfu omitted",
            "ceiling_tiles_per_s": round(peak / flops, 1) if peak else None,
            "mfu": round(tps * flops / peak, 4) if peak else None,
            "forward_mfu": round(ftps * flops / peak, 4) if peak else None,
            "runs": {"tiles_per_s": [round(v, 1) for v in e2e], "forward_tiles_per_s": [round(v, 1) for v in fwd]},
            "torch": torch.__version__,
        }
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
