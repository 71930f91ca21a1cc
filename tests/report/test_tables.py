"""Terminal tables (mito.report.tables.FitTable): at any width a number is shown whole or its column is named as not shown."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mito.report.tables import Col, FitTable, number, p_value, render_text, seconds

NUM = re.compile(r"(?<![\d.])[+-]?\d+\.\d+")


def _table(wrap: bool = False) -> FitTable:
    rng = np.random.default_rng(0)
    cols = [Col("name", "left", fold=8), Col("features", "left", fold=6)] + [Col(f"metric {j}", drop=j + 1) for j in range(9)]
    rows = [[f"efficientnet_lite{i}", "z1+z2:rgb+gray", *(f"{v:.3f}" for v in rng.random(9) * 10 ** (i % 3))] for i in range(6)]
    return FitTable(cols, rows, title="a table", see="see the CSV", wrap=wrap)


@pytest.mark.parametrize("width", [40, 55, 64, 80, 97, 120, 200])
def test_numbers_are_whole_or_their_column_is_named(width: int) -> None:
    t = _table()
    out = render_text(t, width)
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= width, out
    note = " ".join(out.split("columns not shown at this width", 1)[1].split()) if "columns not shown" in out else ""
    got = NUM.findall(out)
    for j, c in enumerate(t.columns[2:], start=2):
        want = [r[j] for r in t.rows]
        if c.header in note:
            assert not set(want) & set(got), (c.header, out)
        else:
            assert all(w in got for w in want), (c.header, out)
    if width >= 200:
        assert not note  # wide enough: nothing left out
    if width <= 80:
        assert "metric 8" in note and "see the CSV" in note  # the last to keep goes first


def test_wrapped_table_shows_every_number_and_repeats_the_key_column() -> None:
    t = _table(wrap=True)
    out = render_text(t, 60)
    assert max(len(x) for x in out.splitlines()) <= 60
    got = NUM.findall(out)
    assert all(r[j] in got for r in t.rows for j in range(2, 11)), out
    assert "columns not shown" not in out and "(continued)" in out
    assert out.count("name") >= 2  # each continuation repeats the key column


def test_rich_alone_cuts_digits_that_fittable_keeps() -> None:
    """The failure FitTable exists for: rich squeezes no-wrap number columns to '1.' at 80 columns."""
    from rich.table import Table

    t = _table()
    plain = Table(title="a table")
    for c in t.columns:
        plain.add_column(c.header, no_wrap=c.fold is None, overflow="fold")
    for r in t.rows:
        plain.add_row(*r)
    cut = render_text(plain, 80)
    assert not all(r[j] in NUM.findall(cut) for r in t.rows for j in range(2, 11))  # rich loses digits
    kept = render_text(t, 80)
    note = kept.split("columns not shown", 1)[1]
    shown = [j for j in range(2, 11) if t.columns[j].header not in " ".join(note.split())]
    assert shown and all(r[j] in NUM.findall(kept) for r in t.rows for j in shown)


def test_formatting_policy() -> None:
    assert number(1.2434) == "1.243" and number(float("nan")) == "–" and number(None) == "–" and number(-0.04, signed=True) == "-0.040"
    assert seconds(0.004) == "0.00" and seconds(612.345) == "612.35"  # one precision for every time
    assert p_value(1.0) == "1.000" and p_value(0.0002) == "<0.001" and p_value(0.00002, 4) == "<0.0001" and p_value(0.0346) == "0.035"


def _cells(out: str, col: int) -> list[str]:
    """The text of column ``col`` on each body line of a rendered table (rich's box: '│' between cells)."""
    return [parts[col + 1].strip() for line in out.splitlines() if len(parts := line.split("│")) > col + 1]


def _runs(name: str) -> set[str]:
    """Every piece a feature-set name may be shown as on one line: runs of whole tokens (a token ends at + : , or /)."""
    toks = re.findall(r"[^+:,/ ]*[+:,/]|[^+:,/ ]+", name)
    return {"".join(toks[i:j]) for i in range(len(toks)) for j in range(i + 1, len(toks) + 1)}


@pytest.mark.parametrize("width", [50, 60, 70, 80])
def test_text_cells_break_at_plus_colon_comma_never_mid_word(width: int) -> None:
    """trial19: at 80 columns 'z2:rgb+gray' showed as 'z2:rgb+gr' over 'ay', and the header 'train s' as 'train' over 's'."""
    names = ["z2:rgb+gray", "z1+z2:gray", "z1+z2:rgb+gray", "z1:rgb"]
    cols = [
        Col("#"),
        Col("features", "left", fold=6),
        Col("head", "left", fold=6),
        Col("bal acc"),
        Col("95% CI", drop=3),
        Col("AUROC", drop=2),
        Col("train s", drop=1, header_wraps=False),
    ]
    rows = [[str(i + 1), n, "logreg", "0.612±0.034", "0.551-0.668", "0.701", "0.12"] for i, n in enumerate(names)]
    out = render_text(FitTable(cols, rows), width)
    shown = [c for c in _cells(out, 1) if c and c != "features"]
    assert shown and all(any(c in _runs(n) for n in names) for c in shown), out  # only whole tokens per line
    assert any(c not in names for c in shown) or width >= 70, out  # narrow: some name does wrap (the test can fail)
    assert "train s" in out, out  # the header on one line (or, were it left out, named whole in the note)
    assert not any(c == "s" for c in _cells(out, 6)), out


def test_a_column_note_shows_with_its_column_only() -> None:
    """The leaderboard's 'p vs #1' is Holm-adjusted: a line under the table says so while the column is shown."""
    cols = [Col("#"), Col("bal acc"), Col("p vs #1", drop=1)]
    t = FitTable(cols, [["1", "0.700", "best"], ["2", "0.650", "1.000 (tie)"]], notes={"p vs #1": "p vs #1: Holm-adjusted"})
    assert "p vs #1: Holm-adjusted" in render_text(t, 80)
    narrow = render_text(t, 24)
    assert "Holm" not in narrow and "columns not shown at this width" in " ".join(narrow.split()), narrow
