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


def test_backbones_reads_at_80_columns() -> None:
    """`mito backbones` piped at COLUMNS=80: one line per backbone, no line wider, and the columns a user acts on
    (name, dimension, available here?, where the weights come from) are shown whole; the rest is named as left out."""
    import os
    import subprocess
    import sys

    from mito.backbones import available, list_backbones

    env = {**os.environ, "COLUMNS": str(WIDTH), "OMP_NUM_THREADS": "1"}
    env.pop("TERMINAL_WIDTH", None)
    r = subprocess.run([sys.executable, "-m", "mito", "backbones"], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(x) for x in lines) <= WIDTH, r.stdout
    rows = {c[0]: c for c in ([x.strip() for x in line.strip("│").split("│")] for line in lines if line.startswith("│"))}
    specs = list_backbones()
    assert list(rows) == [s.name for s in specs], r.stdout  # one line per backbone, in registry order
    for s in specs:
        ws = s.weights
        source = f"pip {ws.package}" if ws.package else f"{ws.hf_id}{' (gated)' if ws.gated else ''}"
        assert str(s.embed_dim) in rows[s.name] and source in rows[s.name], (s.name, rows[s.name])
        assert ("yes" if available(s) else "no") in rows[s.name], (s.name, rows[s.name])
    flat = " ".join(r.stdout.split())
    assert "not shown at this width" in flat and "arch" in flat and "--json" in flat and "--weights" in flat, r.stdout


@pytest.mark.parametrize("command", ["extract", "fit-head", "bench", "lora", "zero-shot", "predict"])
def test_grouped_commands_leave_no_option_alone_under_options(command: str) -> None:
    """trial19: --positive sat alone in the top 'Options' panel of fit-head and lora help (extract: --sample,
    --sample-per-class, --seed): on a grouped command, every option is in a group; 'Options' keeps only --help."""
    out = _help((command,))
    panels = re.split(r"^╭─ ", out, flags=re.M)
    options = next((p for p in panels if p.startswith("Options ")), "")
    assert re.findall(r"^│\s+(?:\*\s+)?(--[\w-]+)", options, flags=re.M) == ["--help"], options
    spec = next((p for p in panels if p.startswith("Spec ")), "")  # issue 21: every job command takes a spec file
    assert re.findall(r"^│\s+(--[\w-]+)", spec, flags=re.M) == ["--config", "--set"], out
