"""Progress for every long step: one bar style (count, rate, elapsed, ETA) and a spinner for steps with no count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console

_STDERR = Console(stderr=True)


def progress_bar(unit: str = "items", enabled: bool = True, transient: bool = False, info: bool = False) -> Any:
    """A rich Progress on stderr: description, bar, done/total, rate in ``unit``/s, elapsed, ETA (and an ``info`` field)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
    # a transient bar leaves nothing on a terminal; into a log or pipe rich would still write an empty line
    return Progress(*cols, console=_STDERR, disable=not enabled or (transient and not _STDERR.is_terminal), transient=transient)


def add_task(bar: Any, description: str, total: float | None) -> Any:
    """Add a task with the fields progress_bar's columns expect."""
    return bar.add_task(description, total=total, rate="-", info="")


def advance(bar: Any, task: Any, n: float, started: float, done: float) -> None:
    """Advance ``task`` by ``n`` and show the rate since ``started`` (a perf_counter time) over ``done`` items in all."""
    import time

    dt = max(time.perf_counter() - started, 1e-9)
    bar.update(task, advance=n, rate=f"{done / dt:.1f}")


@dataclass
class GroupProgress:
    """A second line under an overall bar: the group (e.g. slide) the latest items belong to, and its items done/total."""

    bar: Any
    task: Any
    codes: np.ndarray  # group code of every item index
    names: list[str]
    totals: np.ndarray  # items per group in this run
    done: np.ndarray
    current: int = -1
    since: tuple[float, int] = (0.0, 0)  # (perf_counter, items done) when the line switched to the current group
    last: float | None = None  # perf_counter of the previous update: a group that starts in a batch started then

    def advance(self, items: np.ndarray) -> None:
        """Count ``items`` (indices) as done; the line follows the group of the last one."""
        import time

        if len(items) == 0:
            return
        c = self.codes[items]
        before = int(self.done[int(c[-1])])
        np.add.at(self.done, c, 1)
        g = int(c[-1])
        now = time.perf_counter()
        if g != self.current:  # a new group: restart the line (its rate and ETA are its own)
            self.current = g  # its items of this update took since the previous update (the first update: untimed)
            self.since = (self.last, before) if self.last is not None else (now, int(self.done[g]))
            self.bar.reset(self.task, total=int(self.totals[g]), completed=int(self.done[g]), description=f"  {self.names[g]}")
        self.last = now
        if now <= self.since[0]:  # no time measured yet for this group: no rate rather than a made-up one
            self.bar.update(self.task, completed=int(self.done[g]), rate="-")
            return
        rate = (int(self.done[g]) - self.since[1]) / (now - self.since[0])
        self.bar.update(self.task, completed=int(self.done[g]), rate=f"{rate:.1f}")


def group_progress(bar: Any, items: np.ndarray, groups: Any, unit: str = "") -> GroupProgress:
    """Add a per-group line (e.g. per slide) to ``bar`` for the item indices ``items``; ``groups`` labels every index."""
    import pandas as pd

    codes, names = pd.factorize(pd.Series(groups).astype(str))
    totals = np.bincount(codes[items], minlength=len(names))
    task = bar.add_task(f"  {unit}", total=None, rate="", info="")
    return GroupProgress(bar, task, np.asarray(codes), [str(n) for n in names], totals, np.zeros(len(names), np.int64))


@contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with ``message`` and the time so far on stderr while a step without a count runs (building a model,
    fitting UMAP, writing a report ...); into a log or pipe, where a spinner draws nothing, ``message`` once as a line."""
    if not enabled:
        yield
        return
    if not _STDERR.is_terminal:
        _STDERR.print(message, highlight=False, markup=False, soft_wrap=True)
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn("dots"), TextColumn("{task.description}", markup=False), TimeElapsedColumn(), console=_STDERR, transient=True
    ) as bar:
        bar.add_task(message, total=None)
        yield
