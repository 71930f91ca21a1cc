"""Terminal tables that fit the width they are printed at: numbers are never cut; columns are dropped (and named) or wrapped.

Rich shrinks a too-wide table by folding cells and, as a last resort, by cutting every column evenly, which turns
1.243 into "1.". A :class:`FitTable` decides its columns when it is rendered, from the width it gets (a terminal, a
pipe at COLUMNS or 80): a number column is as wide as its widest number, a text column may fold down to a few
characters, and when that does not fit either, the least important columns are left out and listed under the table
(or, with ``wrap``, the columns continue in a second table that repeats the key columns).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

Justify = Literal["left", "right", "center"]


@dataclass(frozen=True)
class Col:
    """One column: its header, alignment, how far a text column may fold (None: never wraps) and when it is dropped.

    ``drop`` 0 means always shown; among the others, the highest is left out first when the width is short.
    """

    header: str
    justify: Justify = "right"
    fold: int | None = None
    drop: int = 0
    style: str | None = None
    header_wraps: bool = True  # False: the header stays on one line (e.g. "train s": never "train" over "s")


def _lines(s: str) -> list[str]:
    return s.splitlines() or [""]


def _longest_word(s: str) -> int:
    return max((cell_len(w) for w in s.split()), default=0)


BREAKS = "+:,/ "  # a text cell may break after these (feature sets: z1+z2:rgb+gray; lists: a, b)
_PIECE = re.compile(r"[^+:,/ ]*[+:,/]| +|[^+:,/ ]+")


def break_lines(text: str, width: int) -> str:
    """``text`` wrapped to ``width`` cells at :data:`BREAKS` (after a '+', ':', ',' or '/', or at a space), never inside
    a word; a single word wider than ``width`` is cut as a last resort. Rich alone breaks only at spaces and folds
    the rest mid-word ('z2:rgb+gr' over 'ay')."""
    if width < 1:
        return text
    out: list[str] = []
    for line in _lines(text):
        cur = ""
        for piece in _PIECE.findall(line):
            if cell_len(cur + piece.rstrip()) <= width:
                cur += piece
                continue
            if cur.strip():
                out.append(cur.rstrip())
            cur = piece.lstrip()
            while cell_len(cur.rstrip()) > width:  # no break character inside: fold, as rich would
                out.append(cur[:width])
                cur = cur[width:]
        out.append(cur.rstrip())
    return "\n".join(out)


def _float(v: Any) -> float:
    """``v`` as a float; NaN when it is missing or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def number(v: Any, digits: int = 3, signed: bool = False) -> str:
    """A float with ``digits`` decimals ('–' for a missing value): the one way tables show metrics."""
    f = _float(v)
    if math.isnan(f):
        return "–"
    return f"{f:+.{digits}f}" if signed else f"{f:.{digits}f}"


def seconds(v: Any) -> str:
    """Seconds with two decimals (one precision for every time in a table; '–' when missing)."""
    return number(v, 2)


def p_value(p: Any, digits: int = 3) -> str:
    """A p-value with ``digits`` decimals, '<0.001' (for 3) below that ('–' when missing)."""
    f = _float(p)
    if math.isnan(f):
        return "–"
    return f"<{10.0**-digits:.{digits}f}" if f < 0.5 * 10.0**-digits else f"{f:.{digits}f}"


