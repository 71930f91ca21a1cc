"""`--help` that reads at 80 columns: option names in one column, the description in the rest, options in groups.

Typer lays every option out over six columns (long name, short name, --no- form, its short form, type, help), so at 80
columns the description is squeezed to ~20 characters and long words end in '…'. :func:`install` swaps typer's
options panel for one with two columns (names and type stacked on the left, at most ~26 characters; the description,
its default and [required], folded but never cut, on the right) and puts each command's options in the groups of
:data:`PANELS`. Both touch typer's help rendering only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

NAME_WIDTH = 26  # the options' name column at most, so a description keeps 45+ of 80 columns

# command -> help group -> parameters (their Python names); parameters not named stay under "Options"; every job
# command's --config and --set come last, in their own "Spec" group (mito.cli CONFIG_OPTION, SET_OPTION)
PANELS: dict[str, dict[str, Sequence[str]]] = {
    "extract": {
        "Input and output": ("store", "task", "label_column", "limit", "sample", "sample_per_class", "seed", "points", "tile_size"),
        "Backbone and views": (
            "backbone",
            "weights",
            "zooms",
            "colors",
            "fit",
            "pad_mode",
            "input_size",
            "augment",
            "augment_colors",
            "augment_seed",
        ),
        "Whole slides": ("mpp", "tile_px", "tile_um", "stride", "min_tissue", "slide_mpp", "reader", "annotations", "label_overlap"),
        "Running": ("batch_size", "workers", "device", "chunk_rows", "compile", "gpus", "quiet"),
    },
    "fit-head": {
        "Data": ("store", "task", "positive", "features", "feature_search", "metadata", "standardize", "pca", "stream", "buffer_rows"),
        "Split": ("split_column", "group_column", "val_fraction", "test_fraction", "test_group", "train_groups", "seed"),
        "Head": ("head", "hidden", "dropout", "loss", "gamma", "balance", "param", "ensemble", "calibrate"),
        "Training": ("noise", "noise_mode", "epochs", "patience", "lr", "batch_size", "precision", "threads"),
        "Slide level": ("level", "bag_column", "bag_label", "max_tiles", "tile_dropout"),
        "From a bench": ("from_bench", "row"),
        "Output": ("out", "overwrite", "as_json"),
    },
    "bench": {
        "Data": ("store", "task", "proxy", "target", "features", "feature_search", "standardize", "pca"),
        "Heads": ("heads", "noise", "param", "include", "zero_shot"),
        "Folds and statistics": ("folds", "cv", "shift_column", "seed", "n_boot", "positive", "few_shot", "few_shot_draws"),
        "Slide level": ("level", "bag_column", "bag_label", "group_column"),
        "Output": ("out", "overwrite", "umap", "top", "jobs"),
    },
    "zero-shot": {
        "Data": ("store", "backbone", "prompts", "weights", "variant", "task", "positive", "prompt_context", "device"),
        "Output": ("out", "overwrite"),
    },
    "predict": {
        "Input": ("model", "store", "points", "tile_size", "weights", "device"),
        "Output": ("out", "overwrite", "heatmaps", "quiet"),
    },
    "lora": {
        "Data and model": ("backbone", "weights", "task", "positive", "label_name", "mode", "input_size", "augment"),
        "LoRA": ("rank", "alpha", "dropout", "targets"),
        "Training": ("lr", "weight_decay", "batch_size", "epochs", "patience", "epoch_samples", "val_samples", "max_minutes"),
        "Folds": ("folds", "run_folds", "cv", "seed", "n_boot"),
        "Output and running": ("out", "device", "workers"),
    },
}


def _plain_help(cell: Any) -> Any:
    """typer's help cell (rich Columns of the text, [default: ...], [required]) as one Text that folds long words
    instead of cutting them with '…'."""
    from rich.text import Text

    items = list(getattr(cell, "renderables", []))
    if not items or not all(isinstance(i, Text) for i in items):
        return cell
    out = Text(" ").join(items)
    out.overflow = "fold"
    return out


def options_panel(*, name: str, params: Sequence[Any], ctx: Any, markup_mode: Any, console: Any) -> None:
    """typer's options panel in two columns: '* --long, -s <type>' over '--no-long', and the description."""
    from rich.panel import Panel
    from rich.table import Table
    from typer import rich_utils as ru

    if not params:
        return
    rows = [_option_row(param, ctx, markup_mode) for param in params]
    width = min(NAME_WIDTH if console.width <= 120 else 2 * NAME_WIDTH, max(len(line) for _, n, _ in rows for line in n.plain.splitlines()))
    table = Table(highlight=True, show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    if any(r[0].plain for r in rows):
        table.add_column(width=1, no_wrap=True)
    table.add_column(width=width, overflow="fold")
    table.add_column(ratio=1, overflow="fold")
    for req, names, text in rows:
        table.add_row(*([req] if any(r[0].plain for r in rows) else []), names, text)
    console.print(Panel(table, border_style=ru.STYLE_OPTIONS_PANEL_BORDER, title=name, title_align=ru.ALIGN_OPTIONS_PANEL))


def _option_row(param: Any, ctx: Any, markup_mode: Any) -> tuple[Any, Any, Any]:
    """One option's (required mark, names with type over the --no- form, description) for options_panel."""
    from rich.text import Text
    from typer import rich_utils as ru
    from typer.core import TyperArgument

    display = param.display_name_raw if isinstance(param, TyperArgument) else None
    if isinstance(param, TyperArgument) and param.metavar is None and param.nargs != 1:
        display = (display or "") + "..."
    longs = [o for o in param.opts if "--" in o]
    shorts = [display if display else o for o in param.opts if "--" not in o]
    names = ru.highlighter(", ".join([*longs, *dict.fromkeys(shorts)]))
    kind = param.display_type_rich(ctx=ctx)
    rng = param._get_number_range_help_str() if hasattr(param, "_get_number_range_help_str") else ""
    if kind:
        names.append(" ")
        names.append(Text(str(kind) + (ru.RANGE_STRING.format(rng) if rng else ""), style=ru.STYLE_TYPES))
    second = list(param.secondary_opts)
    if second:
        names.append("\n")
        names.append(ru.negative_highlighter(", ".join(second)))
    names.overflow = "fold"
    req = Text(ru.REQUIRED_SHORT_STRING, style=ru.STYLE_REQUIRED_SHORT) if param.required else Text("")
    return req, names, _plain_help(ru._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode))


