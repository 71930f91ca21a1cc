"""How a store's features were extracted, read from the specs its extract runs recorded (mito.store.Store.runs): what a
model keeps so that `mito predict <folder>` embeds new tiles the same way. Stores made before runs were recorded fall
back to the variants' provenance (mito.heads.train.extract_settings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mito.store import parse_variant

PREPROCESSING = ("fit", "pad_mode", "input_size")  # how every tile is turned into the backbone's input
SLIDE_TILING = ("mpp", "tile_px", "tile_um", "stride", "min_tissue")  # how a whole slide is cut into tiles


def _made_by(run: dict[str, Any], backbone: str, zoom: float, color: str) -> bool:
    spec = run.get("spec") or {}
    return (
        run.get("job") == "extract"
        and backbone in (spec.get("backbones") or [])
        and any(float(z) == zoom for z in spec.get("zooms") or [])
        and color in (spec.get("colors") or [])
    )


def _settings(spec: dict[str, Any], backbone: str) -> dict[str, Any]:
    out: dict[str, Any] = {"backbones": [backbone], "zooms": [], "colors": [], **{k: spec.get(k) for k in PREPROCESSING}}
    if spec.get("points"):  # crops of tile_size px around points of a slide
        out["tile_size"] = spec.get("tile_size")
    if spec.get("mpp") is not None:  # micron tiles over the tissue of whole slides
        out.update({k: spec[k] for k in SLIDE_TILING if spec.get(k) is not None})
    return out


def recorded_extract_settings(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]] | None:
    """One ExtractConfig-shaped dict per backbone of ``keys`` (zooms and colours: those ``keys`` use) from the latest
    recorded extract run that made each variant; None when a variant was made by no recorded run (an older store, an
    import) or one backbone's variants come from runs that preprocessed differently."""
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        v = parse_variant(key)
        run = next((r for r in reversed(runs) if _made_by(r, v.backbone, v.zoom, v.color)), None)
        if run is None:
            return None
        mine = _settings(run["spec"], v.backbone)
        cfg = out.setdefault(v.backbone, mine)
        if any(cfg.get(k) != mine.get(k) for k in mine if k not in ("zooms", "colors")):
            return None  # variants of one backbone made differently: the provenance path names the clash
        if v.zoom not in cfg["zooms"]:
            cfg["zooms"].append(v.zoom)
        if v.color not in cfg["colors"]:
            cfg["colors"].append(v.color)
    return list(out.values())


def model_extract_settings(
    runs: Sequence[dict[str, Any]], keys: Sequence[str], provenance: Callable[[], list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], str]:
    """What a model records of how its features were extracted, and from where: the store's recorded extract specs,
    else (an older store) ``provenance()``, the settings read back from the variants."""
    recorded = recorded_extract_settings(runs, keys)
    if recorded is not None:
        return recorded, "the store's recorded extract runs"
    return provenance(), "the variants' provenance"
