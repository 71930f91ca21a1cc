"""Progress and wording: a transient bar leaves nothing in a log; counts read in the right number."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import mito.core.progress
from mito.core.progress import add_task, progress_bar
from mito.core.wording import counted


@pytest.mark.parametrize("terminal", [False, True])
def test_a_transient_bar_leaves_nothing_in_a_log(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    out = io.StringIO()
    monkeypatch.setattr(mito.core.progress, "_STDERR", Console(file=out, force_terminal=terminal, width=100))
    with progress_bar("epochs", transient=True) as bar:
        bar.update(add_task(bar, "fold 0", 3), advance=3, refresh=True)
    if terminal:  # drawn while it runs, then erased
        assert "fold 0" in out.getvalue()
    else:  # before: an empty line in every piped or logged fit-head run, under the one-line messages
        assert out.getvalue() == ""


def test_counts_read_in_the_right_number() -> None:
    assert counted(1, "chunk") == "1 chunk" and counted(0, "chunk") == "0 chunks" and counted(3, "tile") == "3 tiles"
    assert counted(1024, "row") == "1,024 rows" and counted(2, "new slide") == "2 new slides"


@pytest.mark.parametrize("terminal", [False, True])
def test_a_step_without_a_count_says_what_it_does(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    """trial19: `mito umap` ran 79 s piped without a line (a spinner draws nothing into a pipe)."""
    from mito.core.progress import status

    out = io.StringIO()
    monkeypatch.setattr(mito.core.progress, "_STDERR", Console(file=out, force_terminal=terminal, width=100))
    with status("UMAP of 360 tiles x 1280 dims ..."):
        pass
    if terminal:  # a spinner with the time so far, erased when the step ends
        assert "UMAP of 360 tiles x 1280 dims ..." in out.getvalue() and "0:00:00" in out.getvalue()
    else:
        assert out.getvalue() == "UMAP of 360 tiles x 1280 dims ...\n"
    out.truncate(0)
    out.seek(0)
    with status("nothing", enabled=False):
        pass
    assert out.getvalue() == ""
