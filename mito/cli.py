"""The `mito` command line: thin typer wrappers that parse options, call the library and print.

Some command functions run past 60 lines: typer declares every option in the function's signature (one
typer.Option per flag, with its help). Their bodies stay short (at most ~56 lines); the option<->spec-field
mapping, precedence and error wording live in mito.cli_spec."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from mito.cli_spec import (
    gather,
    given,
    head_flag_params,
    list_or_none,
    option_name,
    parse_head_params,
    read_config,
    split_list,
    stray_options,
    used_params,
)
from mito.core.errors import MitoError, os_error_line
from mito.core.version import __version__


def _hide_flag_types() -> None:
    """Recent typer prints ``<bool>`` beside every on/off flag; a flag takes no value, so show no type for it."""
    from typer.core import TyperOption

    show = getattr(TyperOption, "display_type_rich", None)
    if show is None or getattr(show, "_mito", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        return None if getattr(self, "is_flag", False) else show(self, ctx)

    display_type_rich._mito = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Embed pathology tiles once, train heads in seconds.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check embedding stores.")
app.add_typer(cache_app, name="cache")
console = Console()
err_console = Console(stderr=True)


class UserError(MitoError):
    """A problem with the user's input, reported as one line without a traceback."""


RESUME_HINT = "what was finished is kept; re-run the same command to resume"


