"""`mito demo`: the whole pipeline on the bundled AMi-Br sample with the default backbone."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

DEMO_BACKBONE = "efficientnet_lite0"
DEMO_ZOOMS = [1.0, 2.0]
DEMO_COLORS = ["rgb"]


def sample_dir() -> Path:
    """The bundled sample: 300 real AMi-Br crops in ImageFolder layout with the published metadata."""
    return Path(str(resources.files("mito") / "data" / "sample" / "amibr"))


def demo_features() -> list[str]:
    """The demo's one feature set: every variant it extracts, concatenated (fit-head, bench and the UMAP all use it)."""
    return [f"{DEMO_BACKBONE}:z{z:g}:{c}" for z in DEMO_ZOOMS for c in DEMO_COLORS]


def run_demo(
    out: Path, device: str = "auto", console: Console | None = None, show_store: Callable[[dict[str, Any]], None] | None = None,
    source: Path | None = None,
) -> dict[str, Any]:
    """Extract the sample (or ``source``, an AMi-Br-shaped folder), fit a head, bench the same features; returns what
    each stage produced (``show_store`` prints the store's info)."""
    from mito.cache import open_store
    from mito.extract import ExtractConfig, extract

    console = console or Console()
    src = Path(source) if source is not None else sample_dir()
    out.mkdir(parents=True, exist_ok=True)
    store = out / "sample.zarr"
    keys = demo_features()
    shown = " + ".join(k.split(":", 1)[1] for k in keys)
    console.rule(f"1. extract: the AMi-Br crops in {src.name}/ -> {DEMO_BACKBONE}, zooms {' and '.join(f'{z:g}' for z in DEMO_ZOOMS)}")
    summary = extract(
        ExtractConfig(
            source=str(src), store=str(store), task="mitosis", zooms=DEMO_ZOOMS, colors=DEMO_COLORS, device=device,
            backbones=[DEMO_BACKBONE],
        )
    )
    with open_store(store) as s:
        info = s.info()
    if show_store is not None:
        show_store(info)
    result: dict[str, Any] = {"extract": summary, "store": str(store)}

    from mito.heads import fit_head, make_fit_config

    console.rule(f"2. fit-head: mlp on {shown} (one feature set for every step), trained on the published train split, scored on its test split")
    cfg = make_fit_config(
        store=str(store), task="mitosis", head="mlp", features=keys, split_column="split",
        out=str(out / "model"), overwrite=True,
    )
    metrics = fit_head(cfg)
    console.print(
        f"{metrics['evaluated_on']} ({metrics['n_test'] or metrics['n_val']} crops): "
        + ", ".join(f"{k} {metrics[k]:.3f}" for k in ("balanced_accuracy", "auroc", "kappa", "weighted_f1"))
        + f"; trained in {metrics['train_seconds']:.2f} s -> {out / 'model'}",
        highlight=False,
    )
    result["fit_head"] = metrics

    from mito.bench import leaderboard_table, load_leaderboard, quick_bench

    console.rule(f"3. bench: logreg, knn and mlp on the same features ({shown}), their UMAP and the HTML report")
    report = quick_bench(store, out / "report", task="mitosis", features=keys)
    rows = load_leaderboard(out / "report").rows
    console.print(leaderboard_table(rows, top=6, compact=True))
    mlp = rows[rows["head"] == "mlp"].iloc[0]
    console.print(
        f"fit-head's single mlp: {metrics['balanced_accuracy']:.3f} balanced accuracy on the {metrics['n_test']} test crops; "
        f"bench's mlp row: {mlp['balanced_accuracy']:.3f}, the mean of 3 mlps, each early-stopped on another third of the "
        "train split, on the same test crops. Same features and test crops: the gap is training randomness (seeds and "
        "validation carve-outs), which the bench's spread (±) measures.",
        highlight=False,
    )
    console.print(f"report: {report}", highlight=False)
    result["report"] = str(report)
    result["umap_features"] = keys
    return result
