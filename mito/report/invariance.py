"""The report's invariance section: how stable each backbone's embedding is under colour and geometry changes."""

from __future__ import annotations

import html
import os

import pandas as pd

from mito.bench.invariance import invariance_table
from mito.store import open_store


def invariance_section(store_path: str | os.PathLike | None) -> str:
    """An HTML section with the invariance table of the store, or "" when it has no gray/hema variant or views
    (or cannot be opened: a report is rebuilt from its folder, and the store may have moved)."""
    if not store_path:
        return ""
    try:
        with open_store(store_path) as s:
            table = invariance_table(s)
    except Exception:  # a missing or damaged store only costs this section
        return ""
    if table.empty:
        return ""
    cols = [c for c in table.columns if c not in ("backbone", "zoom", "n_tiles")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["backbone", "zoom", *cols, "tiles"])
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(str(r['backbone']))}</td><td>z{html.escape(str(r['zoom']))}</td>"
        + "".join(f"<td>{r[c]:.3f}</td>" if pd.notna(r.get(c)) else "<td>–</td>" for c in cols)
        + f"<td>{int(r['n_tiles'])}</td></tr>"
        for _, r in table.iterrows()
    )
    return (
        "<h2>Invariance of the embeddings</h2><p class='meta'>Mean cosine similarity of a tile's RGB embedding to its "
        "gray / hema variant and to its augmented views (hed: HED stain jitter, mean over its draws; flip, rot90: "
        "geometry). Near 1: the backbone hardly sees the change.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
