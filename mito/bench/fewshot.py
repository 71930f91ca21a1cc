"""Few-shot learning curves: every (feature set, head) trained on K labelled tiles per class, drawn from each
fold's training part only, scored on the fold's usual test tiles.

How a K-shot row is made (the same for every backbone and head):

- **Draws.** For fold f and draw d, each class's training rows are shuffled once with the seed (seed, f, d), and
  the first K are taken: stratified (exactly K per class, or all of a class that has fewer, which the row says),
  seeded, and nested (draw d at K=2 is a subset of draw d at K=4), so a curve moves only by the added labels.
  Validation and test rows of the fold are never candidates.
- **No validation set.** A lab with K labels per class has no spare labelled tiles to early-stop on, so a K-shot
  head gets none: mlp/linear train their fixed ``epochs`` (no early stopping), lightgbm its ``n_estimators``,
  logreg its fixed C (C=auto needs a validation set and is refused), knn needs none. The fold's own validation
  slides are left unused, so the K-shot rows use no labelled tile beyond their K per class.
- **Value and CI.** The row's metric is the mean over draws x folds of the per-fit metric; ``{metric}_std`` is
  the standard deviation over draws of the per-draw mean over folds (how much it matters which K tiles were
  labelled). The 95% CI is a two-level percentile bootstrap: each replicate resamples the test tiles (shared by
  every fit, as for the normal rows) and the draws (with replacement), so it covers both the test-set sampling
  and the luck of the draw; folds are kept, as for the normal rows.
- ``all`` is the normal leaderboard row (every training tile, early stopping on the fold's validation slides).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.cv import Fold
from mito.bench.errors import BenchError
from mito.bench.row import FitJob, Producer, grouped, row_base
from mito.bench.rows import class_summary, fit_sizes, fold_predictions, row_id
from mito.bench.stats import percentile_interval
from mito.bench.zeroshot import job_params
from mito.core.metrics import (
    CALIBRATION_NAMES,
    METRIC_NAMES,
    classification_metrics,
    positive_index,
    tile_draw_counts,
    weighted_metric,
)

SHOTS_ALL = "all"
DEFAULT_DRAWS = 5
MAX_SHOTS = 1_000_000
KIND = "few-shot"
ZERO_SHOT = "zero-shot"


# ------------------------------------------------------------------ options
def parse_shots(values: str | Sequence[Any]) -> list[int | str]:
    """``"1,2,4,all"`` (or a list) -> ``[1, 2, 4, "all"]``: whole numbers >= 1 (ascending, unique) and 'all'."""
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else list(values)
    out: set[int] = set()
    has_all = False
    for v in items:
        s = str(v).strip().lower()
        if s == SHOTS_ALL:
            has_all = True
            continue
        try:
            k = int(s)
        except ValueError:
            k = None
        if k is None or k < 1 or k > MAX_SHOTS:
            raise ValueError(f"labels per class must be whole numbers from 1 to {MAX_SHOTS:,} or 'all', got {v!r}")
        out.add(k)
    if not out and not has_all:
        raise ValueError("give at least one number of labels per class, e.g. 1,2,4,8,16,32,all")
    return [*sorted(out), *([SHOTS_ALL] if has_all else [])]


def finite_shots(shots: Sequence[int | str] | None) -> list[int]:
    """The numeric K of a parsed --few-shot list ('all' is the normal row, always there)."""
    return [int(k) for k in shots or [] if k != SHOTS_ALL]


# ------------------------------------------------------------------ draws
def draw_shots(
    train_rows: np.ndarray, labels: np.ndarray, k: int, seed: int = 0, fold: int = 0, draw: int = 0
) -> tuple[np.ndarray, dict[str, int]]:
    """``k`` rows per class of ``train_rows`` (sorted), stratified and seeded by (seed, fold, draw); nested in ``k``.

    ``labels`` has one label per store row. Returns the rows and, for every class with fewer than ``k`` training
    rows (all of which are then used), its count.
    """
    if k < 1:
        raise BenchError(f"labels per class must be >= 1, got {k}")
    train_rows = np.asarray(train_rows, dtype=np.int64)
    lab = np.asarray(labels, dtype=object)[train_rows].astype(str)
    rng = np.random.default_rng([int(seed), int(fold), int(draw)])
    picked, short = [], {}
    for c in sorted(set(lab)):
        rows_c = train_rows[lab == c]  # in the fold's (sorted) order: the permutation alone decides
        perm = rng.permutation(len(rows_c))
        picked.append(rows_c[perm[:k]])
        if len(rows_c) < k:
            short[str(c)] = len(rows_c)
    return np.sort(np.concatenate(picked)) if picked else train_rows[:0], short


def shot_folds(
    folds: Sequence[Fold], labels: np.ndarray, k: int, n_draws: int, seed: int = 0
) -> tuple[list[tuple[int, Fold]], dict[str, int]]:
    """(draw, fold) pairs whose training rows are ``k`` per class of the fold's training part, with no validation
    rows and the fold's test rows; one draw only when every class of every fold has at most ``k`` training rows
    (every draw would be the same). Also returns the smallest count of every class that had fewer than ``k``."""
    out: list[tuple[int, Fold]] = []
    short: dict[str, int] = {}
    first = [draw_shots(f.train, labels, k, seed, f.index, 0) for f in folds]
    everything = all(len(rows) == len(f.train) for (rows, _), f in zip(first, folds))
    for d in range(1 if everything else n_draws):
        for f, drawn0 in zip(folds, first):
            rows, s = drawn0 if d == 0 else draw_shots(f.train, labels, k, seed, f.index, d)
            for c, n in s.items():
                short[c] = min(n, short.get(c, n))
            out.append((d, Fold(f.index, rows, f.train[:0], f.test)))
    return out, short


# ------------------------------------------------------------------ statistics
def draw_fold_ci(
    yi: np.ndarray,
    proba: np.ndarray,
    fit: np.ndarray,
    tile: np.ndarray,
    draw_of_fit: np.ndarray,
    metric: str,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    positive: int = 1,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over draws x folds, resampling test tiles and draws (two classes: column
    ``positive`` is the positive class).

    Prediction row i belongs to ``fit[i]`` (one (draw, fold) model) and test ``tile[i]``; ``draw_of_fit[j]`` is
    fit j's draw (no replicates: NaN). Each replicate draws the tiles with replacement (a tile counts in every fit that scored it),
    then the draws with replacement, and averages the chosen draws' per-fit metrics.
    """
    if n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    tpos, counts = tile_draw_counts(tile, n_boot, rng)
    n_fits = len(draw_of_fit)
    stats = np.full((n_boot, n_fits), np.nan)
    for j in range(n_fits):
        sel = np.flatnonzero(fit == j)
        stats[:, j] = weighted_metric(metric, yi[sel], proba[sel], counts[:, tpos[sel]], positive)
    draws = np.unique(draw_of_fit)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_draw = np.stack([np.nanmean(stats[:, draw_of_fit == d], axis=1) for d in draws], axis=1)  # (n_boot, D)
        chosen = rng.integers(0, len(draws), (n_boot, len(draws)))
        values = np.nanmean(np.take_along_axis(per_draw, chosen, axis=1), axis=1)
    return percentile_interval(values, level)


