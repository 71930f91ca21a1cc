"""`mito demo`: the whole pipeline on the bundled AMi-Br sample with the default backbone."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

DEMO_ZOOMS = [1.0, 2.0]
DEMO_COLORS = ["rgb"]


def sample_dir() -> Path:
    """The bundled sample: 300 real AMi-Br crops in ImageFolder layout with the published metadata."""
    return Path(str(resources.files("mito") / "data" / "sample" / "amibr"))


def run_demo(out: Path, device: str = "auto", console: Console | None = None) -> dict[str, Any]:
    """Extract the sample, then run every later stage that is installed; returns what each stage produced."""
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
    from mito.cli import _print_info

    _print_info(info)
    return {"extract": summary, "store": str(store)}