def _expected_signature() -> bool:
    from typer import rich_utils as ru

    fn = getattr(ru, "_print_options_panel", None)
    if fn is None or not hasattr(ru, "_get_parameter_help"):
        return False
    params = inspect.signature(fn).parameters
    return set(params) == {"name", "params", "ctx", "markup_mode", "console"}


def set_panels(command: Callable[..., Any], panels: dict[str, Sequence[str]]) -> None:
    """Give the options of ``command`` (a function decorated with typer) their help groups, shown in the order of
    ``panels`` (typer shows groups in the order their first option is declared; arguments keep their places)."""
    from typer.models import ArgumentInfo

    sig = inspect.signature(command)
    rank = {}
    for i, (panel, names) in enumerate(panels.items()):
        for n in names:
            p = sig.parameters.get(n)
            if p is not None and hasattr(p.default, "rich_help_panel") and not isinstance(p.default, ArgumentInfo):
                if getattr(p.default, "rich_help_panel", None) is None:
                    p.default.rich_help_panel = panel
                rank[n] = i
    params = list(sig.parameters.values())
    order = sorted(
        range(len(params)),
        key=lambda j: (
            -2
            if params[j].default is inspect.Parameter.empty
            else -1
            if isinstance(params[j].default, ArgumentInfo)
            else rank.get(params[j].name, len(panels)),
            j,
        ),
    )  # typer's context first (no default), then arguments, then the groups in order
    command.__signature__ = sig.replace(parameters=[params[j] for j in order])  # type: ignore[attr-defined]


def install(app: Any) -> None:
    """Two-column option panels (when this typer renders its help the way mito expects) and the groups of PANELS."""
    from typer import rich_utils as ru

    if _expected_signature() and ru._print_options_panel is not options_panel:
        ru._print_options_panel = options_panel
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        if name in PANELS and info.callback is not None:
            set_panels(info.callback, PANELS[name])
