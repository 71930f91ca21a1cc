"""Every command's --help reads at 80 columns: no line wider, a description column of 30+ characters, no word cut
with '…' or folded, no square brackets swallowed as markup, options in groups where a command has many."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.core import TyperArgument
from typer.testing import CliRunner

from mito.cli import app

runner = CliRunner()
WIDTH = 80


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and sub-command of the app (typer may ship its own copy of click: go by attributes)."""
    out = [(path, group)]
    if hasattr(group, "commands"):
        for name, cmd in group.commands.items():
            out += _commands(cmd, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


def _help(path: tuple[str, ...]) -> str:
    r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH)})
    assert r.exit_code == 0, r.output
    return r.output


def _flat(out: str) -> str:
    """The help's text without the panel borders, on one line."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())


def _words(help_text: str) -> list[str]:
    """The words the help means to show: mito's help strings use no markup, only escaped brackets."""
    return help_text.replace("\\[", "[").split()


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "mito")
def test_help_reads_at_80_columns(path: tuple[str, ...]) -> None:
    cmd = dict(COMMANDS)[path]
    out = _help(path)
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= WIDTH, out
    assert "…" not in out, out  # nothing cut
    flat = _flat(out)
    for p in cmd.params:
        text = getattr(p, "help", None)
        if not text or getattr(p, "hidden", False):
            continue
        missing = [w for w in _words(text) if w not in flat]
        assert not missing, (p.name, missing)  # every word whole: not cut, not folded, no markup swallowed
        key = p.name if isinstance(p, TyperArgument) else next(o for o in p.opts if o.startswith("--"))
        row = re.compile(r"^│\s+(\*\s+)?" + re.escape(key) + r"(\.\.\.)?[\s,]")
        first = next(x for x in lines if row.match(x))  # the option's first line in its panel
        start = first.find(_words(text)[0], row.match(first).end())
        assert start > 0 and WIDTH - 2 - start >= 30, (p.name, first)  # the description column keeps 30+ characters
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            summary = (sub.get_short_help_str(limit=300) or "").rstrip(".")
            assert all(w in flat for w in summary.split()), (name, summary)


def test_square_brackets_survive_and_long_commands_are_grouped() -> None:
    zs = _flat(_help(("zero-shot",)))
    assert "JSON {class: [prompt, ...]}" in zs  # Rich markup must not swallow "[prompt, ...]"
    fit = _help(("fit-head",))
    panels = re.findall(r"╭─ (.+?) ─", fit)
    assert {"Data", "Split", "Head", "Training", "Slide level", "Output"} <= set(panels), panels
    assert len(fit.splitlines()) < 130, len(fit.splitlines())  # was 235 lines at 80 columns
    assert {"Data", "Heads", "Folds and statistics", "Output"} <= set(re.findall(r"╭─ (.+?) ─", _help(("bench",))))
