"""The `mito` command line: thin typer wrappers that parse options, call the library and print."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mito import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Embed pathology tiles once, train heads in seconds.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check embedding stores.")
app.add_typer(cache_app, name="cache")
console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from mito.cache import StoreError

    errs: list[type[BaseException]] = [UserError, StoreError, FileNotFoundError, PermissionError]
    try:
        from mito.extract import ExtractError

        errs.append(ExtractError)
    except ImportError:
        pass
    try:
        from mito.heads import HeadError

        errs.append(HeadError)
    except ImportError:
        pass
    try:
        from mito.bench import BenchError

        errs.append(BenchError)
    except ImportError:
        pass
    return tuple(errs)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known user errors into one red line and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted: finished chunks are kept; re-run the same command to resume[/]")
            raise typer.Exit(130) from None
        except _user_errors() as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            err_console.print(f"[red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def split_list(value: Optional[str]) -> list[str]:
    """Split a comma-separated option into stripped non-empty items."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"mito {__version__}")
        raise typer.Exit()


# ==================================================================== extract / cache / backbones / demo
# (foundation section)


def _parse_weights(values: list[str], backbones: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and not Path(v).exists():
            out[name.strip()] = path.strip()
        elif len(backbones) == 1:
            out[backbones[0]] = v
        else:
            raise UserError("with several backbones, pass --weights NAME=PATH for each")
    return out


def _extract_config(**kw: Any) -> Any:
    from pydantic import ValidationError

    from mito.extract import ExtractConfig

    try:
        return ExtractConfig(**kw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "option"
        raise UserError(f"--{where.replace('_', '-')}: {err['msg'].removeprefix('Value error, ')}") from None


def _floats(value: str, what: str) -> list[float]:
    try:
        return [float(v) for v in split_list(value)]
    except ValueError:
        raise UserError(f"{what} must be numbers separated by commas, got {value!r}") from None


@app.command()
@friendly
def extract(
    source: Path = typer.Argument(..., help="Folder of tiles (label = subfolder), CSV manifest (path,label,...), or a slide with --points."),
    store: str = typer.Option(..., "--store", "-s", help="Output store: a .zarr folder (default) or a .h5 file; fsspec URLs work for Zarr."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Backbone name(s), comma-separated (see `mito backbones`)."),
    weights: list[str] = typer.Option([], "--weights", "-w", help="Weight file or snapshot folder; NAME=PATH with several backbones."),
    zooms: str = typer.Option("1", help="Magnifications relative to the tile, e.g. 1,2 (2 = central half); <1 needs a slide."),
    colors: str = typer.Option("rgb", help="Colour modes: rgb, gray (luminance x3), or both."),
    fit: str = typer.Option("resize", help="Bring crops to the backbone input: resize (aspect kept) or pad (native scale)."),
    pad_mode: str = typer.Option("reflect", help="Padding for --fit pad: reflect or white."),
    input_size: Optional[int] = typer.Option(None, help="Backbone input side in px (default: the backbone's own)."),
    points: Optional[Path] = typer.Option(None, help="CSV of x,y[,label,...] crop centres on a slide SOURCE."),
    tile_size: int = typer.Option(224, help="Slides: side of the base crop in level-0 pixels."),
    task: Optional[str] = typer.Option(None, help="Name of the label column (e.g. mitosis); default 'label'."),
    label_column: Optional[str] = typer.Option(None, help="Manifest column holding the labels (default: label)."),
    batch_size: int = typer.Option(64, help="Tiles per forward pass."),
    workers: Optional[int] = typer.Option(None, help="DataLoader decoding workers (default: by device and cores)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    chunk_rows: int = typer.Option(1024, help="Rows per store chunk (the unit of resume)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the backbone (CUDA; last batch padded)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N tiles (for a quick look)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    gpus: int = typer.Option(1, "--gpus", help="Run N ranks via torchrun (one per GPU), each writing whole chunks of the store."),
) -> None:
    """Embed every tile with each backbone, zoom and colour into a chunked store (re-run to resume)."""
    from mito.extract import extract as run_extract

    if gpus != 1:
        from mito.extract.distributed import launch, strip_option

        raise typer.Exit(launch(gpus, strip_option(sys.argv[1:], "--gpus")))

    backbones = split_list(backbone)
    cfg = _extract_config(
        source=str(source), store=store, points=str(points) if points else None, backbones=backbones,
        weights=_parse_weights(weights, backbones), zooms=_floats(zooms, "--zooms"), colors=split_list(colors),
        fit=fit, pad_mode=pad_mode, input_size=input_size, tile_size=tile_size, task=task, label_column=label_column,
        batch_size=batch_size, num_workers=workers, device=device, chunk_rows=chunk_rows, compile=compile,
        limit=limit, progress=not quiet,
    )
    summary = run_extract(cfg)
    if summary.get("rank", 0):  # under torchrun only rank 0 reports
        return
    for name, b in summary["backbones"].items():
        rate = f"{b['tiles_per_s']} tiles/s" if b["tiles_per_s"] else "nothing left to do"
        console.print(f"{name}: {b['rows']} tiles embedded, {b['skipped_chunks']} chunks already done, {rate}")
    if summary["unreadable"]:
        shown = ", ".join(summary["unreadable"][:10])
        more = f" (+{len(summary['unreadable']) - 10} more)" if len(summary["unreadable"]) > 10 else ""
        console.print(f"[yellow]{len(summary['unreadable'])} unreadable tiles skipped:[/] {shown}{more}")
    console.print(f"store: {summary['store']} ({summary['n_tiles']} tiles)")


@app.command()
@friendly
def backbones(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the backbone registry: name, architecture, dimension, weights source, available here?"""
    from mito.extract import available, list_backbones, spec_summary

    specs = list_backbones()
    if as_json:
        print(json.dumps([{**spec_summary(s), "available": available(s)} for s in specs], indent=2))
        return
    t = Table(title="mito backbones (random_<name> = random-init control)")
    for col in ("name", "arch", "dim", "input", "pooling", "weights", "available"):
        t.add_column(col)
    for s in specs:
        ws = s.weights
        src = f"pip {ws.package}" if ws.package else f"{ws.hf_id}{' (gated)' if ws.gated else ''}: {ws.files[0]}"
        t.add_row(s.name, s.arch, str(s.embed_dim), str(s.input_size), s.pooling, src, "yes" if available(s) else "no: --weights")
    console.print(t)


def _print_info(info: dict[str, Any]) -> None:
    console.print(f"[bold]{info['path']}[/] ({info['format']}), {info['n_tiles']} tiles, chunks of {info['chunk_rows']} rows")
    src = info.get("source") or {}
    console.print(f"source: {src.get('path')} ({src.get('kind')}); tile list sha256 {str(info['tile_list_sha256'])[:16]}...")
    for task, counts in info["tasks"].items():
        console.print(f"task {task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    console.print(f"columns: {', '.join(info['columns'])}")
    if info["unreadable"]:
        console.print(f"[yellow]unreadable tiles: {info['unreadable']}[/]")
    t = Table()
    for col in ("feature", "dim", "done %", "input", "fit", "weights sha256"):
        t.add_column(col)
    for key, v in info["variants"].items():
        p = v.get("preprocessing", {})
        t.add_row(key, str(v["dim"]), f"{v['done_pct']:g}", str(p.get("input_size")), str(p.get("fit")), str(v.get("weights_sha256", ""))[:12])
    console.print(t)
    if info.get("versions"):
        console.print("made with " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + f", created {info['created']}")


@cache_app.command("info")
@friendly
def cache_info(store: str = typer.Argument(..., help="Store path"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Tiles, labels, variants, dimensions, provenance and how much is done."""
    from mito.cache import open_store

    with open_store(store) as s:
        info = s.info()
    if as_json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_info(info)


@cache_app.command("verify")
@friendly
def cache_verify(store: str = typer.Argument(..., help="Store path")) -> None:
    """Exit 0 only if every variant is complete and every written row is sound."""
    from mito.cache import open_store

    with open_store(store) as s:
        problems = s.verify()
        n, nv = s.n_tiles, len(s.variants)
    if problems:
        for p in problems:
            err_console.print(f"[red]problem:[/] {p}", highlight=False)
        raise typer.Exit(1)
    console.print(f"ok: {n} tiles x {nv} variants, complete and sound")


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its store, model and report."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Run the whole pipeline on the bundled AMi-Br sample with the default backbone."""
    from mito.demo import run_demo

    run_demo(out, device=device, console=console)


# ==================================================================== heads: fit-head / predict
# (heads section)


def _head_params(pairs: list[str], **given: Any) -> dict[str, Any]:
    """Head options: the explicit flags that were set, plus --param KEY=VALUE (VALUE parsed as JSON when it can be)."""
    out = {k: v for k, v in given.items() if v is not None}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param takes KEY=VALUE, got {p!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _print_metrics(m: dict[str, Any]) -> None:
    t = Table(title=f"{m['evaluated_on']} split: {m['n']} tiles (trained on {m['n_train']}, early-stopped on {m['n_val']})")
    for col in ("balanced acc", "AUROC", "kappa", "weighted F1", "train s"):
        t.add_column(col, justify="right")
    t.add_row(*(f"{m[k]:.3f}" for k in ("balanced_accuracy", "auroc", "kappa", "weighted_f1")), f"{m['train_seconds']:.2f}")
    console.print(t)
    console.print(f"confusion matrix (rows = true {', '.join(m['classes'])}): {m['confusion_matrix']}")


@app.command("fit-head")
@friendly
def fit_head_cmd(
    store: str = typer.Option(..., "--store", "-s", help="Embedding store made by mito extract."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (config.json, weights, metrics.json)."),
    task: Optional[str] = typer.Option(None, help="Label column to learn (default: the store's only task)."),
    head: str = typer.Option("mlp", help="mlp, linear, logreg, knn or lightgbm."),
    features: Optional[str] = typer.Option(None, help="Variants to concatenate in this order, e.g. efficientnet_lite0:z1:rgb,efficientnet_lite0:z1:gray (default: the store's first)."),
    metadata: Optional[str] = typer.Option(None, help="Tile-table columns added as one-hot side inputs, e.g. dataset,scanner."),
    standardize: bool = typer.Option(False, "--standardize/--no-standardize", help="Scale each feature to zero mean, unit variance (training rows)."),
    pca: Optional[int] = typer.Option(None, help="Reduce the features to N principal components (after --standardize)."),
    split_column: Optional[str] = typer.Option(None, help="Column with train/val/test per tile; val is carved from train by slide when absent."),
    group_column: str = typer.Option("group", help="Slide column for grouped splits ('none': split tiles independently)."),
    val_fraction: float = typer.Option(0.2, help="Share of training rows held out (by slide) for early stopping."),
    test_fraction: float = typer.Option(0.2, help="Share held out (by slide) for the metrics when there is no split column."),
    noise: Optional[float] = typer.Option(None, help="Training-time Gaussian feature noise SIGMA (see --noise-mode); 0 = off."),
    noise_mode: Optional[str] = typer.Option(None, help="global: SIGMA x the features' RMS spread, same for every dim; per-dim: SIGMA x each dim's std; absolute: SIGMA in feature units."),
    hidden: Optional[int] = typer.Option(None, help="mlp: hidden layer width (default 256)."),
    dropout: Optional[float] = typer.Option(None, help="mlp: dropout after the hidden layer (default 0.3)."),
    loss: Optional[str] = typer.Option(None, help="mlp/linear: focal or ce."),
    gamma: Optional[float] = typer.Option(None, help="mlp/linear: focal loss gamma (default 2)."),
    balance: Optional[str] = typer.Option(None, help="mlp/linear: weights (class-weighted loss), sampler (balanced batches) or none."),
    epochs: Optional[int] = typer.Option(None, help="mlp/linear: maximum epochs."),
    patience: Optional[int] = typer.Option(None, help="Epochs (boosting rounds for lightgbm) without validation gain before stopping."),
    lr: Optional[float] = typer.Option(None, help="mlp/linear: Adam learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="mlp/linear: rows per batch (default grows with the data, 256..2048)."),
    precision: Optional[str] = typer.Option(None, help="mlp/linear: fp32, or bf16 matmuls for big stores on CPUs that support it."),
    param: list[str] = typer.Option([], "--param", "-p", help="Any other head option as KEY=VALUE, e.g. -p C=auto -p n_neighbors=25."),
    seed: int = typer.Option(0, help="Seed for splits, initialisation, batches and noise."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of a table."),
) -> None:
    """Train a head on stored embeddings in seconds; write the model directory and print its metrics."""
    from mito.heads import fit_head, make_fit_config

    cfg = make_fit_config(
        store=store, out=str(out), task=task, head=head, features=split_list(features), metadata_columns=split_list(metadata),
        standardize=standardize, pca=pca, split_column=split_column,
        group_column=None if group_column.lower() == "none" else group_column,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, overwrite=overwrite,
        head_params=_head_params(
            param, noise=noise, noise_mode=noise_mode, hidden=hidden, dropout=dropout, loss=loss, gamma=gamma,
            balance=balance, epochs=epochs, patience=patience, lr=lr, batch_size=batch_size, precision=precision,
        ),
    )
    m = fit_head(cfg)
    if as_json:
        print(json.dumps(m, indent=2))
        return
    _print_metrics(m)
    console.print(f"model: {out}")


@app.command("predict")
@friendly
def predict_cmd(
    source: Optional[str] = typer.Argument(None, help="New tiles (folder, CSV manifest or slide) to embed the model's way; or use --store."),
    model: Path = typer.Option(..., "--model", "-m", help="Model directory made by mito fit-head."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Predict the tiles of an existing store instead."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write: path (or slide,x,y), label when known, pred, p_<class>."),
    device: str = typer.Option("auto", help="Extraction device for SOURCE: auto, cpu or cuda."),
    weights: list[str] = typer.Option([], "--weights", "-w", help="Backbone weight file for SOURCE, NAME=PATH (checked against the model's hash)."),
) -> None:
    """Predict tiles with a trained head; refuses stores made with other backbones, weights or preprocessing."""
    from mito.heads import predict

    if source is not None and store is not None:
        raise UserError("give either tiles to embed (SOURCE) or --store, not both")
    w = {}
    for v in weights:
        name, sep, path = v.partition("=")
        if not sep:
            raise UserError(f"--weights takes NAME=PATH, got {v!r}")
        w[name.strip()] = path.strip()
    df = predict(model, store=store, source=source, out_csv=out, device=device, weights=w or None)
    counts = ", ".join(f"{k} {v}" for k, v in df["pred"].value_counts().items())
    line = f"{len(df)} tiles predicted ({counts}) -> {out}"
    if "label" in df:
        known = df["label"].notna()
        line += f"; agreement with known labels {(df['pred'][known].astype(str) == df['label'][known].astype(str)).mean():.3f}"
    console.print(line)


# ==================================================================== bench: bench / lora / umap / report
# (bench section)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
