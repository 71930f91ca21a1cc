"""The AMi-Br few-shot learning curve: how many labelled tiles per class does a head need?

    python benchmarks/fewshot_amibr.py                                  # store, out and defaults below
    python benchmarks/fewshot_amibr.py --features efficientnet_lite0:z1:rgb --shots 1,4,16,all --draws 3

Runs the same thing as ``mito bench --few-shot`` (published split protocol: 5 slide-grouped folds of the train
split, every model scored on the whole test split) and writes OUT/ (leaderboard, report.html, mitosis_fewshot.png)
and OUT/summary.md (the README table).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mito.bench import BenchConfig, run_bench, save_leaderboard
from mito.bench.fewshot import curve_table, main_rows
from mito.report import build_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/work/runs/amibr.zarr")
    ap.add_argument("--out", default="runs/fewshot_amibr")
    ap.add_argument("--features", default="efficientnet_lite0:z1:rgb,efficientnet_lite0:z2:rgb+efficientnet_lite0:z2:gray")
    ap.add_argument("--heads", default="linear,mlp")
    ap.add_argument("--shots", default="1,2,4,8,16,32,64,all")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args()
    cfg = BenchConfig(
        store=a.store,
        tasks=["mitosis"],
        features=a.features.split(","),
        heads=a.heads.split(","),
        n_folds=a.folds,
        cv="split",
        n_jobs=a.jobs,
        n_boot=a.n_boot,
        few_shot=a.shots.split(","),
        few_shot_draws=a.draws,
    )
    t0 = time.perf_counter()
    lb = run_bench(cfg)
    seconds = time.perf_counter() - t0
    out = Path(a.out)
    save_leaderboard(lb, out)
    build_report(out)
    rows = lb.rows
    wide = curve_table(rows, "balanced_accuracy")
    lines = [
        "| feature set, head | " + " | ".join(f"K={c}" if c != "all" else "all" for c in wide.columns) + " |",
        "|---|" + "---|" * len(wide.columns),
    ]
    lines += [f"| {line} | " + " | ".join(str(v).replace(" [", "<br>[") for v in r) + " |" for line, r in wide.iterrows()]
    few = rows[rows["kind"] == "few-shot"]
    lines += [
        "",
        (
            f"{len(rows)} rows ({len(main_rows(rows))} normal), {len(few)} K-shot rows; {seconds:.0f} s wall for the whole run "
            f"(--jobs {a.jobs}); mean train seconds per K-shot fit {few['train_seconds'].mean():.2f}, per normal fit "
            f"{main_rows(rows)['train_seconds'].mean():.2f}; test tiles per fold {int(rows['n_test'].iloc[0])}."
        ),
        f"meta: {lb.meta.get('few_shot', {}).get('description', '')}",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
