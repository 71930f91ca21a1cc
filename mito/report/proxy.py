"""The report's proxy-validity block: does each proxy task rank the backbones as the target does (table, scatter, warnings)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mito.bench.proxy import BEST, RANDOM_PREFIX, ProxyAgreement, agreements_from_meta
from mito.core.io import atomic_write
from mito.report.mpl import pyplot


def _ci(v: float, lo: float, hi: float, sign: bool = True) -> str:
    f = (lambda x: f"{x:+.2f}") if sign else (lambda x: f"{x:.3f}")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{f(v)} [{f(lo)}, {f(hi)}]" if not (math.isnan(lo) or math.isnan(hi)) else f(v)


def proxy_lines(agreements: Sequence[ProxyAgreement]) -> list[str]:
    """The one-line warnings of the proxies whose ranking disagrees with the target's (best head per backbone first)."""
    order = sorted(agreements, key=lambda a: (a.head != BEST, a.proxy, a.head))
    return [a.warning() for a in order if a.disagrees]


LABEL_TRIES = ((4, 4), (4, -11), (-4, 4), (-4, -11), (4, 13), (4, -20), (-4, 13), (-4, -20))  # offsets in points


def label_points(ax: Any, points: Sequence[tuple[str, float, float]], fontsize: float = 7) -> None:
    """Name each dot beside it, at the first of LABEL_TRIES whose box (estimated from the text length) stays inside
    the panel and overlaps no label placed before; dots are labelled from the top down."""
    scale = ax.figure.dpi / 72.0
    frame = ax.get_window_extent()
    taken: list[tuple[float, float, float, float]] = []
    for name, x, y in sorted(points, key=lambda p: -p[2]):
        px, py = ax.transData.transform((x, y))
        w, h = len(name) * fontsize * 0.56 * scale, fontsize * 1.25 * scale
        boxes = []
        for dx, dy in LABEL_TRIES:
            x0 = px + dx * scale - (w if dx < 0 else 0)
            boxes.append(((dx, dy), (x0, py + dy * scale, x0 + w, py + dy * scale + h)))
        free = [
            (o, b)
            for o, b in boxes
            if frame.x0 <= b[0]
            and b[2] <= frame.x1
            and frame.y0 <= b[1]
            and b[3] <= frame.y1
            and not any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)
        ]
        (dx, dy), box = (free or boxes)[0]
        taken.append(box)
        line = None if (dx, dy) == LABEL_TRIES[0] else {"arrowstyle": "-", "lw": 0.5, "color": "#888888", "shrinkB": 4}
        ax.annotate(
            name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize, ha="right" if dx < 0 else "left", arrowprops=line
        )


def scatter_figure(agreements: Sequence[ProxyAgreement], path: Path) -> Path | None:
    """One panel per proxy (each backbone's best head): proxy score vs target score, a dot per backbone."""
    best = [a for a in agreements if a.head == BEST]
    if not best:
        return None
    plt = pyplot()
    n = len(best)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, a in zip(axes.ravel(), best):
        for bb, x, y in zip(a.backbones, a.proxy_scores, a.target_scores):
            color = "#999999" if bb.startswith(RANDOM_PREFIX) else ("#c0392b" if a.disagrees else "#2e7d32")
            ax.plot(x, y, "o", color=color, ms=7)
        ax.set_xlabel(f"{a.proxy} ({a.proxy_metric})", fontsize=8)
        ax.set_ylabel(f"{a.target} ({a.target_metric})", fontsize=8)
        ax.set_title(
            f"{a.proxy}: tau-b {_ci(a.tau, a.tau_low, a.tau_high)}" + (" (disagrees)" if a.disagrees else ""),
            fontsize=8,
            color="#c0392b" if a.disagrees else "black",
        )
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.margins(0.25)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"proxy score vs {best[0].target} score, one dot per backbone (its best row on each task)", fontsize=9)
    fig.tight_layout()
    for ax, a in zip(axes.ravel(), best):  # after the layout, so label boxes are measured at their final scale
        label_points(ax, list(zip(a.backbones, a.proxy_scores, a.target_scores)))
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"), ".png")
    plt.close(fig)
    return path


