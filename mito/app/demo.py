"""`mito demo`: the whole pipeline on the bundled AMi-Br sample with the default backbone (and ``--slides``: on toy
slides built from it). Each step tells what it does and what came out through ``say`` (the CLI prints it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.app.predict import predict_slides
from mito.bench import BenchConfig, BenchError, load_leaderboard, run_bench, save_leaderboard
from mito.core.errors import MitoError
from mito.core.io import safe_name
from mito.extract import ExtractConfig, extract
from mito.heads import fit_head, fit_slide_head, make_fit_config, make_slide_fit_config, tiles_csv_path
from mito.heads.predict import agreement, agreement_text
from mito.report import build_report, leaderboard_table, qc_store, umap_plot
from mito.store import is_view, open_store
from mito.wsi.writer import mosaic, write_geojson, write_svs


@dataclass(frozen=True)
class Heading:
    """The title of a demo step (the CLI draws it as a rule)."""

    text: str


@dataclass(frozen=True)
class Command:
    """The mito command a demo step equals (the CLI prints it whole, never cut)."""

    text: str


Say = Callable[[Any], None]  # told a Heading, a Command, a line of text (rich markup) or a rich renderable


def _silent(_: Any) -> None:
    return None


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
    out: Path,
    device: str = "auto",
    say: Say = _silent,
    show_store: Callable[[dict[str, Any]], None] | None = None,
    source: Path | None = None,
) -> dict[str, Any]:
    """Extract the sample (or ``source``, an AMi-Br-shaped folder), fit a head, bench the same features; returns what
    each stage produced (``show_store`` is given the store's info)."""
    src = Path(source) if source is not None else sample_dir()
    out.mkdir(parents=True, exist_ok=True)
    store = out / "sample.zarr"
    keys = demo_features()
    say(Heading(f"1. extract: AMi-Br crops -> {DEMO_BACKBONE}, zooms {' and '.join(f'{z:g}' for z in DEMO_ZOOMS)}"))
    summary = extract(
        ExtractConfig(
            source=str(src),
            store=str(store),
            task="mitosis",
            zooms=DEMO_ZOOMS,
            colors=DEMO_COLORS,
            device=device,
            backbones=[DEMO_BACKBONE],
        )
    )
    with open_store(store) as s:
        info = s.info()
    if show_store is not None:
        show_store(info)
    result: dict[str, Any] = {"extract": summary, "store": str(store)}
    result["fit_head"] = metrics = _demo_fit(store, out, keys, say)
    result["report"] = str(_demo_bench(store, out, keys, metrics, say))
    result["umap_features"] = keys
    return result


def _demo_fit(store: Path, out: Path, keys: list[str], say: Say) -> dict[str, Any]:
    """Step 2 of the demo: fit-head's mlp on the demo's features; its metrics."""
    shown = " + ".join(k.split(":", 1)[1] for k in keys)
    say(Heading(f"2. fit-head: mlp on {shown}"))
    say(f"one feature set for every step ({shown}, concatenated); trained on the published train split, scored on its test split")
    cfg = make_fit_config(
        store=str(store),
        task="mitosis",
        head="mlp",
        features=keys,
        split_column="split",
        out=str(out / "model"),
        overwrite=True,
    )
    metrics = fit_head(cfg)
    say(
        f"{metrics['evaluated_on']} ({metrics['n_test'] or metrics['n_val']} crops): "
        + ", ".join(f"{k} {metrics[k]:.3f}" for k in ("balanced_accuracy", "auroc", "kappa", "weighted_f1"))
        + f"; trained in {metrics['train_seconds']:.2f} s -> {out / 'model'}"
    )
    return metrics


def _demo_bench(store: Path, out: Path, keys: list[str], metrics: dict[str, Any], say: Say) -> Path:
    """Step 3 of the demo: a small bench of the same features, set against fit-head's mlp; the report's path."""
    shown = " + ".join(k.split(":", 1)[1] for k in keys)
    say(Heading("3. bench: a small leaderboard, a UMAP and the HTML report"))
    say(f"logreg, knn and mlp on the same features ({shown}), 3 models each; the UMAP draws them too")
    report = quick_bench(store, out / "report", task="mitosis", features=keys)
    rows = load_leaderboard(out / "report").rows
    say(leaderboard_table(rows, top=6, compact=True))
    mlp = rows[rows["head"] == "mlp"].iloc[0]
    say(
        f"fit-head's single mlp: {metrics['balanced_accuracy']:.3f} balanced accuracy on the {metrics['n_test']} test crops; "
        f"bench's mlp row: {mlp['balanced_accuracy']:.3f}, the mean of 3 mlps, each early-stopped on another third of the "
        "train split, on the same test crops. Same features and test crops: the gap is training randomness (seeds and "
        "validation carve-outs), which the bench's spread (±) measures."
    )
    say(f"report: {report}")
    return report


# ---------------------------------------------------------------- mito demo --slides

SLIDE_MPP = 0.25  # the crops' own resolution (AMi-Br crops are 40x scans)
CROP_PX = 128  # one crop = one cell of a toy slide = one tile
GRID = (4, 3)  # cells of tissue per slide (columns, rows)
PLANT = (3, 2)  # the block of Atypical crops in a positive slide: half its tissue (fewer and a head on 12 slides learns nothing)
MARGIN = 128  # white glass around the tissue
MIN_TISSUE = 0.1  # keep every crop, those with white lumen too (the grid is aligned with the crops; glass tiles hold none)


def build_toy_slides(folder: Path, crops: Path, n_slides: int = 20, seed: int = 0) -> dict[str, Any]:
    """Write ``n_slides`` small pyramidal Aperio .svs slides of real crops (from ``crops``, an AMi-Br-shaped folder):
    every slide a block of Normal crops on white glass, every other one with a 3 x 2 block of Atypical crops planted
    at a seeded place; with a GeoJSON per slide (the planted region 'Atypical', the rest of the tissue 'Normal') and a
    slide manifest (path, diagnosis). Slides already there are kept (the layout is deterministic)."""
    pools = {label: sorted((crops / label).glob("*.jpg")) for label in ("Atypical", "Normal")}
    if not all(pools.values()):
        raise MitoError(f"{crops} needs Atypical/ and Normal/ folders of .jpg crops")
    rng = np.random.default_rng(seed)
    for label in pools:
        pools[label] = [pools[label][i] for i in rng.permutation(len(pools[label]))]
    used = dict.fromkeys(pools, 0)

    def take(label: str) -> Path:
        f = pools[label][used[label] % len(pools[label])]  # cycles only when the folder has fewer crops than cells
        used[label] += 1
        return f

    slides_dir, notes_dir = folder / "slides", folder / "annotations"
    slides_dir.mkdir(parents=True, exist_ok=True)
    notes_dir.mkdir(parents=True, exist_ok=True)
    gx, gy = GRID
    width, height = gx * CROP_PX + 2 * MARGIN, gy * CROP_PX + 2 * MARGIN
    tissue = (MARGIN, MARGIN, MARGIN + gx * CROP_PX, MARGIN + gy * CROP_PX)
    rows = []
    for i in range(n_slides):
        positive = i % 2 == 1
        px, py = int(rng.integers(0, gx - PLANT[0] + 1)), int(rng.integers(0, gy - PLANT[1] + 1))
        planted = (MARGIN + px * CROP_PX, MARGIN + py * CROP_PX, MARGIN + (px + PLANT[0]) * CROP_PX, MARGIN + (py + PLANT[1]) * CROP_PX)
        cells = []
        for cy in range(gy):
            for cx in range(gx):
                x0, y0 = MARGIN + cx * CROP_PX, MARGIN + cy * CROP_PX
                atyp = positive and px <= cx < px + PLANT[0] and py <= cy < py + PLANT[1]
                cells.append(((x0, y0, x0 + CROP_PX, y0 + CROP_PX), [take("Atypical" if atyp else "Normal")]))
        name = f"toy_{i:02d}_{'atypical' if positive else 'normal'}"
        path = slides_dir / f"{name}.svs"
        if not path.is_file():
            write_svs(path, mosaic(width, height, cells, CROP_PX), mpp=SLIDE_MPP)
        write_geojson(notes_dir / f"{name}.geojson", [("Atypical", planted), ("Normal", tissue)] if positive else [("Normal", tissue)])
        # relative to the manifest's folder, as extract reads a manifest (never to the cwd): the folder can move
        rows.append({"path": path.relative_to(folder).as_posix(), "diagnosis": "atypical" if positive else "normal"})
    manifest = folder / "slides.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return {
        "slides": slides_dir,
        "annotations": notes_dir,
        "manifest": manifest,
        "n_slides": n_slides,
        "size": (width, height),
        "planted": sum(r["diagnosis"] == "atypical" for r in rows),
    }


