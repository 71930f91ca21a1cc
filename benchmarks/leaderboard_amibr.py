"""The full AMi-Br leaderboard: every backbone x feature set x head in the store, plus budgeted LoRA and full fine-tuning.

    python benchmarks/leaderboard_amibr.py                                   # store, data and out defaults below
    python benchmarks/leaderboard_amibr.py --ft-minutes 3 --ft-folds 2       # the fine-tuning budget (per fold, per mode)
    python benchmarks/leaderboard_amibr.py --skip-ft --skip-proxies          # heads only

Folds: the published split decides train vs test; 5 slide-grouped folds of the train split each early-stop on
their part and train on the rest, and every model is scored on the whole test split (the AMi-Br protocol).
Fine-tuning runs (efficientnet_lite0 by default) use those same folds, at the crops' native 128 px, with a
per-fold time cap; each row's budget column says what it got. Every stage resumes: finished folds are kept.
Writes OUT/{heads,lora,full,mitosis,proxies}/ and OUT/summary.md (the README table and the time ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from mito.bench import BenchConfig, FinetuneConfig, load_leaderboard, merge_leaderboards, run_bench, run_finetune, save_leaderboard
from mito.report import build_report, leaderboard_table
from mito.report.html import time_comparison
from mito.report.umap import leaderboard_umaps
from mito.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def stage(out: Path, name: str) -> bool:
    """True when a stage already wrote its leaderboard (re-runs skip it; delete the folder to redo)."""
    done = (out / name / "leaderboard.json").is_file()
    print(f"== {name}: {'done, kept' if done else 'running'}", flush=True)
    return done


def markdown(rows: pd.DataFrame, top: int) -> str:
    """The best rows as a Markdown table."""
    cols = (
        ["rank"]
        + (["task"] if rows["task"].nunique() > 1 else [])
        + ["backbone", "features", "head", "balanced_accuracy", "ci", "auroc", "kappa", "weighted_f1", "train_seconds", "budget"]
    )
    lines = ["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in rows.head(top).iterrows():
        cells = []
        for c in cols:
            if c == "ci":
                cells.append(f"{r['ci_low']:.3f}-{r['ci_high']:.3f}")
            elif c in ("balanced_accuracy", "auroc", "kappa", "weighted_f1"):
                std = r.get(f"{c}_std")
                cells.append(f"{r[c]:.3f}" + (f" ± {std:.3f}" if pd.notna(std) else ""))
            elif c == "train_seconds":
                cells.append(f"{r[c]:.3g}")
            else:
                cells.append(str(r[c]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/work/runs/amibr.zarr")
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "amibr"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "amibr"))
    ap.add_argument("--jobs", type=int, default=0, help="Worker processes for the heads (0 = every core).")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--heads", default=None, help="Comma-separated heads (default: all).")
    ap.add_argument("--ft-backbone", default="efficientnet_lite0")
    ap.add_argument("--ft-modes", default="lora,full")
    ap.add_argument("--ft-folds", type=int, default=2, help="Fine-tune only the first N folds (a budget).")
    ap.add_argument("--ft-minutes", type=float, default=2.5, help="Training-time cap per fold and mode.")
    ap.add_argument("--ft-epoch-samples", type=int, default=256, help="Class-balanced draws per epoch (early stopping checks each epoch).")
    ap.add_argument("--ft-val-samples", type=int, default=128, help="Early-stopping tiles scored per epoch.")
    ap.add_argument("--skip-ft", action="store_true")
    ap.add_argument("--skip-proxies", action="store_true")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open_store(args.store) as s:
        incomplete = [k for k in s.variants if not s.is_complete(k)]
        variants = [k for k in s.variants if s.is_complete(k)]
    if incomplete:
        print(f"note: leaving out incomplete variants {', '.join(incomplete)}")
    print(f"store {args.store}: {', '.join(variants)}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    heads = args.heads.split(",") if args.heads else None
    timings: dict[str, float] = {}
    load_start = os.getloadavg()[0]

    if not stage(out, "heads"):
        t = time.perf_counter()
        lb = run_bench(BenchConfig(store=args.store, tasks=["mitosis"], features=None, heads=heads, n_folds=args.folds, n_jobs=args.jobs))
        save_leaderboard(lb, out / "heads")
        timings["heads_wall_seconds"] = time.perf_counter() - t
    parts = [out / "heads"]

    if not args.skip_ft:
        for mode in args.ft_modes.split(","):
            t = time.perf_counter()
            print(f"== {mode} ({args.ft_backbone}): {args.ft_folds} folds, cap {args.ft_minutes:g} min each", flush=True)
            run_finetune(
                FinetuneConfig(
                    source=args.source,
                    out=str(out / mode),
                    backbone=args.ft_backbone,
                    task="mitosis",
                    mode=mode,
                    n_folds=args.folds,
                    folds=args.ft_folds,
                    max_minutes=args.ft_minutes,
                    epoch_samples=args.ft_epoch_samples,
                    val_samples=args.ft_val_samples,
                )
            )
            timings[f"{mode}_wall_seconds"] = time.perf_counter() - t
            parts.append(out / mode)

    merged = load_leaderboard(parts[0])
    for p in parts[1:]:
        merged = merge_leaderboards(merged, load_leaderboard(p))
    save_leaderboard(merged, out / "mitosis")
    leaderboard_umaps(args.store, merged, out / "mitosis")
    build_report(out / "mitosis")

    if not args.skip_proxies and not stage(out, "proxies"):
        base = [v for v in variants if v.endswith(":z1:rgb")]
        lb = run_bench(
            BenchConfig(
                store=args.store,
                tasks=["mitosis", "phase", "atypia", "dataset"],
                features=base,
                heads=["logreg", "knn", "mlp"],
                n_folds=args.folds,
                n_jobs=args.jobs,
            )
        )
        save_leaderboard(lb, out / "proxies")
        leaderboard_umaps(args.store, lb, out / "proxies")
        build_report(out / "proxies")

    from rich.console import Console

    Console(width=160).print(leaderboard_table(merged.rows, top=args.top))
    tc = time_comparison(merged.rows)
    ft_rows = merged.rows[merged.rows["kind"] != "head"]
    lines = [
        f"# AMi-Br leaderboard ({pd.Timestamp.now(tz='UTC'):%Y-%m-%d}, {os.cpu_count()} CPU cores, store {args.store})",
        "",
        markdown(merged.rows, args.top),
        "",
        "Fine-tuning rows:",
        "",
        markdown(ft_rows, len(ft_rows)) if len(ft_rows) else "(none)",
        "",
    ]
    for f in tc.get("finetune", []):
        lines.append(
            f"- {f['label']}: {f['train_seconds']:.1f} s training per fold = {f['ratio_vs_best_head']:.0f}x the best head "
            f"({tc['best_head']['train_seconds']:.2f} s) and {f['ratio_vs_median_head']:.0f}x the median head "
            f"({tc['median_head_train_seconds']:.2f} s); {f['samples_per_second']:.1f} training tiles/s, i.e. about "
            f"{f['epoch_seconds']:.0f} s per pass over the training set; budget: {f['budget']}"
        )
    if (out / "proxies" / "leaderboard.json").is_file():
        prox = load_leaderboard(out / "proxies").rows
        lines += ["", "Proxy tasks (z1 RGB of each backbone; best row per task and backbone):", ""]
        best = prox.sort_values("rank").groupby(["task", "backbone"], sort=True).head(1)
        lines.append(markdown(best.sort_values(["task", "rank"]), len(best)))
    lines += [
        "",
        "Stage wall seconds: " + json.dumps({k: round(v) for k, v in timings.items()}),
        f"1-minute load average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} (other jobs share these cores)",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))
    print(f"wrote {out / 'mitosis' / 'report.html'} and {out / 'summary.md'}")


if __name__ == "__main__":
    main()
