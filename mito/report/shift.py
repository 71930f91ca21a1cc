"""The report's domain-shift block: in-domain vs held-out scores per model (PNG) and the gaps (HTML table)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from mito.bench.shift import SAME_MODEL, cross_group_lines
from mito.core.io import atomic_write
from mito.report.mpl import pyplot


def gap_figure(shift: pd.DataFrame, domain: pd.DataFrame, metric: str, path: Path, top: int = 12) -> Path | None:
    """Dots per model (task/backbone/features/head): in-domain score and the score on each held-out group, joined by a line."""
    if shift.empty:
        return None
    plt = pyplot()
    key = lambda d: d[SAME_MODEL].astype(str).agg("|".join, axis=1)  # noqa: E731
    sk = key(shift)
    order = list(dict.fromkeys(key(domain.sort_values("rank")))) if len(domain) else []
    order = [k for k in order if k in set(sk)] + [k for k in dict.fromkeys(sk[shift.sort_values("rank").index]) if k not in order]
    order = order[:top][::-1]
    groups = sorted(shift["held_out"].unique())
    colors = plt.get_cmap("tab10")
    dk = dict(zip(key(domain), domain[metric])) if len(domain) else {}
    fig, ax = plt.subplots(figsize=(8.5, 0.38 * len(order) + 1.4))
    labels = []
    for i, k in enumerate(order):
        t, bb, fs, head, noise = k.split("|")
        labels.append(f"{bb} {fs} {head}" + (f" σ={float(noise):g}" if float(noise or 0) else ""))
        pts = [dk[k]] if k in dk else []
        for j, g in enumerate(groups):
            v = shift.loc[(sk == k) & (shift["held_out"] == g), metric]
            if len(v):
                pts.append(float(v.iloc[0]))
                ax.plot(float(v.iloc[0]), i, "o", color=colors(j + 1), ms=6, label=f"test on {g} (trained on the rest)" if i == 0 else None)
        if k in dk:
            ax.plot(dk[k], i, "D", color="black", ms=5, label="in-domain" if i == 0 else None)
        if len(pts) > 1:
            ax.plot([min(pts), max(pts)], [i, i], color="#bbbbbb", lw=1, zorder=0)
    ax.set_yticks(range(len(order)), labels, fontsize=7)
    ax.set_xlabel(f"{metric}: in-domain vs held-out group (mean over folds)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    # tight: a legend of many or long group names grows the picture instead of running off its edge
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"), ".png")
    plt.close(fig)
    return path


def shift_table(shift: pd.DataFrame, domain: pd.DataFrame, metric: str, top: int = 25) -> str:
    """HTML: one line per model, its in-domain score, then score and gap per held-out group."""
    groups = sorted(shift["held_out"].unique())
    key = lambda d: d[SAME_MODEL].astype(str).agg("|".join, axis=1)  # noqa: E731
    sk = key(shift)
    dk = dict(zip(key(domain), domain[metric])) if len(domain) else {}
    fmt = lambda v: "–" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    gfmt = lambda v: "–" if v is None or v != v else f"{v:+.3f}"  # noqa: E731
    order = [k for k in dict.fromkeys(key(domain.sort_values("rank"))) if k in set(sk)] if len(domain) else []
    order += [k for k in dict.fromkeys(sk[shift.sort_values("rank").index]) if k not in order]
    head = "<th class='l'>backbone</th><th class='l'>features</th><th class='l'>head</th><th>in-domain</th>"
    head += "".join(f"<th>test on {html.escape(g)}</th><th>gap</th>" for g in groups)
    body = []
    for k in order[:top]:
        _, bb, fs, hd, _ = k.split("|")
        cells = [f"<td class='l'>{html.escape(x)}</td>" for x in (bb, fs, hd)] + [f"<td>{fmt(dk.get(k))}</td>"]
        for g in groups:
            r = shift[(sk == k) & (shift["held_out"] == g)]
            v = float(r[metric].iloc[0]) if len(r) else math.nan
            gap = float(r["gap"].iloc[0]) if len(r) and "gap" in r else math.nan
            cells += [f"<td>{fmt(v)}</td>", f"<td>{gfmt(gap)}</td>"]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def shift_section(rows: pd.DataFrame, metric: str, path: Path, shift_meta: dict | None = None) -> str:
    """The report's domain-shift block for one task's rows (empty when it has no shift rows)."""
    if "held_out" not in rows:
        return ""
    held = rows["held_out"].fillna("").astype(str)
    shift, domain = rows[held != ""], rows[held == ""]
    if shift.empty:
        return ""
    fig = gap_figure(shift, domain, metric, path)
    meta = shift_meta or {}
    skipped = meta.get("skipped") or {}
    note = "".join(f"<li>{html.escape(str(why))}</li>" for why in skipped.values())
    return (
        f"<h3>Domain shift (leave one {html.escape(str(meta.get('column', 'group')))} out)</h3>"
        "<p class='meta'>Each held-out group is scored by models trained on all other groups (validation carved from them by slide). "
        f"gap = score on the held-out group - in-domain score of the same model ({html.escape(metric)}); negative: the model loses that much on a new domain.</p>"
        + "".join(f"<p><b>{html.escape(line)}</b></p>" for line in cross_group_lines(rows, str(meta.get("column", "group"))))
        + shift_table(shift, domain, metric)
        + (f"<p class='meta'>Skipped:</p><ul>{note}</ul>" if note else "")
        + (
            f"<figure><img alt='domain shift' src='data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}'>"
            f"<figcaption class='meta'>{html.escape(fig.name)}</figcaption></figure>"
            if fig is not None
            else ""
        )
    )
