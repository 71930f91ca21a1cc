"""`mito demo`: the whole pipeline on the bundled AMi-Br sample with the default backbone."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

DEMO_ZOOMS = [1.0, 2.0]
DEMO_COLORS = ["rgb"]


def sample_dir() -> Path:
    """The bundled sample: 300 real AMi-Br crops in ImageFolder layout with the published metadata."""
    return Path(str(resources.files("mito") / "data" / "sample" / "amibr"))


def run_demo(
    out: Path, device: str = "auto", console: Console | None = None, show_store: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Extract the sample, fit a head, bench; returns what each stage produced (``show_store`` prints the store's info)."""
    from mito.cache import open_store
    from mito.extract import ExtractConfig, extract

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    store = out / "sample.zarr"
    console.rule("1. extract: 300 AMi-Br crops -> efficientnet_lite0, zooms 1 and 2")
    summary = extract(
        ExtractConfig(
            source=str(sample_dir()), store=str(store), task="mitosis", zooms=DEMO_ZOOMS, colors=DEMO_COLORS, device=device
        )
    )
    with open_store(store) as s:
        info = s.info()
    if show_store is not None:
        show_store(info)
    result: dict[str, Any] = {"extract": summary, "store": str(store)}

    from mito.heads import fit_head, make_fit_config

    keys = [f"efficientnet_lite0:z{z:g}:{c}" for z in DEMO_ZOOMS for c in DEMO_COLORS]
    console.rule("2. fit-head: mlp on zooms 1+2, trained on the published train split, scored on its test split")
    cfg = make_fit_config(
        store=str(store), task="mitosis", head="mlp", features=keys, split_column="split",
        out=str(out / "model"), overwrite=True,
    )
    metrics = fit_head(cfg)
    console.print(
        f"{metrics['evaluated_on']} ({metrics['n_test'] or metrics['n_val']} crops): "
        + ", ".join(f"{k} {metrics[k]:.3f}" for k in ("balanced_accuracy", "auroc", "kappa", "weighted_f1"))
        + f"; trained in {metrics['train_seconds']:.2f} s -> {out / 'model'}"
    )
    result["fit_head"] = metrics

    from mito.bench import leaderboard_table, load_leaderboard, quick_bench

    console.rule("3. bench: a small leaderboard, a UMAP and the HTML report")
    report = quick_bench(store, out / "report", task="mitosis")
    console.print(leaderboard_table(load_leaderboard(out / "report").rows, top=6, compact=True))
    console.print(f"report: {report}")
    result["report"] = str(report)
    return result
