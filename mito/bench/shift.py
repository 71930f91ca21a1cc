"""Domain shift as a split: for each value of a column (e.g. ``dataset``), train on the other values, test on it.

A shift row is scored like an in-domain ``split`` row: k models, each trained on the other groups minus one
slide-grouped part (its early-stopping set), all scored on the held-out group. Its ``gap`` is its main metric minus
the in-domain main metric of the same task, backbone, features, head and noise.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

from mito.bench.cv import CVPlan, make_folds
from mito.bench.errors import BenchError
from mito.heads.split import SplitError, group_values, leave_group_out

SHIFT_MODE = "shift"  # the `cv` value of a shift row (in-domain rows: kfold or split)
LEAVE_GROUP_OUT = "leave-group-out"  # --cv value: shift rows only
SAME_MODEL = ["task", "backbone", "features", "head", "noise"]


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
    try:
        values = group_values(tiles, column, "shift column")
    except SplitError as e:
        raise BenchError(str(e)) from None
    usable = y.notna().to_numpy() & (values != "")
    if exclude is not None:
        usable &= ~np.asarray(exclude, bool)
    groups = sorted(set(values[usable]))
    if len(groups) < 2:
        raise BenchError(
            f"shift column {column!r} has {len(groups)} value(s) among the labelled tiles ({', '.join(groups) or 'none'}); leave-group-out needs at least 2"
        )
    classes = set(y[usable].astype(str))
    plans: dict[str, CVPlan] = {}
    skipped: dict[str, str] = {}
    for g in groups:
        side = leave_group_out(values, usable, g)
        held, rest = side == "test", side == "train"
        here = sorted(set(y[held].astype(str)))
        if len(here) < 2:
            skipped[g] = f"held-out group {g!r} has only class {here[0]!r} ({int(held.sum())} tiles): its scores need two classes"
            continue
        lacking = sorted(classes - set(y[rest].astype(str)))
        if lacking:
            skipped[g] = f"the groups other than {g!r} have no {lacking[0]!r} tile to learn from"
            continue
        try:
            plan = make_folds(tiles.assign(split=side), y.where(held | rest, None), n_folds=n_folds, cv="split", seed=seed)
        except BenchError as e:
            skipped[g] = f"holding out {g!r}: {e}"
            continue
        train_groups = ", ".join(x for x in groups if x != g)
        desc = (
            f"{n_folds} models, each trained on {column} in {{{train_groups}}} minus one slide-grouped part (its early-stopping set), "
            f"all scored on {column} = {g}"
        )
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


def cross_group_winners(rows: pd.DataFrame) -> list[dict]:
    """Per task with shift rows: the model (backbone, features, head, noise) with the best main metric averaged over the
    held-out groups it was tested on (only models tested on every group), beside the in-domain #1; per group, whether
    each is that group's #1 or tied with it (the paired test of mito.bench.stats.add_paired_columns)."""
    if "held_out" not in rows or rows.empty:
        return []
    out = []
    full = rows["shots"].astype(str).isin(["all", "", "nan", "None"]) if "shots" in rows else pd.Series(True, index=rows.index)
    rows = rows[full & (rows["kind"].astype(str) == "head")] if "kind" in rows else rows[full]
    for task, t in rows.groupby("task", sort=True):
        held = t["held_out"].fillna("").astype(str)
        shift, domain = t[held != ""], t[held == ""]
        groups = sorted(shift["held_out"].astype(str).unique())
        if len(groups) < 1:
            continue
        key = model_labels
        sk = key(shift)
        score = pd.Series([r[r["main_metric"]] for _, r in shift.iterrows()], index=shift.index, dtype=float)
        per = {k: g for k, g in shift.groupby(sk) if set(g["held_out"].astype(str)) == set(groups)}
        if not per:
            continue
        means = {k: float(score[g.index].mean()) for k, g in per.items()}
        best = max(sorted(means), key=lambda k: means[k])

        dom_best = key(domain.sort_values("rank")).iloc[0] if len(domain) else None
        dom_score = pd.Series([r[r["main_metric"]] for _, r in domain.iterrows()], index=domain.index, dtype=float) if len(domain) else None
        in_domain = dict(zip(key(domain), dom_score)) if dom_score is not None else {}
        out.append(
            {
                "task": task,
                "metric": str(t["main_metric"].iloc[0]),
                "groups": groups,
                "winner": best,
                "winner_mean": means[best],
                "winner_standing": _standing(per.get(best)),
                "winner_in_domain": in_domain.get(best, math.nan),
                "in_domain_best": dom_best,
                "in_domain_best_mean": means.get(dom_best, math.nan) if dom_best else math.nan,
                "in_domain_best_standing": _standing(per.get(dom_best)) if dom_best else {},
                "in_domain_best_score": in_domain.get(dom_best, math.nan),
            }
        )
    return out


def model_labels(d: pd.DataFrame) -> pd.Series:
    """'backbone features head' per row (with 'noise S' when the row trained with feature noise)."""
    noise = pd.to_numeric(d["noise"], errors="coerce").fillna(0.0) if "noise" in d else pd.Series(0.0, index=d.index)
    return (
        d["backbone"].astype(str)
        + " "
        + d["features"].astype(str)
        + " "
        + d["head"].astype(str)
        + noise.map(lambda n: f" noise {n:g}" if n else "")
    )


def _standing(g: pd.DataFrame | None) -> dict[str, str]:
    """A model's place in each held-out group: #1, tied with #1 (paired test), or behind."""
    if g is None:
        return {}
    return {
        str(r["held_out"]): ("#1" if int(r["rank"]) == 1 else ("tied" if r.get("tied_with_best") is True else "behind"))
        for _, r in g.iterrows()
    }


def cross_group_lines(rows: pd.DataFrame, column: str = "group") -> list[str]:
    """One line per task of a bench with shift rows: which model wins across the held-out groups, and how the
    in-domain #1 fares there (#1 / tied / behind in each group, by the paired test against each group's #1)."""
    lines = []
    for w in cross_group_winners(rows):
        st = ", ".join(f"{g}: {s}" for g, s in w["winner_standing"].items())
        line = (
            f"task {w['task']}, across {column} (each held out in turn): {w['winner']} has the best mean {w['metric']} held out, {w['winner_mean']:.3f} "
            f"over {', '.join(w['groups'])} ({st})"
        )
        if w["in_domain_best"] and w["in_domain_best"] != w["winner"]:
            st2 = ", ".join(f"{g}: {s}" for g, s in w["in_domain_best_standing"].items())
            line += (
                f"; the in-domain #1 {w['in_domain_best']} ({w['in_domain_best_score']:.3f} in-domain) scores {w['in_domain_best_mean']:.3f} "
                f"held out ({st2})"
            )
        elif w["in_domain_best"]:
            line += "; it is also the in-domain #1"
        lines.append(line)
    return lines
