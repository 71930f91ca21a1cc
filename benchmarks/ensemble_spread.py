"""Does an ensemble steady a head's balanced accuracy? Single mlp heads vs K=5 seed ensembles (fit-head --ensemble 5).

For each protocol (the published test split; MIDOG21 -> TUPAC16 and TUPAC16 -> MIDOG21 with fit-head's
--test-group), run ``fit-head --ensemble 5 --seed 5j`` for j = 0..R-1. Each run's 5 members are 5 single heads
(seeds 5j..5j+4, the run's split), so one pass gives 5R single heads and R ensembles trained the same way:

    python benchmarks/ensemble_spread.py --store /work/runs/amibr.zarr --runs 5

Prints a JSON line per protocol and a Markdown table (mean ± std over seeds of balanced accuracy and AUROC).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mito.heads import fit_head, make_fit_config

PROTOCOLS = {
    "published test split": {},
    "MIDOG21 -> TUPAC16": {"test_group": "dataset=TUPAC16"},
    "TUPAC16 -> MIDOG21": {"test_group": "dataset=MIDOG21"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--head", default="mlp")
    ap.add_argument("--runs", type=int, default=5, help="ensembles per protocol (each of K heads)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--features", default=None, help="variant keys, comma-separated (default: fit-head's default)")
    args = ap.parse_args()
    table = []
    for name in args.protocols.split(","):
        single = {"balanced_accuracy": [], "auroc": []}
        ens = {"balanced_accuracy": [], "auroc": []}
        t0 = time.perf_counter()
        for j in range(args.runs):
            cfg = make_fit_config(
                store=args.store,
                head=args.head,
                ensemble=str(args.k),
                seed=args.k * j,
                **PROTOCOLS[name],
                features=args.features.split(",") if args.features else [],
            )
            m = fit_head(cfg)
            for metric in single:
                single[metric] += m["ensemble"][f"member_{metric}"]
                ens[metric].append(float(m[metric]))
        row = {
            "protocol": name,
            "head": args.head,
            "k": args.k,
            "n_single": len(single["balanced_accuracy"]),
            "n_ensembles": len(ens["balanced_accuracy"]),
            **{f"single_{m}": (float(np.mean(v)), float(np.std(v, ddof=1))) for m, v in single.items()},
            **{f"ensemble_{m}": (float(np.mean(v)), float(np.std(v, ddof=1))) for m, v in ens.items()},
            "single_balanced_accuracy_range": (float(np.min(single["balanced_accuracy"])), float(np.max(single["balanced_accuracy"]))),
            "ensemble_balanced_accuracy_range": (float(np.min(ens["balanced_accuracy"])), float(np.max(ens["balanced_accuracy"]))),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        table.append(row)
    print(f"\n| protocol | single {args.head}: bal acc | K={args.k} ensemble: bal acc | single AUROC | ensemble AUROC |")
    print("|---|---|---|---|---|")
    for r in table:
        f = lambda t: f"{t[0]:.3f} ± {t[1]:.3f}"  # noqa: E731
        print(
            f"| {r['protocol']} | {f(r['single_balanced_accuracy'])} (n={r['n_single']}) | {f(r['ensemble_balanced_accuracy'])} (n={r['n_ensembles']}) "
            f"| {f(r['single_auroc'])} | {f(r['ensemble_auroc'])} |"
        )


if __name__ == "__main__":
    main()
