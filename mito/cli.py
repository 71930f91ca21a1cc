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


# ==================================================================== heads: fit-head / predict
# (heads section)


# ==================================================================== bench: bench / lora / umap / report
# (bench section)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
