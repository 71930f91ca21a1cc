"""Every head on AMi-Br with the default backbone: train on the published train split, test on its test split.

    python benchmarks/heads.py --store /work/runs/amibr.zarr            # the README table
    python benchmarks/heads.py --heads mlp,logreg --seeds 0 --sets rgb   # a quick look

For each feature set (rgb = z1:rgb; rgb+gray = z1:rgb,z1:gray; multi-zoom = z1:rgb,z2:rgb; multi-zoom+gray = all
four; z2 rgb+gray = z2:rgb,z2:gray, the central half of the crop), head and
noise setting, fit_head runs once per seed (the seed moves the slide-grouped validation carve-out used for early
stopping, the initialisation, batches and noise draws) and the table shows the mean (and sd) of the test metrics.
Validation balanced accuracy is printed too: choose settings by it, not by the test columns.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from mito.heads import HEAD_NAMES, FitConfig, fit_head
from mito.store import open_store

METRICS = ("balanced_accuracy", "auroc", "kappa", "weighted_f1")


def feature_sets(backbone: str) -> dict[str, list[str]]:
    """The compared feature sets for one backbone."""
    z = lambda zoom, color: f"{backbone}:z{zoom}:{color}"  # noqa: E731
    return {
        "rgb": [z(1, "rgb")],
        "rgb+gray": [z(1, "rgb"), z(1, "gray")],
        "multi-zoom": [z(1, "rgb"), z(2, "rgb")],
        "multi-zoom+gray": [z(1, "rgb"), z(1, "gray"), z(2, "rgb"), z(2, "gray")],
        "z2 rgb+gray": [z(2, "rgb"), z(2, "gray")],
    }


def run(store: str, features: list[str], head: str, params: dict[str, Any], seeds: list[int], **cfg: Any) -> dict[str, Any]:
    """fit_head once per seed; mean and sd of test metrics, mean val balanced accuracy and train seconds."""
    rows = []
    for seed in seeds:
        m = fit_head(
            FitConfig(store=store, task="mitosis", head=head, features=features, split_column="split", seed=seed, head_params=params, **cfg)
        )
        rows.append({**{k: m[k] for k in METRICS}, "val_ba": m["val"]["balanced_accuracy"], "train_s": m["train_seconds"]})
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out.update({f"{k}_sd": float(np.std([r[k] for r in rows])) for k in METRICS})
    out["n_seeds"] = len(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/work/runs/amibr.zarr")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--heads", default=",".join(HEAD_NAMES))
    ap.add_argument("--sets", default="rgb,rgb+gray,multi-zoom,multi-zoom+gray,z2 rgb+gray")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--noise", type=float, default=0.5, help="Sigma of the 'with noise' rows.")
    ap.add_argument("--noise-mode", default="global")
    ap.add_argument("--standardize", action="store_true")
    ap.add_argument("--json", default=None, help="Also write all results here.")
    args = ap.parse_args()

    with open_store(args.store) as s:
        n, have = s.n_tiles, set(s.variants)
        counts = s.tiles.groupby("split")["mitosis"].value_counts().to_dict()
    sets = {k: v for k, v in feature_sets(args.backbone).items() if k in args.sets.split(",")}
    missing = sorted({f for v in sets.values() for f in v} - have)
    if missing:
        raise SystemExit(f"{args.store} lacks {', '.join(missing)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    heads = args.heads.split(",")
    print(f"store {args.store}: {n} tiles; split x label counts {counts}; seeds {seeds}")
    print(f"noise rows: sigma {args.noise} ({args.noise_mode}); standardize={args.standardize}\n")
    fit_head(
        FitConfig(
            store=args.store, task="mitosis", head="mlp", features=sets[next(iter(sets))], split_column="split", head_params={"epochs": 1}
        )
    )  # warm-up: torch's first optimizer pays one-off imports
    print("| features | head | noise | bal. acc | AUROC | kappa | weighted F1 | train s | val bal. acc |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for set_name, feats in sets.items():
        for head in heads:
            for noise in (0.0, args.noise):
                params = {"noise": noise, "noise_mode": args.noise_mode} if noise else {}
                t0 = time.perf_counter()
                r = run(args.store, feats, head, params, seeds, standardize=args.standardize)
                results.append({"features": set_name, "head": head, "noise": noise, **r, "wall_s": time.perf_counter() - t0})
                cells = " | ".join(f"{r[k]:.3f} ± {r[k + '_sd']:.3f}" if len(seeds) > 1 else f"{r[k]:.3f}" for k in METRICS)
                print(f"| {set_name} | {head} | {noise:g} | {cells} | {r['train_s']:.2f} | {r['val_ba']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"store": args.store, "seeds": seeds, "noise_mode": args.noise_mode, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
