"""MIDOG21 -> TUPAC16 and back on AMi-Br: `mito bench --shift-column dataset`, printed as a Markdown table.

    python benchmarks/shift_amibr.py --store /work/runs/amibr.zarr --out /tmp/shift-bench --heads linear,mlp,lightgbm

Besides the leaderboard's in-domain score (published split: trained on both cohorts, tested on the whole test
split) and gap, it prints the in-domain model's score on the held-out cohort's own test-split tiles (from
predictions.npz), so "trained without that cohort" is also compared on tiles of that cohort.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mito.bench import BenchConfig, classification_metrics, load_leaderboard, run_bench, save_leaderboard
from mito.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heads", default="linear,mlp,lightgbm")
    ap.add_argument("--features", default=None, help="variant keys joined by + (default: all of the first backbone, as fit-head)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="reuse --out when it has a leaderboard")
    args = ap.parse_args()
    with open_store(args.store) as s:
        site = s.tiles["dataset"].astype(str).to_numpy()
        complete = [k for k in s.variants if s.is_complete(k)]
    features = args.features or "+".join(k for k in complete if k.split(":")[0] == complete[0].split(":")[0])
    out = Path(args.out)
    t0 = time.perf_counter()
    if not (args.keep and (out / "leaderboard.json").is_file()):
        cfg = BenchConfig(
            store=args.store,
            tasks=["mitosis"],
            features=[features],
            heads=args.heads.split(","),
            n_folds=args.folds,
            shift_column="dataset",
            n_jobs=args.jobs,
            n_boot=1000,
        )
        save_leaderboard(run_bench(cfg), out)
    lb = load_leaderboard(out)
    rows = lb.rows
    print(f"bench: {time.perf_counter() - t0:.0f} s; features {features}")
    groups = sorted(g for g in rows["held_out"].unique() if g)
    print(
        "\n| head | in-domain bal. acc (AUROC) | "
        + " | ".join(f"in-domain on {g} test tiles | trained without {g}, tested on all {g} | gap" for g in groups)
        + " |"
    )
    print("|---" * (2 + 3 * len(groups)) + "|")
    for head in args.heads.split(","):
        dom = rows[(rows["head"] == head) & (rows["held_out"] == "")].iloc[0]
        cells = [head, f"{dom['balanced_accuracy']:.3f} ({dom['auroc']:.3f})"]
        p = lb.predictions[dom["row_id"]]
        for g in groups:
            keep = site[p["row"]] == g
            per_fold = [
                classification_metrics(
                    np.asarray(dom["classes"])[p["y"][keep & (p["fold"] == f)]], p["proba"][keep & (p["fold"] == f)], dom["classes"]
                )
                for f in np.unique(p["fold"])
            ]
            on_g = np.mean([m["balanced_accuracy"] for m in per_fold]), np.mean([m["auroc"] for m in per_fold])
            sh = rows[(rows["head"] == head) & (rows["held_out"] == g)].iloc[0]
            cells += [
                f"{on_g[0]:.3f} ({on_g[1]:.3f})",
                f"{sh['balanced_accuracy']:.3f} ± {sh['balanced_accuracy_std']:.3f} ({sh['auroc']:.3f}), CI {sh['ci_low']:.3f}-{sh['ci_high']:.3f}",
                f"{sh['gap']:+.3f}",
            ]
        print("| " + " | ".join(cells) + " |")
    for g in groups:
        sh = rows[rows["held_out"] == g].iloc[0]
        print(
            f"held out {g}: n_train {sh['n_train']}, n_val {sh['n_val']}, n_test {sh['n_test']}, train s/fold (best row) {sh['train_seconds']:.1f}"
        )


if __name__ == "__main__":
    main()
