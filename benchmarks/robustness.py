"""Robustness on AMi-Br with the default backbone: feature-noise modes and colour variants, in-domain and across cohorts.

    python -m mito extract ../shared/data/amibr --store runs/views.zarr --task mitosis --zooms 1 \\
        --colors rgb,gray,hema --augment hed:4,flip          # (adds to a copy of the default store)
    python benchmarks/robustness.py --store runs/views.zarr --out runs/robustness.json

Rows: the mlp head with its defaults trained on z1 features: rgb with noise none / Gaussian (sigma 0.5 global, the
README's tested value) / views / view-cov, and rgb+gray, rgb+hema without noise (plus rgb+gray with views / view-cov).
Protocols: the published split (train -> test) and leave-one-cohort-out (all MIDOG21 tiles -> all TUPAC16 tiles,
and back); the validation rows for early stopping are carved from the training side by slide group (seeded).
Each cell is the mean over seeds; p is the paired bootstrap (mito.bench.stats.paired_bootstrap: both rows scored on
the same resampled test tiles, the seeds as folds) against the row's reference: rgb/none for the noise modes on rgb
and for rgb+gray; rgb+gray/none (the default colours, no noise: the current default) for rgb+hema and the noise modes
on rgb+gray. Every fit goes through mito.heads.fit_on_rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.stats import paired_bootstrap
from mito.core.metrics import classification_metrics
from mito.core.tasks import resolve_task
from mito.datasets import PROXY_TASKS
from mito.heads import fit_on_rows, make_head
from mito.heads.split import make_split
from mito.store import open_store

GAUSS = {"noise": 0.5, "noise_mode": "global"}
CONFIGS: dict[str, tuple[str, dict[str, Any], str]] = {  # name: (colour set, head params, reference row)
    "rgb / none": ("rgb", {}, "rgb / none"),
    "rgb / gaussian 0.5": ("rgb", GAUSS, "rgb / none"),
    "rgb / views": ("rgb", {"noise_mode": "views"}, "rgb / none"),
    "rgb / view-cov": ("rgb", {"noise_mode": "view-cov"}, "rgb / none"),
    "rgb+gray / none": ("rgb+gray", {}, "rgb / none"),
    "rgb+hema / none": ("rgb+hema", {}, "rgb+gray / none"),
    "rgb+gray / views": ("rgb+gray", {"noise_mode": "views"}, "rgb+gray / none"),
    "rgb+gray / view-cov": ("rgb+gray", {"noise_mode": "view-cov"}, "rgb+gray / none"),
}
METRICS = ("balanced_accuracy", "auroc")


def protocols(tiles: pd.DataFrame) -> dict[str, pd.Series]:
    """Name -> a train/test column: the published split, and each cohort (dataset) trained on, the other tested."""
    out = {"published": tiles["split"].where(tiles["split"].isin(["train", "test"]))}
    for a, b in (("MIDOG21", "TUPAC16"), ("TUPAC16", "MIDOG21")):
        out[f"{a}->{b}"] = pd.Series(np.select([tiles["dataset"] == a, tiles["dataset"] == b], ["train", "test"], None), index=tiles.index)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/work/runs/views.zarr")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated row names (see CONFIGS)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default=None, help="write the table (and every seed's metrics) as JSON here")
    ap.add_argument(
        "--cache",
        default=None,
        help="folder keeping each fit's test probabilities (keyed by the store's tile list, "
        "protocol, row and seed), so a second run, e.g. on a copy of the store with more variants, refits nothing",
    )
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    z = lambda c: f"{args.backbone}:z1:{c}"  # noqa: E731
    sets = {"rgb": [z("rgb")], "rgb+gray": [z("rgb"), z("gray")], "rgb+hema": [z("rgb"), z("hema")]}

    results: dict[str, dict[str, Any]] = {}  # protocol -> config -> {"proba": [seed arrays], "metrics": [...]}
    with open_store(args.store) as store:
        tiles = store.tiles
        spec = resolve_task(tiles, "mitosis", PROXY_TASKS)
        labels = spec.labels(tiles)
        usable = labels.notna().to_numpy() & ~store.unreadable
        y_all = labels.to_numpy()
        for proto, side_col in protocols(tiles).items():
            t2 = tiles.assign(_side=side_col)
            results[proto] = {}
            test_rows = None
            tag = store.meta.get("tile_list_sha256", "")[:16]
            for name in names:
                colours, params, _ = CONFIGS[name]
                rec: dict[str, Any] = {"proba": [], "metrics": [], "seconds": []}
                for seed in seeds:
                    side = make_split(t2, labels, usable & side_col.notna().to_numpy(), "_side", "group", 0.2, 0.2, seed)
                    parts = {p: np.flatnonzero(side == p) for p in ("train", "val", "test")}
                    test_rows = parts["test"] if test_rows is None else test_rows
                    assert np.array_equal(test_rows, parts["test"])  # every row and seed scores the same tiles
                    cached = (
                        Path(args.cache) / f"{tag}_{proto}_{name}_{seed}.npz".replace(" ", "").replace("/", "_") if args.cache else None
                    )
                    t0 = time.perf_counter()
                    if cached is not None and cached.is_file():
                        z_ = np.load(cached, allow_pickle=False)
                        yt, proba, classes = z_["y"].astype(object), z_["proba"], z_["classes"].astype(object)
                    else:
                        head = make_head("mlp", seed=seed, **params)
                        fit = fit_on_rows(store, sets[colours], parts, y_all, head, seed=seed, stream=False)
                        (yt, proba), classes = fit.scored["test"], head.classes_
                        if cached is not None:
                            cached.parent.mkdir(parents=True, exist_ok=True)
                            np.savez(cached, y=np.asarray(yt).astype(str), proba=proba, classes=np.asarray(classes).astype(str))
                    m = classification_metrics(yt, proba, classes)
                    rec["proba"].append(proba)
                    rec["metrics"].append({k: m[k] for k in METRICS})
                    rec["seconds"].append(time.perf_counter() - t0)
                    rec["classes"], rec["y"] = classes, yt
                    print(
                        f"{proto:18s} {name:22s} seed {seed}: bal acc {m['balanced_accuracy']:.3f} AUROC {m['auroc']:.3f} "
                        f"({rec['seconds'][-1]:.1f} s, {len(parts['train'])}/{len(parts['val'])}/{len(parts['test'])})",
                        flush=True,
                    )
                results[proto][name] = rec

    table = []
    for proto, recs in results.items():
        for name, rec in recs.items():
            ref = CONFIGS[name][2]
            row: dict[str, Any] = {"protocol": proto, "config": name, "reference": ref, "n_test": len(rec["y"])}
            for k in METRICS:
                row[k] = float(np.mean([m[k] for m in rec["metrics"]]))
                row[f"{k}_sd"] = float(np.std([m[k] for m in rec["metrics"]]))
                if ref in recs and ref != name:
                    n_s = len(rec["proba"])
                    fold = np.repeat(np.arange(n_s), len(rec["y"]))
                    tile = np.tile(np.arange(len(rec["y"])), n_s)
                    res = paired_bootstrap(
                        np.tile(rec["y"], n_s),
                        np.concatenate(rec["proba"]),
                        np.concatenate(recs[ref]["proba"]),
                        rec["classes"],
                        k,
                        fold=fold,
                        tile=tile,
                        n_boot=args.n_boot,
                        seed=0,
                    )
                    row[f"{k}_delta"], row[f"{k}_p"] = res.delta, res.p_value
            row["seconds"] = float(np.mean(rec["seconds"]))
            table.append(row)
    df = pd.DataFrame(table)
    pd.set_option("display.width", 200)
    print()
    for proto in results:
        d = df[df["protocol"] == proto]
        print(
            f"== {proto} (n_test {int(d['n_test'].iloc[0])}, mean of {len(seeds)} seeds; delta and paired-bootstrap p vs the reference row)"
        )
        for _, r in d.iterrows():
            cells = []
            for k, short in (("balanced_accuracy", "bal acc"), ("auroc", "AUROC")):
                cmp = f" (d {r[f'{k}_delta']:+.3f}, p {r[f'{k}_p']:.3f})" if pd.notna(r.get(f"{k}_p")) else ""
                cells.append(f"{short} {r[k]:.3f}±{r[f'{k}_sd']:.3f}{cmp}")
            print(f"  {r['config']:22s} " + "   ".join(cells) + (f"   vs {r['reference']}" if r["reference"] != r["config"] else ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "table": table,
                    "seeds": seeds,
                    "store": args.store,
                    "per_seed": {p: {n: r["metrics"] for n, r in recs.items()} for p, recs in results.items()},
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
