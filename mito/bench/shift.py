"""Domain shift as a split: for each value of a column (e.g. ``dataset``), train on the other values, test on it.

A shift row is scored like an in-domain ``split`` row: k models, each trained on the other groups minus one
slide-grouped part (its early-stopping set), all scored on the held-out group. Its ``gap`` is its main metric minus
the in-domain main metric of the same task, backbone, features, head and noise.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from mito.bench.cv import CVPlan, make_folds
from mito.bench.errors import BenchError
from mito.io import atomic_write

SHIFT_MODE = "shift"  # the `cv` value of a shift row (in-domain rows: kfold or split)
LEAVE_GROUP_OUT = "leave-group-out"  # --cv value: shift rows only
SAME_MODEL = ["task", "backbone", "features", "head", "noise"]


def group_values(tiles: pd.DataFrame, column: str) -> pd.Series:
    """The shift column as text ('' where missing); an unknown column is a one-line BenchError."""
    if column not in tiles:
        raise BenchError(f"no shift column {column!r} in the tile table (it has: {', '.join(map(str, tiles.columns))})")
    return tiles[column].astype(object).map(lambda v: "" if v is None or v != v else str(v).strip())


def shift_plans(
    tiles: pd.DataFrame,
    y: pd.Series,
    column: str,
    n_folds: int = 5,
    seed: int = 0,
    exclude: np.ndarray | None = None,
) -> tuple[dict[str, CVPlan], dict[str, str]]:
    """One plan per held-out group g of ``column``: ``n_folds`` models trained on every other group (each early-stopping
    on one slide-grouped part of them), all scored on g. Returns (plans by group, one-line reasons for skipped groups).

    Tiles with no value in ``column`` are left out; a group that is one-class, or whose other groups cannot make
    ``n_folds`` slide-grouped parts per class, is skipped with its reason; fewer than two usable groups is an error.
    """
    values = group_values(tiles, column)
    usable = y.notna().to_numpy() & (values != "").to_numpy()
    if exclude is not None:
        usable &= ~np.asarray(exclude, bool)
    groups = sorted(set(values[usable]))
    if len(groups) < 2:
        raise BenchError(f"shift column {column!r} has {len(groups)} value(s) among the labelled tiles ({', '.join(groups) or 'none'}); leave-group-out needs at least 2")
    classes = set(y[usable].astype(str))
    plans: dict[str, CVPlan] = {}
    skipped: dict[str, str] = {}
    for g in groups:
        held = usable & (values == g).to_numpy()
        rest = usable & ~held
        here = sorted(set(y[held].astype(str)))
        if len(here) < 2:
            skipped[g] = f"held-out group {g!r} has only class {here[0]!r} ({int(held.sum())} tiles): its scores need two classes"
            continue
        lacking = sorted(classes - set(y[rest].astype(str)))
        if lacking:
            skipped[g] = f"the groups other than {g!r} have no {lacking[0]!r} tile to learn from"
            continue
        side = np.where(held, "test", np.where(rest, "train", ""))
        try:
            plan = make_folds(tiles.assign(split=side), y.where(held | rest, None), n_folds=n_folds, cv="split", seed=seed)
        except BenchError as e:
            skipped[g] = f"holding out {g!r}: {e}"
            continue
        train_groups = ", ".join(x for x in groups if x != g)
        desc = (f"{n_folds} models, each trained on {column} in {{{train_groups}}} minus one slide-grouped part (its early-stopping set), "
                f"all scored on {column} = {g}")
        fp = hashlib.sha256(f"{column}\t{g}\t{plan.fingerprint}".encode()).hexdigest()
        plans[g] = CVPlan(SHIFT_MODE, plan.folds, fp, desc)
    if not plans:
        raise BenchError(f"no group of {column!r} can be held out: " + "; ".join(skipped.values()))
    return plans, skipped


def add_gaps(rows: pd.DataFrame) -> pd.DataFrame:
    """Fill ``gap`` (shift main metric - in-domain main metric of the same task/backbone/features/head/noise) on shift rows."""
    if "held_out" not in rows or rows.empty:
        return rows
    rows = rows.copy()
    rows["held_out"] = rows["held_out"].fillna("").astype(str)
    score = pd.Series([r[r["main_metric"]] for _, r in rows.iterrows()], index=rows.index, dtype=float)
    key = rows[SAME_MODEL].astype(str).agg("|".join, axis=1)
    full = rows["shots"].astype(str).isin(["all", "", "nan", "None"]) if "shots" in rows else pd.Series(True, index=rows.index)
    domain = (rows["held_out"] == "") & full  # the in-domain row trained on every tile, not a K-shot row of the same model
    ref = dict(zip(key[domain], score[domain]))
    shifted = rows["held_out"] != ""
    rows["gap"] = [score[i] - ref[key[i]] if shifted[i] and key[i] in ref else math.nan for i in rows.index]
    return rows


def gap_figure(shift: pd.DataFrame, domain: pd.DataFrame, metric: str, path: Path, top: int = 12) -> Path | None:
    """Dots per model (task/backbone/features/head): in-domain score and the score on each held-out group, joined by a line."""
    if shift.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        + shift_table(shift, domain, metric)
        + (f"<p class='meta'>Skipped:</p><ul>{note}</ul>" if note else "")
        + (f"<figure><img alt='domain shift' src='data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}'>"
           f"<figcaption class='meta'>{html.escape(fig.name)}</figcaption></figure>" if fig is not None else "")
    )
