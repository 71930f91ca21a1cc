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

import html
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.cv import Fold
from mito.bench.errors import BenchError
from mito.metrics import (
    CALIBRATION_NAMES,
    METRIC_NAMES,
    classification_metrics,
    per_class_summary,
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
def draw_shots(train_rows: np.ndarray, labels: np.ndarray, k: int, seed: int = 0, fold: int = 0, draw: int = 0) -> tuple[np.ndarray, dict[str, int]]:
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


def shot_folds(folds: Sequence[Fold], labels: np.ndarray, k: int, n_draws: int, seed: int = 0) -> tuple[list[tuple[int, Fold]], dict[str, int]]:
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
    fit j's draw. Each replicate draws the tiles with replacement (a tile counts in every fit that scored it),
    then the draws with replacement, and averages the chosen draws' per-fit metrics.
    """
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
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


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
    index = {c: i for i, c in enumerate(classes)}
    positive = positive if len(classes) == 2 else None
    pos = positive_index(classes, positive) if positive is not None else 1
    per_fit = [classification_metrics(y[f.test], r["proba"], classes, positive) for (_, f), r in zip(fits, results)]
    draw_ids = np.array([d for d, _ in fits])
    summary: dict[str, float] = {}
    for m in (*METRIC_NAMES, *CALIBRATION_NAMES):  # ECE and Brier too, as the normal rows have them
        vals = np.array([float(p[m]) for p in per_fit])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_draw = np.array([np.nanmean(vals[draw_ids == d]) for d in np.unique(draw_ids)])
            summary[m] = float(np.nanmean(vals))
            summary[f"{m}_std"] = float(np.nanstd(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0
    arrays = {
        "fold": np.concatenate([np.full(len(f.test), f.index) for _, f in fits]),
        "draw": np.concatenate([np.full(len(f.test), d) for d, f in fits]),
        "row": np.concatenate([f.test for _, f in fits]),
        "y": np.concatenate([np.array([index[v] for v in y[f.test]]) for _, f in fits]),
        "proba": np.concatenate([r["proba"].astype(np.float32) for r in results]),
        **({"positive": np.array(pos, dtype=np.int64)} if positive is not None else {}),
    }
    fit_of_row = np.concatenate([np.full(len(f.test), j) for j, (_, f) in enumerate(fits)])
    lo, hi = (
        draw_fold_ci(arrays["y"], arrays["proba"].astype(np.float64), fit_of_row, arrays["row"], draw_ids, main_metric, n_boot=n_boot, seed=seed, positive=pos)
        if n_boot > 0
        else (math.nan, math.nan)
    )
    cm = np.sum([np.asarray(p["confusion_matrix"], dtype=np.int64) for p in per_fit], axis=0)
    n_draws = len(np.unique(draw_ids))
    row = {
        **base,
        **summary,
        "main_metric": main_metric,
        "ci_low": lo,
        "ci_high": hi,
        "train_seconds": float(np.mean([r["train_seconds"] for r in results])),
        "predict_seconds": float(np.mean([r.get("predict_seconds", math.nan) for r in results])),
        "n_train": int(round(np.mean([len(f.train) for _, f in fits]))),
        "n_val": 0,
        "n_test": int(round(np.mean([len(f.test) for _, f in fits]))),
        "n_folds": len({f.index for _, f in fits}),
        "draws": n_draws,
        "classes": list(classes),
        "positive": positive,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class_summary(per_fit, classes),
        "per_fold": [{"draw": int(d), "fold": int(f.index), **{k: p[k] for k in METRIC_NAMES}} for (d, f), p in zip(fits, per_fit)],
    }
    return row, arrays


# ------------------------------------------------------------------ the run
def fewshot_rows(
    cfg: Any,
    plans: dict[str, Any],
    sets: Sequence[Any],
    heads: Sequence[str],
    noises: Sequence[float | None],
    n_jobs: int,
    options: dict[str, Any],
    progress: bool = True,
    text: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Fit every (task, feature set, head, noise, K, draw, fold) of a bench config's --few-shot list; score the K-shot rows.

    ``text`` (the bench's :class:`mito.bench.zeroshot.TextPlan`) gives text heads their class text embeddings, as for
    the normal rows. Returns the rows, their predictions (by row id) and a description for the leaderboard's meta.
    """
    from joblib import Parallel, delayed

    from mito.bench.leaderboard import fit_one, row_id, run_parallel
    from mito.bench.zeroshot import text_head_params

    shots = finite_shots(cfg.few_shot)
    n_draws = int(cfg.few_shot_draws or DEFAULT_DRAWS)
    draws: dict[tuple[str, int], tuple[list[tuple[int, Fold]], dict[str, int]]] = {}
    for t, (spec, y, classes, plan) in plans.items():
        for k in shots:
            draws[(t, k)] = shot_folds(plan.folds, y, k, n_draws, cfg.seed)
    jobs = []
    for fs in sets:
        for t, (spec, y, classes, plan) in plans.items():
            for head in heads:
                for nz in noises:
                    params = dict(cfg.head_params.get(head, {}))
                    if text is not None:
                        params = text_head_params(head, fs.backbone, params, text)
                        if params is None:  # a text head on features without text embeddings
                            continue
                    if nz is not None:
                        params["noise"] = nz
                    for k in shots:
                        for d, f in draws[(t, k)][0]:
                            jobs.append((t, fs, head, nz, params, k, d, f))
    calls = (
        delayed(fit_one)(str(cfg.store), fs.keys, head, params, f, plans[t][1], plans[t][2], cfg.standardize, cfg.pca, **options)
        for t, fs, head, nz, params, k, d, f in jobs
    )
    results = run_parallel(Parallel, calls, len(jobs), n_jobs, progress, "fitting few-shot heads")
    grouped: dict[tuple[Any, ...], list[tuple[tuple[int, Fold], dict[str, Any]]]] = {}
    for (t, fs, head, nz, params, k, d, f), r in zip(jobs, results):
        grouped.setdefault((t, fs, head, nz, k), []).append(((d, f), r))
    score_calls = []
    for (t, fs, head, nz, k), items in grouped.items():
        spec, y, classes, plan = plans[t]
        noise = float(items[0][1]["params"].get("noise", nz if nz is not None else 0.0) or 0.0)
        short = draws[(t, k)][1]
        n_d = len({d for (d, _), _ in items})
        note = f"; fewer than {k} training tiles, all used: " + ", ".join(f"{c} {n}" for c, n in sorted(short.items())) if short else ""
        base = {
            "task": t,
            "backbone": fs.backbone,
            "features": fs.name,
            "head": head,
            "noise": noise,
            "kind": KIND,
            "shots": str(k),
            "short_classes": short,
            "budget": f"{k} labelled tiles per class from each fold's training part, {n_d} seeded draw{'s' if n_d > 1 else ''} x "
            f"{len(plan.folds)} folds, no validation set (the head's fixed budget)" + note
            + (", standardised" if cfg.standardize else "") + (f", pca {cfg.pca}" if cfg.pca else ""),
            "params": json.dumps(items[0][1]["params"], sort_keys=True),
            "row_id": row_id(t, fs.backbone, fs.name, head, noise, f"shots={k}"),
            "keys": list(fs.keys),
        }
        score_calls.append(
            delayed(score_shot_row)(base, spec.main_metric, y, classes, [r for _, r in items], [df for df, _ in items], cfg.n_boot, cfg.seed, spec.positive)
        )
    scored = run_parallel(Parallel, score_calls, len(score_calls), n_jobs, progress, "scoring few-shot rows")
    meta = {
        "shots": shots,
        "draws": n_draws,
        "description": (
            f"K labelled tiles per class drawn from each fold's training part ({n_draws} seeded, stratified, nested draws per K; one "
            "when K covers every class), no validation set (fixed training budget); value: mean over draws x folds; "
            "std: over draws; 95% CI: bootstrap over test tiles and draws"
        ),
        "short_classes": {f"{t}:{k}": s for (t, k), (_, s) in draws.items() if s},
    }
    return [r for r, _ in scored], {r["row_id"]: a for r, a in scored}, meta


# ------------------------------------------------------------------ rows for display
def shots_of(rows: pd.DataFrame) -> pd.Series:
    """Each row's shots as text ('all' for a normal row, and for rows written before the column existed)."""
    if "shots" not in rows:
        return pd.Series(SHOTS_ALL, index=rows.index, dtype=object)
    return rows["shots"].map(lambda v: SHOTS_ALL if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("", "nan") else str(v))


def main_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The normal leaderboard rows (every training tile), without the K-shot rows."""
    return rows[shots_of(rows) == SHOTS_ALL]


def _is_zero_shot(rows: pd.DataFrame) -> pd.Series:
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
    normal = rows[(shots == SHOTS_ALL) & ~_is_zero_shot(rows)].merge(lines, on=key)
    pts = pd.concat([few, normal], ignore_index=True)
    pts["k"] = [math.nan if s == SHOTS_ALL else float(s) for s in shots_of(pts)]
    pts["line"] = [f"{r['backbone']} {r['features']} {r['head']}" + (f" σ={r['noise']:g}" if r["noise"] else "") for _, r in pts.iterrows()]
    return pts.sort_values(["line", "k"], na_position="last").reset_index(drop=True)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve_figure(rows: pd.DataFrame, metric: str, path: Path, chance: float | None = None) -> Path | None:
    """The main metric against labelled tiles per class (log x): one line per feature set x head with its 95% CI
    band, 'all' (every training tile) at the right end, zero-shot rows as horizontal lines, chance dashed."""
    from mito.io import atomic_write

    pts = curves(rows)
    if pts.empty:
        return None
    plt = _plt()
    ks = sorted({int(k) for k in pts["k"].dropna()})
    x_all = ks[-1] * 2.0 if ks else 1.0
    n_all = pts.loc[pts["k"].isna(), "n_train"]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    colors = plt.get_cmap("tab10" if pts["line"].nunique() <= 10 else "tab20")
    styles = {"linear": "-", "mlp": "--", "logreg": "-.", "knn": ":", "lightgbm": (0, (5, 1, 1, 1))}
    fs_names = list(dict.fromkeys(pts["backbone"] + " " + pts["features"]))
    for i, (line, g) in enumerate(pts.groupby("line", sort=False)):
        x = g["k"].fillna(x_all).to_numpy(float)
        v = g[metric].to_numpy(float)
        c = colors(fs_names.index(g["backbone"].iloc[0] + " " + g["features"].iloc[0]) % colors.N)
        few = ~g["k"].isna().to_numpy()
        ax.plot(x[few], v[few], marker="o", ms=3.5, lw=1.4, color=c, ls=styles.get(str(g["head"].iloc[0]), "-"), label=line)
        ax.fill_between(x, g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float), color=c, alpha=0.12, lw=0)
        if not few.all() and few.any():  # 'all' sits at an arbitrary x: joined by a thin dotted line, drawn as a square
            last = np.flatnonzero(few)[-1]
            ax.plot([x[last], x_all], [v[last], v[~few][0]], color=c, lw=0.8, ls=":")
            ax.plot([x_all], [v[~few][0]], marker="s", ms=5, color=c, ls="none")
    zs = rows[_is_zero_shot(rows)]
    for j, (_, r) in enumerate(zs.iterrows()):
        ax.axhline(float(r[metric]), color="#7b3294", lw=1.3, ls=(0, (6, 2)), label=f"zero-shot {r['backbone']} {r['features']}")
        if np.isfinite(float(r.get("ci_low", math.nan))):
            ax.axhspan(float(r["ci_low"]), float(r["ci_high"]), color="#7b3294", alpha=0.07, lw=0)
    if chance is not None:
        ax.axhline(chance, color="#444444", lw=0.9, ls="--")
        ax.text(x_all, chance, f"chance {chance:.2g} ", fontsize=7, va="top", ha="right", color="#444444")
    ax.set_xscale("log", base=2)
    all_label = f"all\n(~{int(n_all.mean()):,} in total)" if len(n_all) else "all"
    ax.set_xticks([*ks, x_all], [*map(str, ks), all_label], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("labelled training tiles per class (log scale); 'all' = every training tile, with early stopping")
    ax.set_ylabel(metric)
    d = pts["draws"].dropna()
    n_draws = int(d.max()) if len(d) else 1
    folds = int(pts["n_folds"].dropna().max()) if pts["n_folds"].notna().any() else 1
    ax.set_title(
        f"How many labels? {metric} vs labels per class\n"
        f"mean over up to {n_draws} draws x {folds} folds; band: 95% bootstrap CI over test tiles and draws", fontsize=9
    )
    ax.grid(alpha=0.3)
    n_lines = pts["line"].nunique() + len(zs)
    ax.legend(fontsize=7 if n_lines <= 8 else 6, loc="lower right" if n_lines <= 8 else "center left",
              bbox_to_anchor=None if n_lines <= 8 else (1.01, 0.5))
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110), ".png")
    plt.close(fig)
    return path


def curve_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Wide learning-curve table: one row per line, one column per K ('all' last), cells 'mean [ci_low, ci_high]'."""
    pts = curves(rows)
    if pts.empty:
        return pd.DataFrame()
    pts = pts.assign(col=[SHOTS_ALL if math.isnan(k) else str(int(k)) for k in pts["k"]])
    pts["cell"] = [f"{r[metric]:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if np.isfinite(r["ci_low"]) else f"{r[metric]:.3f}" for _, r in pts.iterrows()]
    order = [*sorted({c for c in pts["col"] if c != SHOTS_ALL}, key=int), SHOTS_ALL]
    wide = pts.pivot(index="line", columns="col", values="cell").reindex(columns=[c for c in order if c in set(pts["col"])])
    return wide.fillna("–")


def report_section(rows: pd.DataFrame, metric: str, path: Path, chance: float | None, img: Any) -> str:
    """HTML for the report: the learning curve PNG (written to ``path``) and its table; '' without K-shot rows."""
    png = learning_curve_figure(rows, metric, path, chance)
    if png is None:
        return ""
    wide = curve_table(rows, metric)
    head = "".join(f"<th>{html.escape(c if c == SHOTS_ALL else f'K={c}')}</th>" for c in wide.columns)
    body = "".join(
        f"<tr><td class='l'>{html.escape(str(line))}</td>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
        for line, r in wide.iterrows()
    )
    pts = curves(rows)
    short = sorted({f"K={r['shots']}: " + ", ".join(f"{c} has {n}" for c, n in r["short_classes"].items())
                    for _, r in pts.iterrows() if isinstance(r.get("short_classes"), dict) and r["short_classes"]})
    zs = rows[_is_zero_shot(rows)]
    zs_note = "".join(f"<li>zero-shot {html.escape(str(r['backbone']))}: {_f(r[metric])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]</li>" for _, r in zs.iterrows())
    return (
        "<h3>How many labels do we need? (few-shot learning curve)</h3>"
        f"<p class='meta'>{html.escape(metric)} when each head is trained on K labelled tiles per class, drawn (stratified, seeded, "
        "nested in K) from each fold's training part only and scored on the fold's usual test tiles. No validation set for K-shot "
        "heads (fixed training budget); 'all' is the normal row. Cell: mean over draws x folds [95% bootstrap CI over test tiles "
        "and draws].</p>"
        + (f"<p class='meta'>Classes with fewer than K training tiles (all used): {html.escape('; '.join(short))}</p>" if short else "")
        + f"<table><thead><tr><th class='l'>feature set, head</th>{head}</tr></thead><tbody>{body}</tbody></table>"
        + (f"<ul>{zs_note}</ul>" if zs_note else "")
        + f"<div class='figs'>{img(png, 'few-shot learning curve')}</div>"
    )


def _f(v: Any) -> str:
    try:
        return f"{float(v):.3f}"
    except (TypeError, ValueError):
        return "–"


def _two_lines(cell: str) -> str:
    """'0.712 [0.650, 0.770]' -> '0.712' over '0.650-0.770' (a narrower column)."""
    mean, _, ci = cell.partition(" [")
    if not ci:
        return mean
    lo, _, hi = ci.rstrip("]").partition(", ")
    return f"{mean}\n{lo}-{hi}"


def curve_rich_table(rows: pd.DataFrame) -> Any:
    """The learning curve(s) of a leaderboard, a table per task that fits the terminal (columns K continue in a second
    table when the width is short; no number is cut); None without K-shot rows."""
    from rich.console import Group

    from mito.tables import Col, FitTable

    tables = []
    for task, g in rows.groupby("task", sort=True):
        metric = str(g["main_metric"].iloc[0])
        wide = curve_table(g, metric)
        if wide.empty:
            continue
        cols = [Col("feature set, head", "left", fold=18)] + [Col(f"K={c}" if c != SHOTS_ALL else "all") for c in wide.columns]
        body = [[str(line), *[_two_lines(str(v)) for v in r]] for line, r in wide.iterrows()]
        tables.append(FitTable(cols, body, title=f"{task}: {metric} vs labelled tiles per class (mean, 95% CI below)", wrap=True))
    return Group(*tables) if tables else None