class FitTable:
    """A rich renderable table whose columns are chosen at render time to fit ``options.max_width``.

    Number columns (``fold=None``) never wrap or shrink. When the columns cannot fit even with text folded, columns are
    dropped in ``drop`` order and named in a line under the table (``see`` says where to find them), or with
    ``wrap=True`` the other columns continue in further tables that repeat the first ``keys`` columns.
    """

    def __init__(
        self,
        columns: Sequence[Col],
        rows: Iterable[Sequence[str]],
        *,
        title: str | None = None,
        see: str = "",
        wrap: bool = False,
        keys: int = 1,
        hidden: Sequence[str] = (),
        notes: dict[str, str] | None = None,
    ) -> None:
        self.columns = list(columns)
        self.rows = [[str(c) for c in r] for r in rows]
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"a row has {len(r)} cells for {len(self.columns)} columns")
        self.title, self.see, self.wrap, self.keys = title, see, wrap, keys
        self.hidden = list(hidden)  # columns the caller left out on purpose: named in the same note
        self.notes = dict(notes or {})  # header -> a line under the table, printed when that column is shown

    # ------------------------------------------------------------------ widths
    def _cells(self, i: int) -> int:
        return max([cell_len(line) for r in self.rows for line in _lines(r[i])] or [0])

    def natural(self, i: int) -> int:
        """Width of column i with nothing wrapped, its header included."""
        return max(self._cells(i), cell_len(self.columns[i].header), 1)

    def narrowest(self, i: int) -> int:
        """Width column i can be squeezed to: its header wraps at spaces, a number column's cells never shrink, a
        text column's fold to ``fold`` characters."""
        c = self.columns[i]
        cells = self._cells(i) if c.fold is None else min(self._cells(i), c.fold)
        return max(cells, _longest_word(c.header) if c.header_wraps else cell_len(c.header), 1)

    @staticmethod
    def overhead(n: int) -> int:
        """Border and padding characters of an n-column table (rich's default box with its edges, one space each side)."""
        return (n + 1) + 2 * n if n else 0

    def needed(self, idx: Sequence[int], natural: bool = False) -> int:
        """Width the columns ``idx`` need (squeezed, or ``natural``)."""
        w = self.natural if natural else self.narrowest
        return sum(w(i) for i in idx) + self.overhead(len(idx))

    def choose(self, width: int) -> tuple[list[int], list[int]]:
        """(shown, dropped) column indices for ``width``: drop the highest ``drop`` first (the rightmost of a tie)."""
        shown = list(range(len(self.columns)))
        dropped: list[int] = []
        while self.needed(shown) > width:
            cands = [i for i in shown if self.columns[i].drop > 0]
            if not cands:
                break
            worst = max(cands, key=lambda i: (self.columns[i].drop, i))
            shown.remove(worst)
            dropped.append(worst)
        return shown, sorted(dropped)

    def widths(self, idx: Sequence[int], width: int) -> list[int]:
        """Column widths for ``idx`` within ``width``: natural when they fit, else text columns share what is left."""
        nat = [self.natural(i) for i in idx]
        if sum(nat) + self.overhead(len(idx)) <= width:
            return nat
        low = [self.narrowest(i) for i in idx]
        spare = width - sum(low) - self.overhead(len(idx))
        give = [n - lo for n, lo in zip(nat, low)]
        total = sum(give)
        out = list(low)
        if spare > 0 and total:
            shares = [spare * g // total for g in give]
            left = spare - sum(shares)
            for j in sorted(range(len(idx)), key=lambda j: -give[j]):
                if left <= 0:
                    break
                if shares[j] < give[j]:
                    shares[j] += 1
                    left -= 1
            out = [lo + s for lo, s in zip(low, shares)]
        return out

    # ------------------------------------------------------------------ rendering
    def _table(self, idx: Sequence[int], width: int, title: str | None) -> Table:
        t = Table(title=title)
        widths = self.widths(idx, width)
        for i, w in zip(idx, widths):
            c = self.columns[i]
            header = Text(c.header, no_wrap=not c.header_wraps, overflow="fold", justify=c.justify)
            t.add_column(header, justify=c.justify, width=w, no_wrap=c.fold is None, overflow="fold", style=c.style)
        for r in self.rows:  # text cells broken at '+', ':', ',' ... here: rich would fold a long feature set mid-word
            t.add_row(*[r[i] if self.columns[i].fold is None else break_lines(r[i], w) for i, w in zip(idx, widths)])
        return t

    def pages(self, width: int) -> list[list[int]]:
        """With ``wrap``: the column groups of the successive tables (each with the key columns first)."""
        keys = list(range(min(self.keys, len(self.columns))))
        rest = [i for i in range(len(self.columns)) if i not in keys]
        pages: list[list[int]] = []
        page: list[int] = []
        for i in rest:
            if page and self.needed(keys + page + [i]) > width:
                pages.append(keys + page)
                page = []
            page.append(i)
        pages.append(keys + page)
        return pages

    def note(self, dropped: Sequence[str], width: int, by_width: bool = True) -> str:
        """The line under a table that left columns out (``by_width``: because the width was short)."""
        need = self.needed(range(len(self.columns)), natural=True)
        where = f"; {self.see}" if self.see else ""
        if not by_width:
            return f"columns not shown: {', '.join(dropped)}{where}"
        wider = f" (all of them need {need} columns)" if need > width else ""
        return f"columns not shown at this width{wider}: {', '.join(dropped)}{where}"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        if self.wrap:
            pages = self.pages(width)
            for n, page in enumerate(pages):
                title = self.title if n == 0 else (f"{self.title} (continued)" if self.title else None)
                yield self._table(page, width, title)
            yield from self._notes(range(len(self.columns)))
            if self.hidden:
                yield Text(self.note(self.hidden, width, by_width=False), style="dim")
            return
        shown, dropped = self.choose(width)
        yield self._table(shown, width, self.title)
        yield from self._notes(shown)
        names = [*self.hidden, *(self.columns[i].header for i in dropped)]
        if names:
            yield Text(self.note(names, width, by_width=bool(dropped)), style="dim")

    def _notes(self, shown: Iterable[int]) -> Iterable[Text]:
        """The notes of the shown columns (what a header cannot say: how a number was adjusted ...)."""
        for i in shown:
            note = self.notes.get(self.columns[i].header)
            if note:
                yield Text(note, style="dim")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        shown, _ = self.choose(options.max_width)
        return Measurement(min(self.needed(shown), options.max_width), min(self.needed(shown, natural=True), options.max_width))


def render_text(renderable: Any, width: int = 80) -> str:
    """What ``renderable`` prints at ``width`` columns, as plain text (for tests and logs)."""
    import io

    con = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, legacy_windows=False)
    con.print(renderable)
    return con.file.getvalue()  # type: ignore[attr-defined]
