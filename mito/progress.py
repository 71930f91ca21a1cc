"""Progress for every long step: one bar style (count, rate, elapsed, ETA) and a spinner for steps with no count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

_STDERR = Console(stderr=True)


def progress_bar(unit: str = "items", enabled: bool = True, transient: bool = False, info: bool = False) -> Any:
    """A rich Progress on stderr: description, bar, done/total, rate in ``unit``/s, elapsed, ETA (and an ``info`` field)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols: list[Any] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} " + unit + "/s") if unit else TextColumn(""),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    if info:
        cols.append(TextColumn("{task.fields[info]}"))
    return Progress(*cols, console=_STDERR, disable=not enabled, transient=transient)


def add_task(bar: Any, description: str, total: float | None) -> Any:
    """Add a task with the fields progress_bar's columns expect."""
    return bar.add_task(description, total=total, rate="-", info="")


def advance(bar: Any, task: Any, n: float, started: float, done: float) -> None:
    """Advance ``task`` by ``n`` and show the rate since ``started`` (a perf_counter time) over ``done`` items in all."""
    import time

    dt = max(time.perf_counter() - started, 1e-9)
    bar.update(task, advance=n, rate=f"{done / dt:.1f}")


@contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with ``message`` on stderr while a step without a count runs (building a model, fitting UMAP ...)."""
    if not enabled:
        yield
        return
    with _STDERR.status(message, spinner="dots"):
        yield