def run_slide_demo(
    out: Path, device: str = "auto", say: Say = _silent, source: Path | None = None, n_slides: int = 20, seed: int = 0
) -> dict[str, Any]:
    """`mito demo --slides`: build toy slides from the bundled crops, then extract -> slides qc -> fit-head --level slide
    -> predict with attention pictures; tells each step's equivalent command and where its output is."""
    out.mkdir(parents=True, exist_ok=True)
    src = Path(source) if source is not None else sample_dir()
    built = build_toy_slides(out, src, n_slides, seed)
    w, h = built["size"]
    say(Heading(f"0. {n_slides} toy slides from the bundled crops"))
    say(
        f"{n_slides} pyramidal Aperio .svs slides of {w} x {h} px at {SLIDE_MPP} um/px, each {GRID[0]} x {GRID[1]} real crops on "
        f"white glass; {built['planted']} have a {PLANT[0]} x {PLANT[1]} block of Atypical crops planted among Normal ones "
        f"(diagnosis 'atypical'), the others are all Normal ('normal').\n"
        f"slides: {built['slides']}\nGeoJSON per slide (planted region 'Atypical', the rest 'Normal'): {built['annotations']}\n"
        f"slide manifest (path, diagnosis): {built['manifest']}"
    )
    store, qc, model, preds, pics = out / "slides.zarr", out / "qc", out / "slide_model", out / "slides_pred.csv", out / "attention"
    summary = _slides_extract(built, store, device, say)
    _step(
        say,
        "2. slides qc",
        "per slide: its thumbnail, the tissue outline and the kept tiles",
        f"mito slides qc {store} --out {qc} --overwrite",
    )
    res = qc_store(str(store), qc, "auto", overwrite=True)
    say(f"{len(res['written'])} QC pictures in {qc}")
    m = _slides_fit(store, model, seed, say)
    _slides_predict(store, model, preds, pics, say)
    say(
        f"[yellow]a toy:[/] {m['n_train']} slides of {w} x {h} px to learn from and {m['n_test']} to test on are far too few "
        "to measure anything, and Atypical mitoses differ from Normal ones subtly (hard even crop by crop for this small "
        "ImageNet backbone), so slide scores near chance are expected here: the numbers above say the pipeline runs end "
        "to end, not how well a slide head works. Real slides go through the same commands."
    )
    return {
        "built": built,
        "extract": summary,
        "qc": res,
        "fit_head": m,
        "predictions": str(preds),
        "pictures": str(pics),
        "store": str(store),
        "model": str(model),
    }