def _rows(agreements: Sequence[ProxyAgreement]) -> list[list[str]]:
    out = []
    for a in sorted(agreements, key=lambda a: (a.head != BEST, a.proxy, a.head)):
        out.append(
            [
                a.proxy,
                a.head,
                str(len(a.backbones)),
                _ci(a.tau, a.tau_low, a.tau_high),
                _ci(a.rho, a.rho_low, a.rho_high),
                _ci(a.tau_trained, a.tau_trained_low, a.tau_trained_high),
                a.proxy_pick,
                a.target_pick,
                _ci(a.regret, a.regret_low, a.regret_high, sign=False),
                "DISAGREES" if a.disagrees else "agrees",
            ]
        )
    return out


HEADER = [
    "proxy",
    "head",
    "backbones",
    "Kendall tau-b [95% CI]",
    "Spearman rho [95% CI]",
    "tau-b, trained backbones only",
    "proxy's pick",
    "target's best",
    "regret [95% CI]",
    "verdict",
]
SHORT = [
    "proxy",
    "head",
    "n",
    "tau-b [95% CI]",
    "rho [95% CI]",
    "tau-b trained",
    "proxy's pick",
    "target's best",
    "regret [95% CI]",
    "verdict",
]


def proxy_section(meta: dict[str, Any], path: Path) -> str:
    """HTML: the proxy-validity table, the scatter and the warnings (empty when the bench has no proxy_validity)."""
    pv = meta.get("proxy_validity") if isinstance(meta.get("proxy_validity"), dict) else None
    if not pv:
        return ""
    agreements = agreements_from_meta(meta)
    target = html.escape(str(pv.get("target", "")))
    if not agreements:
        return f"<h2>Proxy validity (target <code>{target}</code>)</h2><p class='meta'>{html.escape(str(pv.get('skipped', 'nothing to compare')))}</p>"
    fig = scatter_figure(agreements, path)
    a0 = agreements[0]
    body = "".join(
        "<tr>"
        + "".join(f"<td class='l'>{html.escape(c)}</td>" if i in (0, 1, 6, 7, 9) else f"<td>{html.escape(c)}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in _rows(agreements)
    )
    head = "".join(
        f"<th class='l'>{html.escape(h)}</th>" if i in (0, 1, 6, 7, 9) else f"<th>{html.escape(h)}</th>" for i, h in enumerate(HEADER)
    )
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in proxy_lines(agreements))
    return (
        f"<h2>Proxy validity (target <code>{target}</code>)</h2>"
        "<p class='meta'>Does each proxy task rank the backbones as the target does? Each backbone scores its best in-domain row on each task "
        "(best feature set; head 'best' = best head too, else that head). Kendall tau-b and Spearman rho of the two score vectors; 95% percentile "
        f"bootstrap intervals resample the test tiles ({a0.n_boot} replicates over {a0.n_tiles} tiles, one draw shared by both tasks, rows chosen on the full data; "
        "nothing re-fitted). 'tau-b, trained backbones only' leaves the random-init controls out (every proxy ranks them last, which "
        "inflates tau-b); given with 3 or more trained backbones. regret = the target score of the target's best backbone minus that of the proxy's pick. "
        f"{html.escape(str(pv.get('rule', '')))}.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        + (f"<p class='meta'>Warnings:</p><ul>{warn}</ul>" if warn else "")
        + (
            f"<figure><img alt='proxy vs target' src='data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}'>"
            f"<figcaption class='meta'>{html.escape(fig.name)}</figcaption></figure>"
            if fig is not None
            else ""
        )
    )


def proxy_rich_table(meta: dict[str, Any]) -> tuple[Any, list[str]]:
    """The terminal's proxy-validity table (rich; None when nothing was compared) and its warning lines."""
    from rich.table import Table

    agreements = agreements_from_meta(meta)
    if not agreements:
        return None, []
    t = Table(
        title=f"proxy validity: target {agreements[0].target}", caption="tau-b: Kendall, rho: Spearman; 95% CI: bootstrap of the test tiles"
    )
    for h in SHORT:
        t.add_column(h, overflow="fold")
    for r in _rows(agreements):
        t.add_row(*r)
    return t, proxy_lines(agreements)