def score_shot_row(
    base: dict[str, Any],
    main_metric: str,
    y: np.ndarray,
    classes: list[str],
    results: Sequence[dict[str, Any]],
    fits: Sequence[tuple[int, Fold]],
    n_boot: int,
    seed: int,
    positive: str | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A K-shot row: metrics per (draw, fold) fit, their mean, the spread over draws, the two-level bootstrap CI; and
    the predictions (two classes: ``positive`` is the task's positive class, as in score_row)."""
    positive = positive if len(classes) == 2 else None
    pos = positive_index(classes, positive) if positive is not None else 1
    per_fit = [classification_metrics(y[f.test], r["proba"], classes, positive) for (_, f), r in zip(fits, results)]
    draw_ids = np.array([d for d, _ in fits])
    arrays = fold_predictions([f for _, f in fits], results, y, classes, positive)
    arrays = {"fold": arrays.pop("fold"), "draw": np.concatenate([np.full(len(f.test), d) for d, f in fits]), **arrays}
    fit_of_row = np.concatenate([np.full(len(f.test), j) for j, (_, f) in enumerate(fits)])
    proba = arrays["proba"].astype(np.float64)
    lo, hi = draw_fold_ci(arrays["y"], proba, fit_of_row, arrays["row"], draw_ids, main_metric, n_boot=n_boot, seed=seed, positive=pos)
    row = {
        **base,
        **draw_summary(per_fit, draw_ids),
        "main_metric": main_metric,
        "ci_low": lo,
        "ci_high": hi,
        **fit_sizes([f for _, f in fits], results),
        "n_folds": len({f.index for _, f in fits}),
        "draws": len(np.unique(draw_ids)),
        **class_summary(per_fit, classes, positive),
        "per_fold": [{"draw": int(d), "fold": int(f.index), **{k: p[k] for k in METRIC_NAMES}} for (d, f), p in zip(fits, per_fit)],
    }
    return row, arrays


def draw_summary(per_fit: Sequence[dict[str, Any]], draw_ids: np.ndarray) -> dict[str, float]:
    """Each metric's mean over draws x folds and its spread over draws (std of the per-draw means; 0 for one draw)."""
    summary: dict[str, float] = {}
    for m in (*METRIC_NAMES, *CALIBRATION_NAMES):  # ECE and Brier too, as the normal rows have them
        vals = np.array([float(p[m]) for p in per_fit])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_draw = np.array([np.nanmean(vals[draw_ids == d]) for d in np.unique(draw_ids)])
            summary[m] = float(np.nanmean(vals))
            summary[f"{m}_std"] = float(np.nanstd(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0
    return summary


# ------------------------------------------------------------------ the row producer
class FewShotRows(Producer):
    """--few-shot: a row per (task, feature set, head, noise, K): the head fitted on K labelled tiles per class of
    each fold's training part (seeded draws), no validation set, scored on the fold's usual test tiles."""

    pool = "few-shot"
    fit_label = "fitting few-shot heads"
    score_label = "scoring few-shot rows"

    def plan(self, ctx: Any) -> list[FitJob]:
        cfg = ctx.cfg
        self.shots = finite_shots(cfg.few_shot)
        self.n_draws = int(cfg.few_shot_draws or DEFAULT_DRAWS)
        self.draws = {(t, k): shot_folds(p[3].folds, p[1], k, self.n_draws, cfg.seed) for t, p in ctx.plans.items() for k in self.shots}
        jobs: list[FitJob] = []
        for fs in ctx.sets if self.shots else ():
            for t in ctx.plans:
                for head in ctx.heads:
                    for nz in ctx.noises:
                        params = job_params(head, fs.backbone, cfg.head_params, nz, ctx.text)
                        if params is None:  # a text head on features without text embeddings
                            continue
                        for k in self.shots:
                            fits = self.draws[(t, k)][0]
                            jobs += [FitJob((t, fs, head, nz, k), ctx.fit_call(fs, head, params, f, t), (d, f), head) for d, f in fits]
        return jobs

    def score(self, ctx: Any, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        from joblib import delayed

        cfg, calls = ctx.cfg, []
        for (t, fs, head, nz, k), items in grouped(jobs, results).items():
            spec, y, classes, plan = ctx.plans[t]
            fits = [r for _, r in items]
            noise = float(fits[0]["params"].get("noise", nz if nz is not None else 0.0) or 0.0)
            short = self.draws[(t, k)][1]
            base = {
                **row_base(t, fs, head, noise, fits[0]["params"]),
                "kind": KIND,
                "shots": str(k),
                "short_classes": short,
                "budget": shot_budget(k, len({j.unit[0] for j, _ in items}), len(plan.folds), short) + ctx.budget_suffix(),
                "row_id": row_id(t, fs.backbone, fs.name, head, noise, f"shots={k}"),
            }
            units = [j.unit for j, _ in items]
            calls.append(delayed(score_shot_row)(base, spec.main_metric, y, classes, fits, units, cfg.n_boot, cfg.seed, spec.positive))
        return calls

    def meta(self, ctx: Any, meta: dict[str, Any]) -> dict[str, Any]:
        if not self.shots:
            return meta
        n = self.n_draws
        few = {
            "shots": self.shots,
            "draws": n,
            "description": (
                f"K labelled tiles per class drawn from each fold's training part ({n} seeded, stratified, nested draws per K; one "
                "when K covers every class), no validation set (fixed training budget); value: mean over draws x folds; "
                "std: over draws; 95% CI: bootstrap over test tiles and draws"
            ),
            "short_classes": {f"{t}:{k}": s for (t, k), (_, s) in self.draws.items() if s},
        }
        return {**meta, "few_shot": few}


def shot_budget(k: int, n_draws: int, n_folds: int, short: dict[str, int]) -> str:
    """The budget line of a K-shot row."""
    note = f"; fewer than {k} training tiles, all used: " + ", ".join(f"{c} {n}" for c, n in sorted(short.items())) if short else ""
    return (
        f"{k} labelled tiles per class from each fold's training part, {n_draws} seeded draw{'s' if n_draws > 1 else ''} x "
        f"{n_folds} folds, no validation set (the head's fixed budget)" + note
    )


# ------------------------------------------------------------------ rows for display
def shots_of(rows: pd.DataFrame) -> pd.Series:
    """Each row's shots as text ('all' for a normal row, and for rows written before the column existed)."""
    if "shots" not in rows:
        return pd.Series(SHOTS_ALL, index=rows.index, dtype=object)
    return rows["shots"].map(
        lambda v: SHOTS_ALL if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("", "nan") else str(v)
    )


def main_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The normal leaderboard rows (every training tile), without the K-shot rows."""
    return rows[shots_of(rows) == SHOTS_ALL]


def is_zero_shot(rows: pd.DataFrame) -> pd.Series:
    """Which rows are zero-shot rows (no training)."""
    return (rows["head"].astype(str) == ZERO_SHOT) | (rows["kind"].astype(str) == ZERO_SHOT)


def curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Learning-curve points of one task: one line per (backbone, features, head, noise) with K-shot rows, its K-shot
    rows and its in-domain 'all' row (x = K, or NaN for 'all'), sorted by line and K (shift rows are no curve points)."""
    if "held_out" in rows:
        rows = rows[rows["held_out"].fillna("").astype(str) == ""]
    shots = shots_of(rows)
    few = rows[shots != SHOTS_ALL]
    if few.empty:
        return few.assign(k=[], line=[])
    key = ["backbone", "features", "head", "noise"]
    lines = few[key].drop_duplicates()
    normal = rows[(shots == SHOTS_ALL) & ~is_zero_shot(rows)].merge(lines, on=key)
    pts = pd.concat([few, normal], ignore_index=True)
    pts["k"] = [math.nan if s == SHOTS_ALL else float(s) for s in shots_of(pts)]
    pts["line"] = [f"{r['backbone']} {r['features']} {r['head']}" + (f" σ={r['noise']:g}" if r["noise"] else "") for _, r in pts.iterrows()]
    return pts.sort_values(["line", "k"], na_position="last").reset_index(drop=True)


def curve_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Wide learning-curve table: one row per line, one column per K ('all' last), cells 'mean [ci_low, ci_high]'."""
    pts = curves(rows)
    if pts.empty:
        return pd.DataFrame()
    pts = pts.assign(col=[SHOTS_ALL if math.isnan(k) else str(int(k)) for k in pts["k"]])
    pts["cell"] = [
        f"{r[metric]:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if np.isfinite(r["ci_low"]) else f"{r[metric]:.3f}"
        for _, r in pts.iterrows()
    ]
    order = [*sorted({c for c in pts["col"] if c != SHOTS_ALL}, key=int), SHOTS_ALL]
    wide = pts.pivot(index="line", columns="col", values="cell").reindex(columns=[c for c in order if c in set(pts["col"])])
    return wide.fillna("–")