def _step(say: Say, title: str, what: str, command: str) -> None:
    """A demo step's title, what it does and the mito command it equals."""
    say(Heading(title))
    say(what)
    say(Command(f"(the same as: {command})"))


def _slides_extract(built: dict[str, Any], store: Path, device: str, say: Say) -> dict[str, Any]:
    """Step 1 of the slide demo: extract the toy slides with their annotations; the extract summary."""
    _step(
        say,
        "1. extract",
        "one tile per crop over tissue; tile labels from the GeoJSON, the slide's diagnosis from the manifest",
        f"mito extract {built['manifest']} --mpp {SLIDE_MPP} --tile-px {CROP_PX} --min-tissue {MIN_TISSUE:g} --zooms 1 --colors rgb "
        f"--annotations {built['annotations']} --store {store}",
    )
    summary = extract(
        ExtractConfig(
            source=str(built["manifest"]),
            store=str(store),
            mpp=SLIDE_MPP,
            tile_px=CROP_PX,
            min_tissue=MIN_TISSUE,
            zooms=[1.0],
            colors=["rgb"],
            annotations=str(built["annotations"]),
            device=device,
            backbones=[DEMO_BACKBONE],
        )
    )
    b = summary["backbones"][DEMO_BACKBONE]
    say(f"{summary['n_tiles']} tiles from {built['n_slides']} slides in {store} ({b['rows']} embedded now)")
    return summary


