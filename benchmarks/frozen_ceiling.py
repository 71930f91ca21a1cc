"""How far frozen features go on AMi-Br: `mito bench` once per seed, pooled (mito.bench.seeds.pool_benches).

    python benchmarks/frozen_ceiling.py --store runs/amibr.zarr --out runs/ceiling

For each seed K it runs `mito bench ... --seed K --param HEAD.seed=K` into OUT/seedK (the folds' early-stopping
parts and the heads' initialisation change with K; a seed folder that already holds this command's leaderboard.json is kept, so
an interrupted run resumes; one of other features, heads or folds is refused), then pools the folders: per configuration (feature set x head x noise, in-domain and
each held-out cohort) the mean and sd over seeds, the ensemble of each run's fold models, and a paired bootstrap
against the reference configuration. Writes OUT/ceiling.csv, .json, .md and .png and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from mito.bench.seeds import Reference, pool_benches
from mito.core.errors import MitoError
from mito.report.pooled import pooled_figure
from mito.report.tables import number, p_value

# the feature sets compared by default (bench --features specs: variant keys joined by '+'); the first is fit-head's default
DEFAULT_FEATURES = [
    "efficientnet_lite0:z1:rgb+efficientnet_lite0:z1:gray+efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray",
    "efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray",
    "efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray+efficientnet_lite0:z2:hema",
    "efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:hema",
    "efficientnet_lite1:z2:rgb+efficientnet_lite1:z2:gray",
    "efficientnet_lite2:z2:rgb+efficientnet_lite2:z2:gray",
    "efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray+efficientnet_lite1:z2:rgb+efficientnet_lite1:z2:gray",
    "efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray+efficientnet_lite1:z2:rgb+efficientnet_lite1:z2:gray"
    "+efficientnet_lite2:z2:rgb+efficientnet_lite2:z2:gray",
    "efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray+efficientnet_lite0:z2:hema+efficientnet_lite1:z2:rgb+efficientnet_lite1:z2:gray",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default="mitosis")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated bench seeds, one run each")
    ap.add_argument("--features", default=";".join(DEFAULT_FEATURES), help="';'-separated feature sets (variant keys joined by '+')")
    ap.add_argument("--heads", default="mlp,linear")
    ap.add_argument("--noise", default=None, help="comma-separated feature-noise levels, passed to bench")
    ap.add_argument("--shift-column", default="dataset", help="hold out each value in turn ('' = in-domain only)")
    ap.add_argument(
        "--reference", default=None, help="FEATURES,HEAD[,NOISE] (default: the first feature set with mlp, else the first head)"
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--feature-search", action="store_true", help="also a searched row per head (bench --feature-search)")
    ap.add_argument("--dry-run", action="store_true", help="print the bench commands and stop")
    return ap.parse_args(argv)


def bench_command(args: argparse.Namespace, features: list[str], seed: int, out: Path) -> list[str]:
    """The `mito bench` command of one seed."""
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    cmd = [sys.executable, "-m", "mito", "bench", "--store", args.store, "--task", args.task, "--features", ",".join(features)]
    cmd += ["--heads", ",".join(heads), "--seed", str(seed), "--folds", str(args.folds), "--n-boot", str(args.n_boot)]
    cmd += ["--jobs", str(args.jobs), "--no-umap", "--out", str(out)]
    cmd += ["--shift-column", args.shift_column] if args.shift_column else []
    cmd += ["--noise", args.noise] if args.noise else []
    cmd += ["--feature-search"] if args.feature_search else []
    for h in heads:  # the seed also initialises the heads, not only the folds' early-stopping parts
        cmd += ["--param", f"{h}.seed={seed}"]
    return cmd


def stale_reason(args: argparse.Namespace, features: list[str], seed: int, folder: Path) -> str | None:
    """Why a finished seed folder is not this command's run (other features, heads, folds, seed, task, shift column or
    search), else None: resuming from it would silently pool only the configurations both runs share."""
    cfg = json.loads((folder / "leaderboard.json").read_text()).get("meta", {}).get("config") or {}
    want = {
        "features": features,
        "heads": [h.strip() for h in args.heads.split(",") if h.strip()],
        "n_folds": args.folds,
        "seed": seed,
        "tasks": [args.task],
        "shift_column": args.shift_column or None,
        "feature_search": bool(args.feature_search),
    }
    recorded = {"feature_search": False, **cfg}  # runs from before bench --feature-search have no such key
    diff = [k for k, v in want.items() if recorded.get(k) != v]
    return f"{folder} holds a bench run with other {', '.join(diff)}: remove it or pass another --out" if diff else None


def _fmt(v: Any, sd: Any = None) -> str:
    return number(v) if sd is None or math.isnan(sd) or number(v) == "–" else f"{number(v)} ± {number(sd)}"


def markdown(table: pd.DataFrame) -> str:
    """One Markdown table per (task, held-out group): mean ± sd over seeds, AUROC, ensemble, deltas vs the reference."""
    out = []
    for (task, held), g in table.groupby(["task", "held_out"], sort=False):
        metric = str(g["main_metric"].iloc[0])
        n = int(g["n_seeds"].iloc[0])
        out.append(
            f"### {task}, {'in-domain' if not held else 'trained without ' + held + ', tested on ' + held} ({int(g['n_test'].iloc[0])} test tiles)\n"
        )
        out.append(
            f"| configuration | {metric} (mean ± sd, {n} seeds) | AUROC | ensemble of the fold models | Δ vs ref [95% CI] p | ensemble Δ vs ref, p |"
        )
        out.append("|---|---|---|---|---|---|")
        for r in g.to_dict("records"):
            name = (
                f"{r['backbone']} {r['features']} {r['head']}"
                + (f" noise {r['noise']:g}" if r["noise"] else "")
                + (" **(ref)**" if r["reference"] else "")
            )
            delta = (
                "–"
                if math.isnan(r["delta_vs_ref"])
                else f"{r['delta_vs_ref']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] p {p_value(r['p_vs_ref'])}"
            )
            ens = "–" if math.isnan(r["ens_delta_vs_ref"]) else f"{r['ens_delta_vs_ref']:+.3f}, p {p_value(r['ens_p_vs_ref'])}"
            cells = [
                name,
                _fmt(r[metric], r[f"{metric}_sd"]),
                _fmt(r["auroc"], r["auroc_sd"]),
                _fmt(r[f"ens_{metric}"], r[f"ens_{metric}_sd"]),
                delta,
                ens,
            ]
            out.append("| " + " | ".join(cells) + " |")
        notes = sorted({str(x) for x in g["note"] if x})
        out += [*(f"\n{x}" for x in notes), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the seeds (skipping finished ones), pool them and write the tables."""
    args = parse_args(argv)
    features = [f.strip() for f in args.features.split(";") if f.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    out = Path(args.out)
    ref = args.reference or f"{features[0]},{'mlp' if 'mlp' in heads else heads[0]}"
    try:
        reference = Reference.parse(ref)  # before hours of benches
    except MitoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folders = []
    for k in seeds:
        folder = out / f"seed{k}"
        folders.append(folder)
        cmd = bench_command(args, features, k, folder)
        if args.dry_run:
            print(" ".join(cmd))
        elif (folder / "leaderboard.json").is_file():
            why = stale_reason(args, features, k, folder)
            if why:
                print(f"error: {why}", file=sys.stderr)
                return 2
        else:
            print(f"seed {k}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            if subprocess.run(cmd).returncode:
                return 1
    if args.dry_run:
        return 0
    try:
        table = pool_benches(folders, reference, n_boot=args.n_boot)
    except MitoError as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    table.to_csv(out / "ceiling.csv", index=False, float_format="%.6g")
    (out / "ceiling.json").write_text(
        json.dumps({"reference": ref, "seeds": seeds, "rows": json.loads(table.to_json(orient="records"))}, indent=1)
    )
    pooled_figure(table, out / "ceiling.png")
    md = f"Reference: {ref}; seeds {', '.join(map(str, seeds))}.\n\n" + markdown(table)
    (out / "ceiling.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