def friendly(fn: Callable[..., Any] | None = None, *, on_interrupt: str = "nothing half-written was kept") -> Any:
    """Turn mito's errors (and OS errors such as a full disk) into one red line and exit 2; Ctrl-C or SIGTERM into one
    line and exit 130 or 143.

    ``on_interrupt`` says what the user has after Ctrl-C (only commands that resume promise a resume).
    """
    if fn is None:
        return functools.partial(friendly, on_interrupt=on_interrupt)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from mito.core.errors import Interrupted
        from mito.core.interrupts import exit_code, handle_signals
        from mito.core.validation import one_line

        try:
            with handle_signals():  # Ctrl-C or SIGTERM: one line, and no second signal can cut the cleanup short
                return fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            said = str(e) if isinstance(e, Interrupted) and str(e) else on_interrupt
            err_console.print(f"interrupted: {said}", style="yellow", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(exit_code()) from None
        except (MitoError, ValidationError, OSError) as e:
            if isinstance(e, ValidationError):
                msg = one_line(e, as_option=True)
            elif isinstance(e, OSError) and not isinstance(e, MitoError):
                msg = os_error_line(e)
            else:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            err_console.print(f"[red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


# scikit-learn's notes on tiny folds and classes absent from a test part: mito reports those itself (skipped tasks, metrics)
_SKLEARN_NOTES = ("sklearn.model_selection._split", "sklearn.metrics._classification", "sklearn.metrics._ranking")


_SHOWN_WARNINGS: set[tuple[type, str]] = set()


def _one_line_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """A library warning as one line, once per text (not Python's file:line, source line and advice paragraphs)."""
    text = str(message).strip()
    text = text.splitlines()[0].rstrip(":") if text else category.__name__
    if (category, text) in _SHOWN_WARNINGS:
        return
    _SHOWN_WARNINGS.add((category, text))
    where = next(
        (
            name
            for key, name in (
                ("sklearn", "scikit-learn"),
                ("tifffile", "tifffile"),
                ("lightgbm", "LightGBM"),
                ("umap", "UMAP"),
                ("torch", "torch"),
                ("zarr", "Zarr"),
            )
            if f"{os.sep}{key}{os.sep}" in filename
        ),
        "",
    )
    err_console.print(
        f"[yellow]warning:[/] {text} ({category.__name__}{' from ' + where if where else ''})", highlight=False, soft_wrap=True
    )


def _quiet_library_warnings() -> None:
    """Keep scikit-learn's UserWarnings off the user's terminal, here and in bench's worker processes; every other
    warning (e.g. a solver that did not converge) is one line, once, and tifffile's log records are dropped."""
    import logging
    import warnings

    warnings.showwarning = _one_line_warning
    logging.getLogger("tifffile").setLevel(logging.ERROR + 1)  # mito reports unreadable slides and tiles itself
    for mod in _SKLEARN_NOTES:
        warnings.filterwarnings("ignore", category=UserWarning, module=mod.replace(".", r"\."))
    have = [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    want = [f"ignore::UserWarning:{mod}" for mod in _SKLEARN_NOTES]
    os.environ["PYTHONWARNINGS"] = ",".join(have + [w for w in want if w not in have])


CONFIG_OPTION: Any = typer.Option(
    None,
    "--config",
    metavar="FILE.yaml",
    help="Spec file (YAML; mito spec init JOB writes one). Precedence: options given here > --set > the file > defaults.",
    rich_help_panel="Spec",
)
SET_OPTION: Any = typer.Option(
    [],
    "--set",
    metavar="KEY=VALUE",
    help="KEY=VALUE or KEY.SUB=VALUE over --config (VALUE read as YAML), e.g. --set seed=1; repeatable.",
    rich_help_panel="Spec",
)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    _quiet_library_warnings()
    if version:
        console.print(f"mito {__version__}")
        raise typer.Exit()


# ==================================================================== extract / cache / backbones / demo
# (foundation section)


def _parse_weights(values: list[str], backbones: list[str]) -> dict[str, str]:
    """--weights values as {backbone: path}: NAME=PATH, or a bare PATH when there is one backbone."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name.strip() and not Path(v).exists():
            out[name.strip()] = path.strip()
        elif len(backbones) == 1:
            out[backbones[0]] = v
        elif backbones:
            raise UserError("with several backbones, pass --weights NAME=PATH for each")
        else:
            raise UserError(f"--weights takes NAME=PATH, got {v!r}")
    return out


def _floats(value: str, what: str) -> list[float]:
    try:
        return [float(v) for v in split_list(value)]
    except ValueError:
        raise UserError(f"{what} must be numbers separated by commas, got {value!r}") from None


@app.command()
@friendly(on_interrupt=RESUME_HINT)
def extract(  # options only: the spec is built by mito.cli_spec.gather
    ctx: typer.Context,
    source: Optional[Path] = typer.Argument(
        None, help="Folder of tiles (label = subfolder), CSV manifest (path,label,...), or a slide with --points."
    ),
    store: Optional[str] = typer.Option(
        None, "--store", "-s", help="Output store: a .zarr folder (default) or a .h5 file; fsspec URLs work for Zarr."
    ),
    backbone: str = typer.Option(
        "efficientnet_lite0", "--backbone", "-b", help="Backbone name(s), comma-separated (see `mito backbones`)."
    ),
    weights: list[str] = typer.Option([], "--weights", "-w", help="Weight file or snapshot folder; NAME=PATH with several backbones."),
    zooms: str = typer.Option("1,2", help="Magnifications relative to the tile (2 = central half; <1 needs a slide). 1,2 won on AMi-Br."),
    colors: str = typer.Option(
        "rgb,gray", help="Colour modes: rgb, gray (luminance x3), hema (haematoxylin from colour deconvolution x3); rgb,gray won on AMi-Br."
    ),
    augment: Optional[str] = typer.Option(
        None,
        help="Also embed augmented views as extra arrays <variant>:<view>: hed:K[:S] (HED stain jitter), flip, vflip, rot90; e.g. hed:4,flip.",
    ),
    augment_colors: str = typer.Option("rgb", help="Colour modes that get the --augment views."),
    augment_seed: int = typer.Option(0, help="Seed of the HED jitter (per tile: seed and tile id)."),
    fit: str = typer.Option("resize", help="Bring crops to the backbone input: resize (aspect kept) or pad (native scale)."),
    pad_mode: str = typer.Option("reflect", help="Padding for --fit pad: reflect or white."),
    input_size: Optional[int] = typer.Option(None, help="Backbone input side in px (default: the backbone's own)."),
    points: Optional[Path] = typer.Option(None, help="CSV of x,y[,label,...] crop centres on a slide SOURCE."),
    tile_size: int = typer.Option(224, help="Slides: side of the base crop in level-0 pixels."),
    task: Optional[str] = typer.Option(None, help="Name of the label column (e.g. mitosis); default 'label'."),
    label_column: Optional[str] = typer.Option(None, help="Manifest column holding the labels (default: label)."),
    batch_size: Optional[int] = typer.Option(None, help="Tiles per forward pass, one variant at a time (default 256 on CUDA, 32 on CPU)."),
    workers: Optional[int] = typer.Option(None, help="DataLoader decoding workers (default: by device and cores)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    chunk_rows: int = typer.Option(1024, help="Rows per store chunk (the unit of resume)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the backbone (CUDA; last batch padded)."),
    limit: Optional[int] = typer.Option(
        None, help="Only the first N tiles in sorted path order (often all of one class: for a labelled quick look use --sample)."
    ),
    sample: Optional[int] = typer.Option(
        None, help="N tiles drawn at random (--seed), stratified by label: classes in proportion, each at least one."
    ),
    sample_per_class: Optional[int] = typer.Option(None, help="N tiles per class drawn at random (--seed); all of a smaller class."),
    seed: int = typer.Option(
        0, help="Seed of --sample / --sample-per-class (the same N and seed give the same tiles, so a re-run resumes)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    gpus: int = typer.Option(1, "--gpus", help="Run N ranks via torchrun (one per GPU), each writing whole chunks of the store."),
    mpp: Optional[float] = typer.Option(
        None, help="Whole slides: tiles at M um/px over tissue (SOURCE: a slide, folder of slides or slide manifest CSV)."
    ),
    tile_px: Optional[int] = typer.Option(None, help="Whole slides: tile side in pixels at --mpp (default 224)."),
    tile_um: Optional[float] = typer.Option(None, help="Whole slides: tile side in micrometres (instead of --mpp or --tile-px)."),
    stride: Optional[int] = typer.Option(None, help="Whole slides: grid step in pixels at --mpp (default: the tile size)."),
    min_tissue: float = typer.Option(0.5, help="Whole slides: keep grid tiles at least this much on tissue."),
    slide_mpp: Optional[float] = typer.Option(
        None, help="Whole slides: um/px of level 0 for slides that record none (a slide's own is kept; a manifest mpp column replaces it)."
    ),
    reader: str = typer.Option("auto", help="Whole slides: auto, openslide or tifffile."),
    annotations: Optional[Path] = typer.Option(
        None, help="Whole slides: QuPath GeoJSON file, or folder of <slide stem>.geojson; tile label = region holding its centre."
    ),
    label_overlap: Optional[float] = typer.Option(None, help="Whole slides: drop labelled tiles their region covers less than this."),
    config: Optional[Path] = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
) -> None:
    """Embed every tile with each backbone, zoom and colour into a chunked store (re-run to resume)."""
    from mito.core.wording import counted
    from mito.extract import extract as run_extract
    from mito.extract import growth_lines

    if gpus != 1:
        from mito.extract.distributed import launch, strip_option

        raise typer.Exit(launch(gpus, strip_option(sys.argv[1:], "--gpus")))

    g = gather(
        ctx,
        "extract",
        ctx.params,
        raw=read_config(config, ("extract",)),
        sets=sets,
        convert={"weights": lambda v: _parse_weights(v, split_list(backbone)), "zooms": lambda v: _floats(v, "--zooms")},
    )
    cfg = g.validate()
    summary = run_extract(cfg)
    if summary.get("rank", 0):  # under torchrun only rank 0 reports
        return
    for name, b in summary["backbones"].items():
        rate = f"{b['tiles_per_s']} tiles/s" if b["tiles_per_s"] else "nothing left to do"
        line = f"{name}: {counted(b['rows'], 'tile')} embedded, {counted(b['skipped_chunks'], 'chunk')} already done, {rate}"
        counts = b.get("variant_rows") or {}
        if b["rows"] and any(n < b["rows"] for n in counts.values()):  # some variants were already in the store
            line += " (new rows: " + ", ".join(f"{k.split(':', 1)[-1]} {n}" for k, n in counts.items() if n) + ")"
        console.print(line, highlight=False)
    if summary["unreadable"]:
        shown = ", ".join(summary["unreadable"][:10])
        more = f" (+{len(summary['unreadable']) - 10} more)" if len(summary["unreadable"]) > 10 else ""
        console.print(f"[yellow]{counted(len(summary['unreadable']), 'unreadable tile')} skipped:[/] {shown}{more}")
    for s in summary.get("skipped_slides", []):
        console.print(f"[yellow]slide skipped:[/] {s['reason']}")
    notes = summary.get("slide_notes", [])
    for note in notes[:3]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if len(notes) > 3:
        console.print(
            f"[yellow]note:[/] {len(notes) - 3} more slide(s) alike (the store's slide records say where each MPP came from)",
            highlight=False,
        )
    for line in growth_lines(summary["grown"]) if "grown" in summary else []:
        console.print(line, highlight=False)
    if summary.get("incomplete") and not summary.get("grown", {}).get("incomplete"):  # an append run already named them
        console.print(
            f"[yellow]not complete (this run did not extract them):[/] {', '.join(summary['incomplete'])}; "
            "re-run with the zooms, colours and --augment views that made them",
            highlight=False,
        )
    if summary.get("sample"):
        from mito.extract.sources import sample_line

        console.print(f"sampled {sample_line(summary['sample'])}", highlight=False)
    console.print(f"store: {summary['store']} ({counted(summary['n_tiles'], 'tile')})")


@app.command()
@friendly
def backbones(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the backbone registry: name, architecture, dimension, weights source, available here?"""
    from mito.backbones import available, list_backbones, spec_summary

    specs = list_backbones()
    if as_json:
        print(json.dumps([{**spec_summary(s), "available": available(s)} for s in specs], indent=2))
        return
    from mito.report.tables import Col, FitTable

    # one line per backbone: columns drop, never wrap; at 80 columns name, dim, here? and the weights' source stay
    cols = [
        Col("name", "left"),
        Col("dim"),
        Col("input", drop=1),
        Col("here", "left"),
        Col("weights from", "left"),
        Col("pooling", "left", drop=2),
        Col("file", "left", drop=3),
        Col("arch", "left", drop=4),
    ]
    body = []
    for s in specs:
        ws = s.weights
        src = f"pip {ws.package}" if ws.package else f"{ws.hf_id}{' (gated)' if ws.gated else ''}"
        file = "-" if ws.package else ws.files[0]
        body.append([s.name, str(s.embed_dim), str(s.input_size), "yes" if available(s) else "no", src, s.pooling, file, s.arch])
    see = "here: its weights are found on this machine, else pass --weights FILE; mito backbones --json lists everything"
    console.print(FitTable(cols, body, title="mito backbones (random_<name>: random init; <name>@<px>: CNN at px input)", see=see))


def _print_info(info: dict[str, Any]) -> None:
    from mito.core.wording import counted

    console.print(
        f"[bold]{info['path']}[/] ({info['format']}), {counted(info['n_tiles'], 'tile')}, chunks of {counted(info['chunk_rows'], 'row')}"
    )
    src = info.get("source") or {}
    console.print(f"source: {src.get('path')} ({src.get('kind')}); tile list sha256 {str(info['tile_list_sha256'])[:16]}...")
    for task, counts in info["tasks"].items():
        console.print(f"task {task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if info.get("sample"):
        from mito.extract.sources import sample_line

        grown = f"; since grown to {info['sample']['grown_to']} tiles" if info["sample"].get("grown_to") else ""
        console.print(f"sample: {sample_line(info['sample'])}{grown}", highlight=False)
    console.print(f"columns: {', '.join(info['columns'])}")
    if info["unreadable"]:
        console.print(f"[yellow]unreadable tiles: {info['unreadable']}[/]")
    from mito.report.tables import Col, FitTable

    cols = [
        Col("feature", "left"),
        Col("dim"),
        Col("done %"),
        Col("input"),
        Col("fit", "left", drop=1),
        Col("weights sha256", "left", drop=2),
    ]  # keys whole: users copy them
    body = []
    for key, v in info["variants"].items():
        p = v.get("preprocessing", {})
        body.append(
            [key, str(v["dim"]), f"{v['done_pct']:g}", str(p.get("input_size")), str(p.get("fit")), str(v.get("weights_sha256", ""))[:12]]
        )
    console.print(FitTable(cols, body, see="mito cache info --json lists everything"))
    if info.get("versions"):
        console.print("made with " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + f", created {info['created']}")


@cache_app.command("info")
@friendly
def cache_info(store: str = typer.Argument(..., help="Store path"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Tiles, labels, variants, dimensions, provenance and how much is done."""
    from mito.store import open_store

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
    from mito.core.wording import counted
    from mito.store import open_store

    with open_store(store, lenient=True) as s:  # lenient: report what is wrong with a damaged store, do not refuse it
        problems = s.verify()
        n, nv = (s.n_tiles, len(s.variants)) if not problems else (0, 0)
    if problems:
        for p in problems:
            err_console.print(f"[red]problem:[/] {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"ok: {counted(n, 'tile')} x {counted(nv, 'variant')}, complete and sound")


@cache_app.command("rm")
@friendly(on_interrupt="the store is as before, or without the named variants (run mito cache verify)")
def cache_rm(
    store: str = typer.Argument(..., help="Store path"),
    variants: list[str] = typer.Argument(
        ..., help="Variant keys to remove, e.g. efficientnet_lite0:z1:rgb (their augmented views go too)."
    ),
) -> None:
    """Remove variants (features, done flags, provenance) under the writer lock; the other variants stay as they are."""
    from mito.store import open_store

    with open_store(store, "a", lenient=True) as s:  # lenient: a damaged variant is exactly what one removes
        if s.meta_problems:
            raise UserError(f"{store} has malformed attributes ({s.meta_problems[0]}); run mito cache verify {store}")
        removed = s.remove_variants(variants)
    with open_store(store) as s:  # the strict open checks every remaining array against the attributes
        left = s.variants
    views = [k for k in removed if k not in variants]
    console.print(
        f"removed {', '.join(k for k in removed if k in variants)}"
        + (f" with its views {', '.join(views)}" if views else "")
        + f" from {store}; {len(left)} variant{'s' if len(left) != 1 else ''} left: {', '.join(left)}",
        highlight=False,
    )


@app.command()
@friendly
def demo(
    out: Optional[Path] = typer.Option(
        None, help="Where the demo writes its store, model and report (default runs/demo, with --slides runs/demo-slides)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    slides: bool = typer.Option(
        False,
        "--slides",
        help="Whole slides: build toy slides (+ GeoJSON) from the bundled crops, then extract, slides qc, fit-head --level slide, predict --heatmaps.",
    ),
) -> None:
    """Run the whole pipeline on the bundled AMi-Br sample with the default backbone."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {device!r}")
    if slides:
        from mito.app.demo import run_slide_demo

        run_slide_demo(out or Path("runs/demo-slides"), device=device, say=narrator(console))
        return
    from mito.app.demo import run_demo

    run_demo(out or Path("runs/demo"), device=device, say=narrator(console), show_store=_print_info)


def narrator(con: Console) -> Callable[[Any], None]:
    """How `mito demo` tells its steps on ``con``: a heading as a rule, a command whole (never cut), text and tables as they are."""
    from mito.app.demo import Command, Heading

    def say(item: Any) -> None:
        if isinstance(item, Heading):
            con.rule(item.text)
        elif isinstance(item, Command):
            con.print(item.text, highlight=False, soft_wrap=True)
        else:
            con.print(item, highlight=False)

    return say


# ==================================================================== heads: fit-head / predict
# (heads section)


POSITIVE_HELP = (
    "Two-class tasks: the positive class of PR-AUC, ECE/Brier, ROC, reliability and DeLong (default: the minority "
    "class of the training rows; ties: the alphabetically second)."
)


def _print_metrics(m: dict[str, Any]) -> None:
    from mito.report.tables import Col, FitTable, number, seconds

    cols = [
        Col(c, drop=d, header_wraps=c != "train s")
        for c, d in (("balanced acc", 0), ("AUROC", 0), ("kappa", 2), ("weighted F1", 1), ("train s", 3))
    ]
    row = [*(number(m[k]) for k in ("balanced_accuracy", "auroc", "kappa", "weighted_f1")), seconds(m["train_seconds"])]
    console.print(
        FitTable(
            cols,
            [row],
            title=f"{m['evaluated_on']}: {m['n']} tiles (train {m['n_train']}, val {m['n_val']})",
            see="see metrics.json in the model folder",
        )
    )
    console.print(f"confusion matrix (rows = true {', '.join(m['classes'])}): {m['confusion_matrix']}")
    from mito.core.metrics import per_class_line
    from mito.core.tasks import positive_line

    if m.get("positive"):
        console.print(
            positive_line(m["positive"], m.get("positive_source", "")) + f"; PR-AUC {m['pr_auc']:.3f}, ECE {m['ece']:.3f}",
            highlight=False,
            markup=False,
        )
    elif isinstance(m.get("per_class"), dict):
        console.print(per_class_line(m["per_class"]), highlight=False, markup=False)
    if m.get("streamed"):
        console.print("features streamed from the store chunk by chunk (--stream), never loaded whole")


@app.command("fit-head")
@friendly
def fit_head_cmd(  # options only: the spec is built by mito.cli_spec.gather
    ctx: typer.Context,
    store: Optional[str] = typer.Option(
        None, "--store", "-s", help="Embedding store made by mito extract (required: here, in the spec file, or from a bench row)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Model directory to write (config.json, weights, metrics.json, split.csv.gz: the tiles it was fitted on)."
    ),
    task: Optional[str] = typer.Option(None, help="Label column to learn (default: the store's only task)."),
    head: str = typer.Option(
        "mlp", help="mlp, linear, logreg, knn, lightgbm, or text-linear (-p text_embeddings=FILE from mito zero-shot)."
    ),
    features: Optional[str] = typer.Option(
        None,
        help="Variant keys to concatenate in this order, comma-separated, e.g. efficientnet_lite0:z1:rgb (default: the store's first backbone's variants at zoom 2 and above, else all of them).",
    ),
    feature_search: bool = typer.Option(
        False, "--feature-search", help="Forward-select variants on inner folds (--set search_max=N, search_folds=K)."
    ),
    metadata: Optional[str] = typer.Option(None, help="Tile-table columns added as one-hot side inputs, e.g. dataset,scanner."),
    standardize: bool = typer.Option(
        False, "--standardize/--no-standardize", help="Scale each feature to zero mean, unit variance (training rows)."
    ),
    pca: Optional[int] = typer.Option(None, help="Reduce the features to N principal components (after --standardize)."),
    split_column: str = typer.Option(
        "auto",
        help="Column with train/val/test per tile (val carved from train by slide when absent); auto: the store's published 'split' column when it has one; none: a random split by slide.",
    ),
    group_column: str = typer.Option("group", help="Slide column for grouped splits ('none': split tiles independently)."),
    val_fraction: float = typer.Option(0.2, help="Share of training rows held out (by slide) for early stopping."),
    test_fraction: float = typer.Option(0.2, help="Share held out (by slide) for the metrics when there is no split column."),
    test_group: Optional[str] = typer.Option(
        None,
        help="Domain shift: test on the tiles of COL=VALUE (e.g. dataset=TUPAC16), train on the other values of COL (val carved by slide).",
    ),
    train_groups: Optional[str] = typer.Option(
        None, help="With --test-group: train only on these values of COL, comma-separated (default: all others)."
    ),
    ensemble: Optional[str] = typer.Option(
        None,
        help="Average K heads' probabilities, saved as one model: K (seeds seed..seed+K-1, same split), folds (5 fold models of the training rows, by slide) or folds:K.",
    ),
    noise: Optional[float] = typer.Option(None, help="Training-time Gaussian feature noise SIGMA (see --noise-mode); 0 = off."),
    noise_mode: Optional[str] = typer.Option(
        None,
        help="global: SIGMA x the features' RMS spread, same for every dim; per-dim: SIGMA x each dim's std; absolute: SIGMA in feature units; views: each epoch a tile is one of its augmented views or itself (mito extract --augment); view-cov: Gaussian noise with the covariance of the tile's views, x SIGMA (default 1).",
    ),
    hidden: Optional[int] = typer.Option(None, help="mlp: hidden layer width (default 256)."),
    dropout: Optional[float] = typer.Option(None, help="mlp: dropout after the hidden layer (default 0.3)."),
    loss: Optional[str] = typer.Option(None, help="mlp/linear: focal or ce."),
    gamma: Optional[float] = typer.Option(None, help="mlp/linear: focal loss gamma (default 2)."),
    balance: Optional[str] = typer.Option(
        None, help="weights (class-weighted loss or vote), sampler (balanced batches; mlp/linear) or none; every head."
    ),
    epochs: Optional[int] = typer.Option(None, help="mlp/linear: maximum epochs."),
    patience: Optional[int] = typer.Option(None, help="Epochs (boosting rounds for lightgbm) without validation gain before stopping."),
    lr: Optional[float] = typer.Option(None, help="mlp/linear: Adam learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="mlp/linear: rows per batch (default grows with the data, 256..2048)."),
    precision: Optional[str] = typer.Option(
        None, help="mlp/linear: auto (bf16 matmuls for big training sets on CPUs with native bf16), fp32 or bf16."
    ),
    threads: Optional[int] = typer.Option(
        None, help="CPU threads (default: 1 for small data, else the cores left idle by other processes)."
    ),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        help="Any other head option as KEY=VALUE or HEAD.KEY=VALUE (as in bench), e.g. -p C=auto; -p help lists --head's options.",
    ),
    seed: int = typer.Option(0, help="Seed for splits, initialisation, batches and noise."),
    stream: Optional[bool] = typer.Option(
        None,
        "--stream/--in-memory",
        help="mlp/linear: read features from the store chunk by chunk every epoch (bounded memory) or load them once (default: stream only when they would fill half the free memory).",
    ),
    buffer_rows: Optional[int] = typer.Option(
        None, help="--stream: rows mixed in the shuffle buffer (default 65,536; memory ~ 2 x rows x dims x 2 bytes)."
    ),
    calibrate: str = typer.Option(
        "none",
        "--calibrate",
        help="temperature: fit temperature scaling on the validation split (saved in the model, applied by predict; predictions unchanged, probabilities calibrated); none.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of a table."),
    positive: Optional[str] = typer.Option(None, "--positive", help=POSITIVE_HELP),
    level: str = typer.Option("tile", help="tile: one label per tile; slide: one per bag of tiles (heads mean-linear, mean-mlp, abmil)."),
    bag_column: Optional[str] = typer.Option(None, help="--level slide: tile-table column grouping tiles into bags (default: slide)."),
    bag_label: Optional[str] = typer.Option(
        None,
        help="--level slide: any:VALUE = the bag is 'yes' when any tile's --task label is VALUE (default: --task is constant within each bag).",
    ),
    max_tiles: Optional[int] = typer.Option(None, help="--level slide: tiles drawn at random per bag and epoch (default 512)."),
    tile_dropout: Optional[float] = typer.Option(
        None, help="--level slide: share of a bag's tiles dropped at random per epoch (default 0)."
    ),
    from_bench: Optional[Path] = typer.Option(
        None, "--from-bench", help="A bench folder: train its row --row's recipe (rows/ROW.yaml) on all the bench's training rows."
    ),
    row: Optional[str] = typer.Option(None, "--row", help="--from-bench: the leaderboard's row_id to train."),
    config: Optional[Path] = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
) -> None:
    """Train a head on stored embeddings in seconds; write the model directory and print its metrics."""
    if _fit_from_bench(ctx, from_bench, row, out, overwrite, as_json):  # --from-bench DIR --row ID: that row's recipe
        return
    if param == ["help"]:  # the head's declared options (mito.heads.params), then stop
        from mito.heads.base import head_param_help
        from mito.heads.mil import mil_param_help

        name = head if head != "mlp" or level != "slide" else "abmil"
        for line in mil_param_help(name) if level == "slide" else head_param_help(name):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    slide, g = _level_spec(ctx, ("fit", "fit-slide"), FIT_COMMAND, _no_column)
    job = g.job
    if slide and not given(ctx, "head") and g.values.get("head") == "mlp":  # the tile-level default
        g.values["head"] = "abmil"
    g.merge("head_params", {**head_flag_params(ctx, job, ctx.params), **_one_head(param, g.values.get("head"))})
    if slide and g.values.get("task") is None:
        raise UserError(
            "--level slide needs --task (the tile-table column giving the bag label, or with --bag-label any:VALUE the tile label)"
        )
    if g.values.get("store") is None:
        raise UserError("fit-head needs --store (or store: in --config, or --from-bench BENCH_DIR --row ROW_ID)")
    cfg = g.validate()
    if cfg.out is None:
        raise UserError("fit-head needs --out (the model directory to write), or out: in the --config file")
    (_fit_slide_head if slide else _fit_tile_head)(cfg, as_json)


FIT_COMMAND = ("level", "param")  # fit-head's parameters that are no spec field


def _level_spec(ctx: Any, jobs: tuple[str, str], command: tuple[str, ...], convert: Callable[[bool], dict[str, Any]]) -> tuple[bool, Any]:
    """fit-head and bench: the job of --level (or of the --config file's job: tile, or slide), the options the other
    level takes refused, the values gathered (``convert(slide)``: the command's own conversions)."""
    level = ctx.params["level"]
    if level not in ("tile", "slide"):
        raise UserError(f"--level must be tile or slide, got {level!r}")
    raw = read_config(ctx.params["config"], jobs)
    slide = level == "slide" or (raw is not None and raw.job == jobs[1] and not given(ctx, "level"))
    job = jobs[1] if slide else jobs[0]
    _refuse_strays(ctx, job, jobs, command)
    return slide, gather(ctx, job, ctx.params, raw=raw, sets=ctx.params["sets"], convert=convert(slide))


def _no_column(slide: bool) -> dict[str, Any]:
    """fit-head's split and group columns: 'none' is no column (at slide level 'group', the tile default, too)."""
    words = ("group", "none") if slide else ("none",)
    return {c: (lambda v: None if str(v).lower() in words else v) for c in ("split_column", "group_column")}


def _one_head(pairs: list[str], head: Any) -> dict[str, Any]:
    """fit-head's -p items (KEY=VALUE, or HEAD.KEY=VALUE naming the head it trains) as that head's options."""
    parsed = parse_head_params(pairs, "--param", str(head))
    other = next((h for h in parsed if h != head), None)
    if other is not None:
        raise UserError(f"--param names {other}, but fit-head trains {head} (--head); give {head}'s options or KEY=VALUE")
    return parsed.get(str(head), {})


def _refuse_strays(ctx: Any, job: str, jobs: tuple[str, str], command: tuple[str, ...]) -> None:
    """One line naming the first option given on the command line that ``job`` (one level of a command) does not use."""
    stray = stray_options(ctx, job, command)
    if not stray:
        return
    if job == jobs[1]:
        raise UserError(f"{stray[0]} does not apply to --level slide")
    slide_only = [option_name(ctx, p) for p in used_params(jobs[1], command) - used_params(jobs[0], command)]
    order = [option_name(ctx, p.name) for p in ctx.command.params]
    raise UserError(f"{stray[0]} does not apply to --level tile; {', '.join(sorted(slide_only, key=order.index))} go with --level slide")


def _fit_tile_head(cfg: Any, as_json: bool) -> None:
    """`mito fit-head` at tile level: train as ``cfg`` says, print the metrics."""
    from mito.heads import fit_head

    m = fit_head(cfg)
    if as_json:
        print(json.dumps(m, indent=2))
        return
    how = " (default: the first backbone's variants at zoom >= 2; choose with --features)" if m["features_default"] else ""
    console.print(f"features: {', '.join(m['features'])}{how}", highlight=False)
    console.print(f"split: {m['split']}", highlight=False)
    _print_search(m.get("feature_search"))
    for w in m.get("warnings", []):
        err_console.print(f"warning: {w}", style="yellow", highlight=False, markup=False)
    _print_metrics(m)
    if "calibration" in m and m["calibration"].get("skipped"):
        err_console.print(m["calibration"]["skipped"], style="yellow", highlight=False, markup=False)
    elif "calibration" in m:
        c = m["calibration"]
        console.print(
            f"temperature scaling: T = {c['temperature']:.3f} (fitted on {c['n_val']} validation rows); "
            f"{m['evaluated_on']} ECE {c.get(m['evaluated_on'] + '_ece_before', c['val_ece_before']):.3f} -> {m['ece']:.3f}",
            highlight=False,
        )
    if "ensemble" in m:
        e = m["ensemble"]
        console.print(
            f"ensemble of {e['members']} heads ({e['mode']}); member balanced accuracy on {e['member_scores_on']}: "
            + ", ".join(f"{v:.3f}" for v in e["member_balanced_accuracy"])
            + f" (std {e['member_balanced_accuracy_std']:.3f})",
            highlight=False,
        )
    console.print(f"model: {cfg.out}")


def _print_search(fs: dict[str, Any] | None) -> None:
    """fit-head --feature-search: each step's best candidates, the selected set and the paired test against the default."""
    if fs is None:
        return
    for step in fs["path"]:
        top = sorted(step["scores"].items(), key=lambda kv: -kv[1])[:3]
        added = step["added"] or "none (no gain above the margin)"
        console.print(
            f"search step {step['step']}: added {added}; best: " + ", ".join(f"{k} {v:.3f}" for k, v in top),
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"selected features: {', '.join(fs['selected'])} (forward selection on {fs['folds']} inner folds of the training rows)",
        highlight=False,
        soft_wrap=True,
    )
    vs = fs["vs_default"]
    if "skipped" in vs:
        console.print(f"selected vs default: {vs['skipped']}", highlight=False, soft_wrap=True)
        return
    console.print(
        f"selected vs default ({'+'.join(vs['default'])}) on {vs['on']}: balanced accuracy {vs['metric_a']:.3f} vs {vs['metric_b']:.3f}, "
        f"delta {vs['delta']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}], paired bootstrap p = {vs['p_value']:.3g}",
        highlight=False,
        soft_wrap=True,
    )


def _fit_from_bench(
    ctx: typer.Context, bench: Optional[Path], row: Optional[str], out: Optional[Path], overwrite: bool, as_json: bool
) -> bool:
    """`mito fit-head --from-bench DIR --row ID --out MODEL`: train a bench row's recipe and say which rows it trained
    on (True); without those options, False (the spec of the options and --config is trained)."""
    from mito.bench.recipes import fit_from_bench

    if bench is None and row is None:
        return False
    if bench is None or row is None or out is None:
        raise UserError("--from-bench and --row go together: mito fit-head --from-bench BENCH_DIR --row ROW_ID --out MODEL_DIR")
    own = ("from_bench", "row", "out", "overwrite", "as_json")
    given = [
        p.opts[0] for p in ctx.command.params if p.name not in own and str(ctx.get_parameter_source(p.name or "")).endswith("COMMANDLINE")
    ]
    if given:
        raise UserError(f"{given[0]} does not apply to --from-bench: the row's recipe sets it (edit {bench}/rows/{row}.yaml to change it)")
    m = fit_from_bench(bench, row, out, overwrite, progress=not as_json)
    if as_json:
        print(json.dumps(m, indent=2))
        return True
    console.print(f"bench row {row} of {bench}: {', '.join(m['features'])}", highlight=False, markup=False)
    console.print(f"trained on {m['from_bench']['trained_on']}", highlight=False, markup=False)
    _print_search(m.get("feature_search"))  # a bench search row's recipe re-runs the search
    _print_metrics(m)
    console.print(f"model: {out}")
    return True


def _fit_slide_head(cfg: Any, as_json: bool) -> None:
    """`mito fit-head --level slide`: train as ``cfg`` says, print the metrics."""
    from mito.core.tasks import positive_line
    from mito.heads import fit_slide_head, left_out_line

    out = cfg.out
    m = fit_slide_head(cfg)
    if as_json:
        print(json.dumps(m, indent=2, default=str))
        return
    console.print(f"task: {m['task']} ({m['task_description']}); classes {', '.join(m['classes'])}", highlight=False, markup=False)
    console.print(
        f"bags: train {m['n_train']}, val {m['n_val']}, test {m['n_test']} (median {m['n_tiles_per_bag_median']:g} tiles); split {m['split']}",
        highlight=False,
        markup=False,
    )
    if m["left_out"]:
        console.print(left_out_line(m["left_out"]), style="yellow", highlight=False, markup=False)
    console.print(
        f"{m['evaluated_on']}: balanced acc {m['balanced_accuracy']:.3f}, AUROC {m['auroc']:.3f}, kappa {m['kappa']:.3f}, "
        f"weighted F1 {m['weighted_f1']:.3f}; {m['epochs_run']} epochs (best {m['best_epoch']}), {m['train_seconds']:.1f} s",
        highlight=False,
        markup=False,
    )
    console.print(f"confusion matrix (rows = true {', '.join(m['classes'])}): {m['confusion_matrix']}", highlight=False, markup=False)
    if m.get("positive"):
        console.print(
            positive_line(m["positive"], m.get("positive_source", "")) + f"; PR-AUC {m['pr_auc']:.3f}", highlight=False, markup=False
        )
    console.print(f"model: {out}", highlight=False, markup=False)


@app.command("predict")
@friendly
def predict_cmd(  # options only: the spec is built by mito.cli_spec.gather
    ctx: typer.Context,
    source: Optional[str] = typer.Argument(
        None, help="New tiles (folder, CSV manifest or slide) to embed the model's way; or use --store."
    ),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model directory made by mito fit-head."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Predict the tiles of an existing store instead."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV to write: path (or slide,x,y), label when known, pred, p_<class>."),
    points: Optional[Path] = typer.Option(None, help="SOURCE is a slide: CSV of x,y[,label,...] tile centres (level-0 pixels)."),
    tile_size: Optional[int] = typer.Option(
        None, help="SOURCE is a slide: side of the tile in level-0 pixels (default: the model's, else 224)."
    ),
    device: str = typer.Option("auto", help="Extraction device for SOURCE: auto, cpu or cuda."),
    weights: list[str] = typer.Option(
        [], "--weights", "-w", help="Backbone weight file for SOURCE, NAME=PATH (checked against the model's hash)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    heatmaps: Optional[Path] = typer.Option(
        None,
        "--heatmaps",
        help="Folder for per-slide PNG heatmaps of the predicted probability (slide stores, with --store; --overwrite replaces an earlier one).",
    ),
    config: Optional[Path] = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
) -> None:
    """Predict tiles with a trained head; refuses stores made with other backbones, weights or preprocessing."""
    from mito.app.predict import check_predict_out
    from mito.core.io import artifact_kind

    g = gather(
        ctx, "predict", ctx.params, raw=read_config(config, ("predict",)), sets=sets, convert={"weights": lambda v: _parse_weights(v, [])}
    )
    cfg = g.validate()
    source, store, model, out = cfg.source, cfg.store, Path(cfg.model), Path(cfg.out)
    points, tile_size, overwrite = cfg.points, cfg.tile_size, cfg.overwrite
    heatmaps = Path(cfg.heatmaps) if cfg.heatmaps else None
    kind, level = artifact_kind(model)  # from its mito.json (or, for a folder an earlier mito wrote, from its files)

    if source is not None and store is not None:
        raise UserError("give either tiles to embed (SOURCE) or --store, not both")
    if (points is not None or tile_size is not None) and source is None:
        raise UserError("--points and --tile-size go with a slide SOURCE, not --store")
    if heatmaps is not None and (kind, level) != ("model", "slide"):  # before any work
        if store is None:
            raise UserError("--heatmaps needs --store (a store extracted from slides)")
        from mito.report.slides import check_heatmap_dir, check_heatmap_store

        check_heatmap_dir(heatmaps, overwrite, protect=(store, model))
        check_heatmap_store(store)
    check_predict_out(out, model, store, source, overwrite)  # before any work, whatever kind of model
    if (kind, level) == ("model", "slide"):
        _predict_slides(model, store, source, out, heatmaps, overwrite)
        return
    df = _predict_tiles(cfg, kind)
    if heatmaps is not None:
        _heatmaps(df, store, heatmaps, overwrite, model)
    from mito.heads.predict import not_predicted_lines

    for note in not_predicted_lines(df):  # skipped slides and unreadable tiles, as extract lists them
        console.print(note, style="yellow", highlight=False, markup=False)

    from mito.heads.predict import agreement, agreement_text

    counts = ", ".join(f"{k} {v}" for k, v in df["pred"].value_counts().items())
    console.print(f"{len(df)} tiles predicted ({counts}) -> {out}", highlight=False)
    said = agreement_text(agreement(df))
    if said:
        console.print(said, highlight=False)


def _predict_tiles(cfg: Any, kind: Optional[str]) -> Any:
    """`mito predict` with a tile-level model: a fine-tuned network embeds its own images, a head reads a store or
    the features of new tiles embedded the model's way; returns the predictions."""
    from mito.app.predict import predict
    from mito.bench import predict_finetuned

    w, model, out, points = cfg.weights, Path(cfg.model), Path(cfg.out), Path(cfg.points) if cfg.points else None
    if kind != "finetuned-model":
        return predict(
            model,
            store=cfg.store,
            source=cfg.source,
            out_csv=out,
            device=cfg.device,
            weights=w or None,
            points=points,
            tile_size=cfg.tile_size,
            overwrite=cfg.overwrite,
            progress=cfg.progress,
        )
    if cfg.source is None:  # a fine-tuned network embeds its own images: it cannot read a store
        raise UserError(f"{model} is a fine-tuned model: give new tiles (SOURCE), not --store")
    if len(w) > 1:
        raise UserError("a fine-tuned model takes one --weights NAME=PATH")
    if points is not None or cfg.tile_size is not None:
        raise UserError("a fine-tuned model predicts tile images (a folder or CSV), not slide points")
    return predict_finetuned(model, cfg.source, out_csv=out, device=cfg.device, weights=next(iter(w.values()), None))


def _predict_slides(model: Path, store: Optional[str], source: Optional[str], out: Path, pictures: Optional[Path], overwrite: bool) -> None:
    """`mito predict` with a slide-level model: slides.csv, slides.tiles.csv, optional pictures; prints a summary."""
    from mito.app.predict import predict_slides
    from mito.heads import left_out_line, tiles_csv_path
    from mito.heads.predict import agreement, agreement_text

    if store is None or source is not None:
        raise UserError(f"{model} is a slide-level model: predict the bags of a store with --store (new tiles: mito extract them first)")
    slides, _ = predict_slides(model, store, out, pictures, overwrite)
    counts = ", ".join(f"{k} {v}" for k, v in slides["pred"].value_counts().items())
    console.print(f"{len(slides)} bags predicted ({counts}) -> {out}; tile weights -> {tiles_csv_path(out)}", highlight=False, markup=False)
    said = agreement_text(agreement(slides), unit="bags")
    if said:
        console.print(said, highlight=False, markup=False)
    if slides.attrs.get("left_out"):
        console.print(left_out_line(slides.attrs["left_out"], "not predicted"), style="yellow", highlight=False, markup=False)
    if pictures is not None:
        console.print(f"wrote {len(slides)} pictures to {pictures}", highlight=False, markup=False)


@app.command("zero-shot")
@friendly
def zero_shot_cmd(  # options only: the spec is built by mito.cli_spec.gather
    ctx: typer.Context,
    store: Optional[str] = typer.Option(
        None, "--store", "-s", help="Store extracted with a vision-language backbone (conch, plip, quiltnet-b-32)."
    ),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", "-b", help="The vision-language backbone whose features and text tower to use."
    ),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="JSON {class: \\[prompt, ...]}, or a shipped set: mitosis, tissue."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV to write: tile_id, path, label when known, pred, p_<class>."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Weight file or snapshot folder (as for mito extract)."),
    task: Optional[str] = typer.Option(
        None, help="Label column / proxy task for metrics and the class set (default: the store's only task)."
    ),
    prompt_context: Optional[str] = typer.Option(
        None,
        "--prompt-context",
        help="Tile-table columns formatted into every prompt, e.g. '{dataset} scanner' (a {context} slot in a prompt, else appended).",
    ),
    variant: Optional[str] = typer.Option(None, help="Store variant to score, e.g. z1:rgb (default z1:rgb, else the backbone's first)."),
    device: str = typer.Option("auto", help="Text-tower device: auto, cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    positive: Optional[str] = typer.Option(
        None,
        "--positive",
        help="Two-class tasks: the positive class of PR-AUC and ECE (default: the minority class of the labelled tiles).",
    ),
    config: Optional[Path] = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
) -> None:
    """Classify stored tiles from text prompts alone (cosine similarity x the model's logit scale, prompt ensembles)."""
    from mito.core.io import atomic_write, check_output_file, csv_probabilities
    from mito.extract import pick_device
    from mito.heads import run_zero_shot
    from mito.store import store_input_files

    cfg = gather(ctx, "zero-shot", ctx.params, raw=read_config(config, ("zero-shot",)), sets=sets).validate()
    out = Path(cfg.out)
    check_output_file(out, cfg.overwrite, protect=(cfg.store,), inputs=store_input_files(cfg.store))
    r = run_zero_shot(
        cfg.store,
        cfg.backbone,
        cfg.prompts,
        weights=cfg.weights,
        task=cfg.task,
        context=cfg.prompt_context,
        variant=cfg.variant,
        device=str(pick_device(cfg.device)),
        positive=cfg.positive,
    )
    atomic_write(out, lambda p: csv_probabilities(r.predictions).to_csv(p, index=False), ".csv")
    how = "computed and cached" if r.computed else "read from the cache"
    console.print(f"text embeddings {how}: {r.text_file}", highlight=False)
    counts = ", ".join(f"{k} {v}" for k, v in r.predictions["pred"].value_counts().items())
    console.print(f"{len(r.predictions)} tiles scored from {r.feature} ({counts}) in {r.seconds:.1f} s -> {out}", highlight=False)
    if r.metrics:
        m = r.metrics
        console.print(
            f"{m['n']} labelled tiles: balanced acc {m['balanced_accuracy']:.3f}, AUROC {m['auroc']:.3f}, kappa {m['kappa']:.3f}, "
            f"weighted F1 {m['weighted_f1']:.3f}; confusion matrix (rows = true {', '.join(m['classes'])}): {m['confusion_matrix']}",
            highlight=False,
        )
        if m.get("positive"):
            from mito.core.tasks import positive_line

            console.print(
                positive_line(m["positive"], m.get("positive_source", "")) + f"; PR-AUC {m['pr_auc']:.3f}", highlight=False, markup=False
            )


# ==================================================================== bench: bench / lora / umap / report
# (bench section)


def _bench_floats(value: str, what: str) -> list[float]:
    try:
        return [float(v) for v in split_list(value)]
    except ValueError:
        raise UserError(f"{what} must be numbers separated by commas, got {value!r}") from None


@app.command("bench")
@friendly(on_interrupt="nothing was written; re-run to start over")
def bench_cmd(  # options only: the spec is built by mito.cli_spec.gather
    ctx: typer.Context,
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Embedding store made by mito extract (required here or in --config)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for leaderboard.csv/.json, predictions, PNGs and report.html."),
    task: Optional[str] = typer.Option(
        None, help="Task to rank: a proxy task (mitosis, phase, atypia, dataset) or a label column (default: the store's only task)."
    ),
    proxy: Optional[str] = typer.Option(
        None, help="'all' or comma-separated tasks: one leaderboard over several proxy tasks (overrides --task)."
    ),
    target: Optional[str] = typer.Option(
        None,
        "--target",
        help="With --proxy: the task the others should predict; the report checks whether each proxy ranks the backbones as it does (default: --task, else the store's only task).",
    ),
    features: Optional[str] = typer.Option(
        None, help="Comma-separated feature sets: all (default), a backbone name (all its sets), or variant keys joined by '+'."
    ),
    heads: Optional[str] = typer.Option(None, help="Comma-separated heads (default: every head)."),
    noise: Optional[str] = typer.Option(None, help="Comma-separated feature-noise levels, one row each (default: each head's default)."),
    param: list[str] = typer.Option([], "--param", help="Head option HEAD.KEY=VALUE, e.g. mlp.hidden=512 (repeatable)."),
    folds: int = typer.Option(5, help="Number of folds."),
    cv: str = typer.Option(
        "auto",
        help="auto (the split column when the task has one, else kfold), kfold (stratified group k-fold by slide), split, or leave-group-out (only the --shift-column rows).",
    ),
    shift_column: Optional[str] = typer.Option(
        None,
        help="Domain shift: also hold out each value of this column (e.g. dataset) in turn, train on the others; rows 'tested on' it, with the gap to in-domain.",
    ),
    seed: int = typer.Option(0, help="Seed of the folds and bootstrap."),
    jobs: int = typer.Option(0, help="Parallel worker processes (0 = every core)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the 95% CI (0 = none)."),
    standardize: bool = typer.Option(False, "--standardize/--no-standardize", help="Scale each feature on the training rows first."),
    pca: Optional[int] = typer.Option(None, help="Reduce the features to N principal components first."),
    feature_search: bool = typer.Option(
        False,
        "--feature-search",
        help="Add a row per head whose variants are forward-selected inside each fold on its training rows (--set search_max=N, search_folds=K).",
    ),
    include: list[str] = typer.Option(
        [], "--with", help="Another leaderboard folder to merge in, e.g. a mito lora --out (its folds must match; repeatable)."
    ),
    zero_shot: Optional[str] = typer.Option(
        None,
        "--zero-shot",
        help="Prompts JSON (or: mitosis, tissue): a zero-shot row per vision-language backbone and the text-linear head.",
    ),
    umap: bool = typer.Option(True, "--umap/--no-umap", help="UMAP of the best feature set, coloured by each task."),
    top: int = typer.Option(20, help="Rows per task to print."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing --out folder (only one that mito bench or mito lora wrote)."
    ),
    few_shot: Optional[str] = typer.Option(
        None,
        "--few-shot",
        help="Learning curve: labelled tiles per class, e.g. 1,2,4,8,16,32,all: extra rows with each head trained on K tiles per class drawn from each fold's training part ('all' = the normal rows).",
    ),
    few_shot_draws: Optional[int] = typer.Option(
        None, "--few-shot-draws", help="Seeded draws per K (default 5; one when K covers every class)."
    ),
    level: str = typer.Option("tile", help="tile, or slide: rank slide-level heads (default mean-linear,abmil) on folds of bags."),
    bag_column: Optional[str] = typer.Option(None, help="--level slide: column grouping tiles into bags (default: slide)."),
    bag_label: Optional[str] = typer.Option(None, help="--level slide: any:VALUE = a bag is 'yes' when any tile's --task label is VALUE."),
    group_column: Optional[str] = typer.Option(
        None, help="--level slide: keep bags of one group (e.g. patient) in one fold (default: by bag)."
    ),
    positive: Optional[str] = typer.Option(None, "--positive", help=POSITIVE_HELP + " With several tasks: those that have that class."),
    config: Optional[Path] = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
) -> None:
    """Rank every feature set x head of a store on slide-grouped folds; write the leaderboard and report.html."""
    slide, g = _level_spec(
        ctx,
        ("bench", "bench-slide"),
        BENCH_COMMAND,
        lambda slide: {
            "noise": lambda v: _bench_floats(v, "--noise"),
            **({} if slide else {"features": list_or_none, "heads": list_or_none}),
        },
    )
    g.merge("head_params", parse_head_params(param, "--param"))
    if slide:
        _bench_slides(g, out, overwrite, top)
        return
    from mito.bench import sigterm_as_interrupt

    if not isinstance(g.values.get("store"), str):
        raise UserError("bench needs --store (the embedding store), or store: in the --config file")
    store = g.values["store"]
    from mito.core.io import RUN_KINDS, check_output_dir, is_artifact

    check_output_dir(
        out, overwrite, is_ours=lambda p: is_artifact(p, *RUN_KINDS), protect=(store, *g.values.get("include", [])), what="bench folder"
    )
    if target and not proxy:
        raise UserError("--target goes with --proxy (the tasks whose rankings it is compared with)")
    if "tasks" not in g.values or given(ctx, "task") or proxy:  # a file's tasks stand unless the command line names tasks
        g.values["tasks"], g.values["target"] = _bench_tasks(store, task, proxy, target)
        g.origin["tasks"] = "flag"
    cfg = g.validate()
    with sigterm_as_interrupt():
        lb = _run_bench(cfg, out, umap)
    _print_bench(lb, cfg, out, top)


BENCH_COMMAND = ("out", "overwrite", "top", "umap", "level", "param", "proxy", "jobs")  # bench's parameters that are no spec field


def _bench_tasks(store: str, task: Optional[str], proxy: Optional[str], target: Optional[str]) -> tuple[list[str], Optional[str]]:
    """The tasks `mito bench` ranks (--proxy, else --task, else the store's only task) and the --proxy target."""
    from mito.bench import available_tasks
    from mito.core.tasks import default_task, resolve_task
    from mito.datasets import PROXY_TASKS
    from mito.store import open_store

    with open_store(store) as s:
        tiles, store_tasks = s.tiles, s.tasks
    if not proxy:
        return [default_task(store_tasks, task)], None
    tasks = available_tasks(tiles, store_tasks, PROXY_TASKS) if proxy.strip() == "all" else split_list(proxy)
    target = target or task or (default_task(store_tasks, None, "--target") if store_tasks else None)
    if target:
        resolve_task(tiles, target, PROXY_TASKS)  # an unknown target: one line now, not a skipped task after the fits
    return [*tasks, *([target] if target and target not in tasks else [])], target


def _run_bench(cfg: Any, out: Path, umap: bool) -> Any:
    """Run the leaderboard of ``cfg``, say what was skipped, write the folder (leaderboard, UMAPs, report) atomically."""
    from mito.bench import run_bench, save_leaderboard
    from mito.core.io import RUN_KINDS, atomic_dir, is_artifact
    from mito.report import build_report, leaderboard_umaps

    lb = run_bench(cfg)
    for t, why in lb.meta.get("skipped_tasks", {}).items():
        err_console.print(f"skipped task {t}: {why}", style="yellow", highlight=False, markup=False)
    for why in lb.meta.get("zero_shot", {}).get("skipped", []):
        err_console.print(why, style="yellow", highlight=False, markup=False)
    for grp, why in lb.meta.get("shift", {}).get("skipped", {}).items():
        err_console.print(f"no shift rows for {grp}: {why}", style="yellow", highlight=False, markup=False)
    for t, tm in lb.meta.get("tasks", {}).items():
        if tm.get("cv_warning"):
            err_console.print(f"warning ({t}): {tm['cv_warning']}", style="yellow", highlight=False, markup=False)

    def fill(tmp: Path) -> None:
        save_leaderboard(lb, tmp)
        if umap:
            leaderboard_umaps(cfg.store, lb, tmp, progress=True)
        build_report(tmp, progress=True)

    atomic_dir(out, fill, replace=lambda p: is_artifact(p, *RUN_KINDS) or not any(p.iterdir()))
    return lb


def _print_bench(lb: Any, cfg: Any, out: Path, top: int) -> None:
    """The leaderboard table, the tasks' summaries, the learning curve and proxy validity, and where it was written."""
    from mito.bench import task_summary_lines
    from mito.report import leaderboard_table

    console.print(leaderboard_table(lb.rows, top=top))
    for line in task_summary_lines(lb):
        console.print(line, highlight=False, markup=False)
    if cfg.few_shot:
        from mito.report import curve_rich_table

        console.print(curve_rich_table(lb.rows) or "")
    if lb.meta.get("proxy_validity"):
        from mito.report import proxy_rich_table

        table, warn = proxy_rich_table(lb.meta)
        console.print(table or "")
        for line in warn:
            err_console.print(f"warning: {line}", style="yellow", highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'leaderboard.csv'}, {out / 'leaderboard.json'} and {out / 'report.html'}")


def _bench_slides(g: Any, out: Path, overwrite: bool, top: int) -> None:
    """`mito bench --level slide`: rank the slide heads, write the leaderboard folder and report, print it."""
    from mito.bench import DEFAULT_SLIDE_HEADS, run_slide_bench, save_leaderboard
    from mito.bench.leaderboard import task_positive_lines
    from mito.core.io import RUN_KINDS, atomic_dir, check_output_dir, is_artifact
    from mito.heads import left_out_line
    from mito.report import build_report, leaderboard_table

    if g.values.get("task") is None:
        raise UserError("--level slide needs --task (the bag label column, or the tile label with --bag-label any:VALUE)")
    if not g.values.get("heads"):
        g.values["heads"] = list(DEFAULT_SLIDE_HEADS)
    check_output_dir(out, overwrite, is_ours=lambda p: is_artifact(p, *RUN_KINDS), protect=(g.values.get("store"),), what="bench folder")
    cfg = g.validate()
    lb = run_slide_bench(cfg)

    def fill(tmp: Any) -> None:
        save_leaderboard(lb, tmp)
        build_report(tmp, progress=True)

    atomic_dir(out, fill, replace=lambda p: is_artifact(p, *RUN_KINDS) or not any(p.iterdir()))
    t = lb.meta["tasks"][lb.rows["task"].iat[0]]
    console.print(f"{t['description']}; {t['cv_description']}", highlight=False, markup=False)
    for line in task_positive_lines(lb.meta):
        console.print(line, highlight=False, markup=False)
    if t.get("left_out"):
        console.print(left_out_line(t["left_out"]), style="yellow", highlight=False, markup=False)
    console.print(leaderboard_table(lb.rows, top=top))
    console.print(f"wrote {out}/leaderboard.csv, leaderboard.json and report.html", highlight=False, markup=False)


@app.command("compare")
@friendly
def compare_cmd(
    bench: Path = typer.Option(..., "--bench", help="A folder written by mito bench (leaderboard.json + predictions.npz)."),
    rows: str = typer.Option(..., "--rows", help="Two rows, A,B: rank numbers or row ids (from leaderboard.csv)."),
    task: Optional[str] = typer.Option(None, "--task", help="The task whose ranks --rows means (when the bench has several)."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", min=1, max=1_000_000, help="Bootstrap replicates (default: the bench's)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Bootstrap seed (default: the bench's)."),
) -> None:
    """One paired comparison of two leaderboard rows on the same test tiles: every metric's A - B with CI and p, DeLong."""
    from rich.console import Console

    from mito.bench import BenchError, compare_rows, load_leaderboard
    from mito.report import comparison_text

    refs = split_list(rows)
    if len(refs) != 2:
        raise BenchError("--rows takes two rows, e.g. --rows 1,2 (rank numbers) or two row ids")
    lb = load_leaderboard(bench)
    a, b, comp = compare_rows(lb, refs[0], refs[1], task=task, n_boot=n_boot, seed=seed)
    cv = ((lb.meta.get("tasks") or {}).get(a["task"]) or {}).get("cv_description", "")
    if isinstance(a.get("held_out"), str) and a["held_out"]:  # a shift row: its own protocol
        cv = ((((lb.meta.get("shift") or {}).get("tasks") or {}).get(a["task"]) or {}).get(a["held_out"]) or {}).get("cv_description", cv)
    console = Console()
    for part in comparison_text(a, b, comp, cv):
        console.print(part)


@app.command("lora")
@friendly(on_interrupt="finished epochs are kept (a checkpoint per fold); re-run the same command to resume")
def lora_cmd(  # options only: the spec is built by mito.cli_spec.gather
    ctx: typer.Context,
    source: Optional[str] = typer.Argument(
        None, help="The tiles: an ImageFolder folder or CSV manifest (the same one the store was extracted from)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder: checkpoints (resumable), fold models, leaderboard files."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone to fine-tune."),
    task: str = typer.Option("mitosis", help="Task: a proxy task or label column, as in mito bench."),
    mode: str = typer.Option("lora", help="lora (peft adapters + linear classifier), linear-probe (frozen backbone) or full (end-to-end)."),
    weights: Optional[str] = typer.Option(None, help="Backbone weight file or folder (default: resolved as mito extract does)."),
    label_name: Optional[str] = typer.Option(
        None, help="Name the folder labels got at extraction (mito extract --task; default: mitosis for proxy tasks, else the task)."
    ),
    rank: int = typer.Option(8, help="LoRA rank."),
    alpha: int = typer.Option(16, help="LoRA alpha."),
    dropout: float = typer.Option(0.3, help="LoRA dropout."),
    targets: Optional[str] = typer.Option(
        None,
        help="Comma-separated layer names (suffixes) to adapt (default: every linear layer, i.e. attention + MLP, for ViTs; every non-grouped conv for CNNs).",
    ),
    lr: float = typer.Option(1e-4, help="Adam learning rate."),
    weight_decay: float = typer.Option(1e-5, help="Adam weight decay."),
    batch_size: int = typer.Option(32, help="Batch size."),
    epochs: int = typer.Option(100, help="Maximum epochs per fold."),
    patience: int = typer.Option(15, help="Epochs without validation gain before stopping."),
    epoch_samples: Optional[int] = typer.Option(
        None, help="Tiles drawn (class-balanced, with replacement) per epoch (default: the training-set size)."
    ),
    val_samples: Optional[int] = typer.Option(None, help="Score early stopping on at most this many validation tiles (a fixed subset)."),
    input_size: Optional[int] = typer.Option(None, help="Input pixels (default: the crops' native size)."),
    folds: int = typer.Option(5, help="Number of folds (as in mito bench, so the rows join its leaderboard)."),
    run_folds: Optional[int] = typer.Option(None, help="Train only the first N folds (a budget)."),
    cv: str = typer.Option("auto", help="auto, kfold or split, as in mito bench."),
    seed: int = typer.Option(0, help="Seed of folds, sampling and initialisation."),
    max_minutes: Optional[float] = typer.Option(
        None, help="Training-time cap per fold in minutes, > 0 (a budget; the best epoch so far is kept). Default on CPU: 10; on GPU: none."
    ),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flips, 90-degree rotations and mild colour jitter."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    workers: Optional[int] = typer.Option(None, help="Image-decoding workers (default: 0 on CPU, up to 8 on GPU)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the 95% CI."),
    positive: Optional[str] = typer.Option(None, "--positive", help=POSITIVE_HELP),
    config: Optional[Path] = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
) -> None:
    """Fine-tune a backbone (LoRA, linear probe or full) on the leaderboard's folds; re-running resumes."""
    from mito.bench import run_finetune, sigterm_as_interrupt, task_summary_lines
    from mito.report import leaderboard_table

    cfg = gather(ctx, "lora", ctx.params, raw=read_config(config, ("lora",)), sets=sets, convert={"targets": list_or_none}).validate()
    with sigterm_as_interrupt():
        lb = run_finetune(cfg, note=lambda text: err_console.print(f"[yellow]{text}[/]", highlight=False))
    console.print(leaderboard_table(lb.rows))
    for line in task_summary_lines(lb):
        console.print(line, highlight=False, markup=False)
    r = lb.rows.iloc[0]
    console.print(f"budget: {r['budget']}")
    console.print(f"models: {', '.join(r['models'])} (use with mito predict --model)")
    console.print(
        f"join the heads' leaderboard: mito bench --store STORE --task {cfg.task} --with {cfg.out} --out REPORT_DIR"
        + (f" --positive {cfg.positive}" if cfg.positive else "")
    )


@app.command("umap")
@friendly
def umap_cmd(
    store: str = typer.Option(..., "--store", "-s", help="Embedding store."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    features: Optional[str] = typer.Option(
        None,
        help="Variant keys to concatenate, comma-separated, e.g. efficientnet_lite0:z1:rgb (default: fit-head's, the first backbone's variants at zoom 2 and above).",
    ),
    color_by: Optional[str] = typer.Option(
        None, "--color-by", help="A label column or proxy task to colour the points by (default: the store's only task)."
    ),
    neighbors: int = typer.Option(15, help="UMAP n_neighbors."),
    min_dist: float = typer.Option(0.1, help="UMAP min_dist."),
    max_points: int = typer.Option(20000, help="Subsample to at most this many tiles."),
    seed: int = typer.Option(0, help="Seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing PNG."),
) -> None:
    """2-D UMAP of a feature set, coloured by a label column; saved as PNG."""
    from mito.core.io import check_output_file
    from mito.report import umap_plot
    from mito.store import store_input_files

    if out.suffix.lower() == ".png":
        check_output_file(out, overwrite=overwrite, protect=(store,), inputs=store_input_files(store))
    path = umap_plot(
        store,
        split_list(features) or None,
        color_by,
        out,
        n_neighbors=neighbors,
        min_dist=min_dist,
        max_points=max_points,
        seed=seed,
        progress=True,
    )
    console.print(f"wrote {path}")


@app.command("report")
@friendly
def report_cmd(folder: Path = typer.Argument(..., help="A folder written by mito bench or mito lora.")) -> None:
    """(Re)build report.html (self-contained) and its PNGs from a leaderboard folder."""
    from mito.report import build_report

    console.print(f"wrote {build_report(folder, progress=True)}")


# ==================================================================== whole slides: qc / export / heatmaps


slides_app = typer.Typer(no_args_is_help=True, help="Whole-slide stores: QC pictures.")
app.add_typer(slides_app, name="slides")


@slides_app.command("qc")
@friendly
def slides_qc_cmd(
    store: str = typer.Argument(..., help="Store made by mito extract --mpp ... from slides."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <slide>.png (thumbnail, tissue outline, kept tiles) and skipped.csv."),
    reader: str = typer.Option("auto", help="auto, openslide or tifffile."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder (only one that mito slides qc wrote)."),
) -> None:
    """Per slide: its thumbnail with the tissue mask outlined and every kept tile drawn (PNG)."""
    from mito.report import qc_store

    res = qc_store(store, out, reader, overwrite)
    console.print(f"wrote {len(res['written'])} QC pictures to {out}")
    for sk in res["skipped"]:
        console.print(f"[yellow]slide skipped:[/] {sk['reason']}")


@app.command("export")
@friendly
def export_cmd(
    store: str = typer.Option(..., "--store", "-s", help="Store made by mito extract --mpp ... from slides."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one <slide>.h5 per slide."),
    format: str = typer.Option(
        "trident",
        "--format",
        help="trident: <slide>.h5 with features + coords (level-0 px) and TRIDENT's attrs; clam: h5_files/, "
        "pt_files/, patches/, slides.csv; stamp: <slide>.h5 with feats (float16) + coords (um), slide_table.csv. See docs/interop.md.",
    ),
    features: Optional[str] = typer.Option(
        None, help="Variant key to export, e.g. efficientnet_lite0:z1:rgb (default: the first complete one)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder (only one that mito export wrote)."),
) -> None:
    """Write a slide store's features per slide as TRIDENT, CLAM or STAMP read them."""
    from mito.interop import export

    paths, notes = export(store, format, out, features, overwrite)
    for n in notes:
        console.print(f"[yellow]note:[/] {n}", highlight=False)
    console.print(f"wrote {len(paths)} slide files to {out} ({format})")


@app.command("import")
@friendly(on_interrupt="re-run the same mito import to finish it (every file was checked before the store was written)")
def import_cmd(
    folder: Path = typer.Argument(
        ..., help="TRIDENT/CLAM/STAMP per-slide .h5 files (CLAM: h5_files/ or pt_files/), or an eva embeddings folder (manifest.csv)."
    ),
    store: str = typer.Option(..., "--store", "-s", help="Store to create (or an earlier import's store: its new slides are appended)."),
    format: str = typer.Option("auto", "--format", help="auto, trident, clam, stamp or eva."),
    name: Optional[str] = typer.Option(
        None, "--name", help="Encoder name for the variant <name>:z1:rgb (default: the one the files record)."
    ),
    labels: Optional[Path] = typer.Option(
        None,
        "--labels",
        help="CSV with a slide column (slide, slide_id or FILENAME) and label columns; patient/case_id/PATIENT groups slides.",
    ),
    chunk_rows: int = typer.Option(1024, "--chunk-rows", min=1, help="Rows per storage chunk."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Make a store from features TRIDENT, CLAM, STAMP or eva wrote, so fit-head, bench, compare and umap read them."""
    from mito.interop import import_features

    r = import_features(folder, store, format, name, labels, chunk_rows=chunk_rows, progress=not quiet)
    if r.known_slides:
        console.print(f"{len(r.known_slides)} slides were already in {store} from the same files")
    if r.empty_slides:
        console.print(
            f"[yellow]note:[/] {len(r.empty_slides)} files hold no patch ({', '.join(r.empty_slides[:3])}): no rows for them",
            highlight=False,
        )
    if r.unlabelled:
        console.print(
            f"[yellow]note:[/] {len(r.unlabelled)} slides have no row in {labels} ({', '.join(r.unlabelled[:3])}): no labels",
            highlight=False,
        )
    if r.unused_labels:
        console.print(f"{r.unused_labels} rows of {labels} name no slide of these files")
    what = "created" if r.created else "appended to"
    console.print(
        f"{what} {store}: {r.added_tiles} tiles of {len(r.added_slides)} {r.format} slides as {r.variant}"
        + (f"; labels: {', '.join(r.label_columns)}" if r.label_columns else ""),
        highlight=False,
    )


@app.command("rerun")
@friendly
def rerun_cmd(
    folder: Path = typer.Argument(..., help="An output mito wrote: a model, bench, LoRA or export folder (its run.yaml), or a store."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to make it again (a new folder or store)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out that mito wrote (never a store)."),
    store: Optional[str] = typer.Option(
        None, "--store", "-s", help="Where the store the run read is now (it must hold the recorded tiles; default: the recorded path)."
    ),
) -> None:
    """Make an output again from the spec it recorded (same store, settings and seed: the same numbers)."""
    from mito.app.rerun import rerun

    r = rerun(folder, out, overwrite, store)
    console.print(f"re-ran {r.job} of {folder} ({len(r.results)} run{'s' * (len(r.results) != 1)}) into {out}", highlight=False)
    if r.job == "fit-head":
        _print_metrics(r.results[0])
    elif r.job in ("bench", "bench-slide", "lora"):
        from mito.report import leaderboard_table

        console.print(leaderboard_table(r.results[0].rows, top=10))


def _heatmaps(df: Any, store: Optional[str], folder: Path, overwrite: bool, model: Path) -> None:
    from mito.report import write_heatmaps
    from mito.store import open_store

    if store is None:
        raise UserError("--heatmaps needs --store (a store extracted from slides)")
    with open_store(store, "r") as s:
        tiles = s.tiles
    paths = write_heatmaps(df, tiles, folder, overwrite=overwrite, protect=(store, model))
    console.print(f"wrote {len(paths)} heatmaps to {folder}")


# ==================================================================== specs: spec init / spec show


spec_app = typer.Typer(no_args_is_help=True, help="Job specs: write a commented template; show the spec of a file or output.")
app.add_typer(spec_app, name="spec")
JOB_COMMANDS: dict[str, Callable[..., Any]] = {
    "extract": extract,
    "fit": fit_head_cmd,
    "fit-slide": fit_head_cmd,
    "bench": bench_cmd,
    "bench-slide": bench_cmd,
    "lora": lora_cmd,
    "zero-shot": zero_shot_cmd,
    "predict": predict_cmd,
}


@spec_app.command("init")
@friendly
def spec_init_cmd(
    job: str = typer.Argument(..., help="extract, fit, fit-slide, bench, bench-slide, lora, zero-shot or predict."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="YAML file to write (default: print the template)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Write a commented spec template: every key with its default and what it means (then run with --config)."""
    from mito.cli_spec import command_defaults, job_model
    from mito.core.io import atomic_write
    from mito.core.spec import spec_template

    if job not in JOB_COMMANDS:
        raise UserError(f"unknown job {job!r}; choose one of {', '.join(JOB_COMMANDS)}")
    defaults = command_defaults(JOB_COMMANDS[job], job) if not job.endswith("-slide") else {}
    text = spec_template(job_model(job), job, defaults)
    if out is None:
        print(text, end="")
        return
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    atomic_write(out, lambda p: Path(p).write_text(text, encoding="utf-8"), ".yaml")
    command = {"fit": "fit-head", "fit-slide": "fit-head", "bench-slide": "bench"}.get(job, job)
    console.print(f"wrote {out}; edit it, then: mito {command} --config {out}", highlight=False, markup=False, soft_wrap=True)


@spec_app.command("show")
@friendly
def spec_show_cmd(
    path: Path = typer.Argument(..., help="A spec file, a run.yaml, an output folder holding run.yaml, or a store (its recorded runs)."),
) -> None:
    """Print the effective spec (every key, defaults filled in) of a spec file, of an output's run.yaml or of each run
    that wrote a store."""
    from mito.cli_spec import job_model, resolve_job
    from mito.core.io import is_store_dir
    from mito.core.runrecord import check_record, dump_record
    from mito.core.spec import dump_spec, file_where, load_spec, validate_spec
    from mito.store import open_store

    if is_store_dir(path):  # a store keeps its records in its attributes (one per extract or import run), no run.yaml
        with open_store(path, "r") as s:
            runs = s.runs
        if not runs:
            raise UserError(f"{path} records no runs: it was made before mito recorded its specs")
        for i, doc in enumerate(runs):
            rec = check_record(doc, f"{path} (run {i + 1})")
            print(f"# run {i + 1} of {len(runs)}")
            for key, value in rec.items():
                if key not in ("job", "spec"):
                    print(f"# {key}: {json.dumps(value, default=str)}")
            print(dump_record({"job": rec["job"], **rec["spec"]}), end="" if i == len(runs) - 1 else "---\n")
        return
    file = path / "run.yaml" if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise UserError(f"{path} has no run.yaml: it was made before mito recorded its specs, or not by mito")
    raw = load_spec(file)
    if raw.job is None:
        raise UserError(f"{file.name}: names no job (a spec starts with job: fit, bench, extract, ...; mito spec init JOB)")
    for key, value in raw.record.items():  # how a run.yaml's output was made, as comments: the spec stays loadable
        print(f"# {key}: {json.dumps(value, default=str)}")
    if raw.job in ("export", "import"):  # jobs with no spec model: the recorded spec as written
        print(dump_record({"job": raw.job, **raw.values}), end="")
        return
    job = resolve_job(raw.job, raw.values)
    spec = validate_spec(job_model(job), raw.values, file_where(raw))
    print(dump_spec(spec, job), end="")


from mito.cli_help import install as _install_help  # noqa: E402  (after every command: their help groups)

_install_help(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