def _slides_fit(store: Path, model: Path, seed: int, say: Say) -> dict[str, Any]:
    """Step 3 of the slide demo: an attention-MIL head on one bag per slide; its metrics."""
    _step(
        say,
        "3. fit-head --level slide",
        "an attention-MIL head (abmil) on bags of tiles: one bag per slide, its label the diagnosis",
        f"mito fit-head --store {store} --level slide --task diagnosis --out {model} --overwrite",
    )
    m = fit_slide_head(make_slide_fit_config(store=str(store), out=str(model), task="diagnosis", head="abmil", seed=seed, overwrite=True))
    say(
        f"bags: train {m['n_train']}, val {m['n_val']}, test {m['n_test']}; {m['evaluated_on']}: balanced accuracy "
        f"{m['balanced_accuracy']:.3f}, AUROC {m['auroc']:.3f}; confusion matrix (rows = true {', '.join(m['classes'])}): "
        f"{m['confusion_matrix']} -> {model}"
    )
    return m


def _slides_predict(store: Path, model: Path, preds: Path, pics: Path, say: Say) -> None:
    """Step 4 of the slide demo: a prediction per slide and attention pictures."""
    _step(
        say,
        "4. predict --heatmaps",
        "a prediction per slide, each tile's attention weight, and a picture of it per slide",
        f"mito predict --model {model} --store {store} --out {preds} --heatmaps {pics} --overwrite",
    )
    slides, _ = predict_slides(model, store, preds, pics, overwrite=True)
    say(f"slides: {preds}; tile attention: {tiles_csv_path(preds)}; pictures: {pics}")
    said = agreement_text(agreement(slides), unit="bags")
    if said:
        say(said)


def quick_bench(
    store: str | os.PathLike,
    out: str | os.PathLike,
    task: str = "mitosis",
    n_jobs: int = 0,
    progress: bool = True,
    features: list[str] | None = None,
) -> Path:
    """A small leaderboard (logreg/knn/mlp, 3 folds), a UMAP and the report; for mito demo. ``features``: the variant keys
    of ONE feature set (concatenated) that the leaderboard ranks and the UMAP draws; default: z1 RGB of every backbone
    (the UMAP: of the first)."""
    with open_store(store) as s:
        keys = [k for k in s.variants if k.endswith(":z1:rgb") and s.is_complete(k)] or [
            k for k in s.variants if not is_view(k) and s.is_complete(k)
        ][:1]
    if not keys:
        raise BenchError(f"{store} has no complete feature variant")
    sets, drawn = (["+".join(features)], list(features)) if features else (keys, [keys[0]])
    lb = run_bench(
        BenchConfig(store=str(store), tasks=[task], features=sets, heads=["logreg", "knn", "mlp"], n_folds=3, n_jobs=n_jobs, n_boot=500),
        progress=progress,
    )
    save_leaderboard(lb, out)
    umap_plot(store, drawn, task, Path(out) / f"umap_{safe_name(task, 'task')}.png", progress=progress)
    return build_report(out, progress=progress)
