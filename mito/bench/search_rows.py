"""--feature-search rows: per fold, the variants are forward-selected (mito.heads.search, as fit-head --feature-search)
on inner grouped folds of that fold's training rows, then the selected set is fitted on the fold like any head row and
scored on the fold's test tiles.

How a search row is made (one per task, held-out group, head and noise level):

- **Candidates.** Every non-view variant that the bench's feature sets use (all complete variants of the store when
  ``--features`` is left out), in the order the sets name them; at least two.
- **Rows searched on.** Only the fold's training rows: never its test rows, and never its validation rows, which the
  final fit early-stops on (fit-head searches on train + val because it has no other early-stopping check; here the
  fold's val slides stay an untouched early-stopping set, and in split mode each fold then searches other rows).
- **Search.** ``search_folds`` grouped inner folds of those rows (by slide, each early-stopped on 20% of its own
  training part), greedy forward selection on the mean inner-fold balanced accuracy, stopping at a gain of at most
  ``search_margin`` or at ``search_max`` variants. The seed is the bench's.
- **Fit and score.** The selected set is fitted on the fold's training rows, early-stopped on its val rows and scored
  on its test rows by the path every head row takes (mito.bench.rows.fit_one), so the row is paired with #1 and ranked
  like the others. Each fold may select a different set: the row scores the procedure, not one set. Its ``search``
  field (leaderboard.json) keeps each fold's selected set and search path, its budget (leaderboard.csv) the sets.
- **Recipe.** rows/<ID>.yaml is fit-head with ``feature_search`` on over the same candidates (mito.bench.recipes):
  a model of the row re-runs the procedure on its training rows rather than freezing one fold's set.
- **Cost.** Each fold's job fits up to ``search_folds x (n + (n-1) + ...)`` heads for ``n`` candidates
  (mito.heads.search.max_fits) plus one; the jobs run in the bench's workers (``--jobs``), one progress step per fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mito.bench.cv import Fold
from mito.bench.errors import BenchError
from mito.bench.row import FitJob, Producer, grouped, row_base
from mito.bench.rows import FeatureSet, describe_keys, fit_one, row_id, score_row
from mito.bench.zeroshot import TEXT_HEADS, job_params
from mito.core.tasks import group_ids
from mito.heads import make_head, metadata_categories
from mito.heads.search import SEARCH_METRIC, feature_search, inner_folds, max_fits
from mito.heads.split import VAL_FRACTION, SplitError
from mito.store import is_view, open_store

KIND = "search"
FEATURES = "search"  # the features column of a search row (its candidates are its keys)


def search_candidates(sets: Sequence[FeatureSet]) -> list[str]:
    """The variants the bench's feature sets use, in order, without augmented views (a view is no feature)."""
    return [k for k in dict.fromkeys(k for fs in sets for k in fs.keys) if not is_view(k)]


def search_fit_one(
    store_path: str,
    candidates: tuple[str, ...],
    head: str,
    params: dict[str, Any],
    fold: Fold,
    y: np.ndarray,
    classes: list[str],
    search: dict[str, Any],
    standardize: bool = False,
    pca: int | None = None,
    metadata_columns: Sequence[str] = (),
    stream: bool | None = None,
    memory_budget: int | None = None,
    buffer_rows: int | None = None,
) -> dict[str, Any]:
    """Forward-select ``candidates`` on inner folds of ``fold.train`` (never its val or test rows), then fit the
    selected set on the fold (mito.bench.rows.fit_one); fit_one's result plus the search's report."""
    with open_store(store_path) as store:
        cats = metadata_categories(store.tiles, metadata_columns) if metadata_columns else {}
        groups = group_ids(store.tiles, "group")
        data_kw = {"standardize": standardize, "pca": pca, "categories": cats, "tiles": store.tiles, "stream": stream}
        data_kw.update({"memory_budget": memory_budget, **({"buffer_rows": buffer_rows} if buffer_rows else {})})
        found = feature_search(
            store,
            candidates,
            y,
            fold.train,
            groups,
            lambda: make_head(head, **params),
            folds=int(search["folds"]),
            max_size=int(search["max"]),
            margin=float(search["margin"]),
            val_fraction=VAL_FRACTION,
            seed=int(search["seed"]),
            data_kw=data_kw,
        )
    fitted = fit_one(
        store_path,
        tuple(found.selected),
        head,
        params,
        fold,
        y,
        classes,
        standardize,
        pca,
        metadata_columns,
        stream,
        memory_budget,
        buffer_rows,
    )
    return {**fitted, "search": {"fold": int(fold.index), **found.report()}}


def search_options(cfg: Any) -> dict[str, Any]:
    """What every fold's search is run with (the bench's search fields and seed)."""
    return {"folds": cfg.search_folds, "max": cfg.search_max, "margin": cfg.search_margin, "seed": cfg.seed}


def check_inner_folds(ctx: Any, candidates: Sequence[str]) -> None:
    """Refuse, before any fit, a search that cannot run: under two candidates, or a fold whose training rows cannot be
    cut into ``search_folds`` grouped inner folds (one line naming the fold)."""
    if len(candidates) < 2:
        have = ", ".join(candidates) or "none"
        raise BenchError(f"--feature-search needs at least two candidate variants; the --features sets use {have}")
    with open_store(str(ctx.cfg.store)) as store:
        groups = group_ids(store.tiles, "group")
    for (t, g), plan in ctx.evals.items():
        y = ctx.plans[t][1]
        for f in plan.folds:
            try:
                inner_folds(np.asarray(f.train, np.int64), y, groups, ctx.cfg.search_folds, VAL_FRACTION, ctx.cfg.seed)
            except SplitError as e:
                where = f"task {t}" + (f", held out {g}" if g else "") + f", fold {f.index}"
                raise BenchError(
                    f"--feature-search: {where}: its training rows cannot make {ctx.cfg.search_folds} inner folds: {e}"
                ) from None


class SearchRows(Producer):
    """--feature-search: a row per (task, held-out group, head, noise) whose variants are forward-selected inside each
    fold on that fold's training rows, then fitted and scored on the fold as a head row is."""

    pool = "search"
    fit_label = "feature search (one job per fold)"
    score_label = "scoring search rows"

    def plan(self, ctx: Any) -> list[FitJob]:
        cfg = ctx.cfg
        self.on = bool(getattr(cfg, "feature_search", False))
        if not self.on:
            return []
        self.candidates = search_candidates(ctx.sets)
        check_inner_folds(ctx, self.candidates)
        bb, _ = describe_keys(self.candidates)
        self.fs = FeatureSet(bb, FEATURES, tuple(self.candidates))
        self.skipped = [h for h in ctx.heads if h in TEXT_HEADS]
        search, jobs = search_options(cfg), []
        for (t, g), plan in ctx.evals.items():
            _, y, classes, _ = ctx.plans[t]
            for head in (h for h in ctx.heads if h not in TEXT_HEADS):
                for nz in ctx.noises:
                    params = job_params(head, bb, cfg.head_params, nz, ctx.text) or {}
                    args = (str(cfg.store), self.fs.keys, head, params)
                    extra = (cfg.standardize, cfg.pca)
                    jobs += [
                        FitJob((t, g, head, nz), _delayed(*args, f, y, classes, search, *extra, **ctx.options), f, head) for f in plan.folds
                    ]
        return jobs

    def score(self, ctx: Any, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        from joblib import delayed

        cfg, calls = ctx.cfg, []
        for (t, g, head, nz), items in grouped(jobs, results).items():
            spec, y, classes, _ = ctx.plans[t]
            plan = ctx.evals[(t, g)]
            fits = [r for _, r in items]
            noise = float(fits[0]["params"].get("noise", nz if nz is not None else 0.0) or 0.0)
            found = [r["search"] for r in fits]
            shift = f"shift:{cfg.shift_column}={g}" if g else ""
            base = {
                **row_base(t, self.fs, head, noise, fits[0]["params"]),
                "kind": KIND,
                "held_out": g,
                "shots": "all",
                "budget": search_budget(found, len(plan.folds), cfg, g) + ctx.budget_suffix(),
                "row_id": row_id(t, self.fs.backbone, FEATURES, head, noise, f"{shift}|{search_tag(cfg)}"),
                "search": found,
            }
            calls.append(delayed(score_row)(base, spec, plan, y, classes, fits, [j.unit for j, _ in items], cfg.n_boot, cfg.seed))
        return calls

    def meta(self, ctx: Any, meta: dict[str, Any]) -> dict[str, Any]:
        if not getattr(self, "on", False):
            return meta
        cfg = ctx.cfg
        info = {
            "candidates": self.candidates,
            "search_folds": cfg.search_folds,
            "search_max": cfg.search_max,
            "search_margin": cfg.search_margin,
            "metric": SEARCH_METRIC,
            "max_fits_per_fold": max_fits(len(self.candidates), cfg.search_folds, cfg.search_max) + 1,
            "description": (
                f"per fold: forward selection of the candidates on {cfg.search_folds} grouped inner folds of the fold's training "
                f"rows (never its val or test rows), mean inner-fold {SEARCH_METRIC}, stop at a gain <= {cfg.search_margin} or "
                f"{cfg.search_max} variants; the selected set fitted on the fold and scored on its test rows"
            ),
            **({"skipped_heads": dict.fromkeys(self.skipped, "a text head reads one backbone's text embeddings")} if self.skipped else {}),
        }
        return {**meta, "feature_search": info}


def _delayed(*args: Any, **kw: Any) -> Any:
    """The joblib call of one fold's search and fit."""
    from joblib import delayed

    return delayed(search_fit_one)(*args, **kw)


def search_tag(cfg: Any) -> str:
    """What makes a search row's id differ from another search's on the same candidates."""
    return f"search:max={cfg.search_max},folds={cfg.search_folds},margin={cfg.search_margin!r}"


def search_budget(found: Sequence[dict[str, Any]], n_folds: int, cfg: Any, held_out: str) -> str:
    """The budget line of a search row: how it searched and the set each fold selected."""
    trained_on = f", trained on {cfg.shift_column} other than {held_out}, tested on {held_out}" if held_out else ""
    sets = "; ".join(f"fold {s['fold']}: {describe_keys(s['selected'])[1]}" for s in found)
    return (
        f"{len(found)}/{n_folds} folds{trained_on}, variants forward-selected per fold on {cfg.search_folds} inner folds of its "
        f"training rows (max {cfg.search_max}, margin {cfg.search_margin:g}, {SEARCH_METRIC}), head's own stopping rule; "
        f"selected: {sets}"
    )


def search_lines(rows: Any) -> list[str]:
    """One line per search row of a leaderboard table: the set each fold selected."""
    if "kind" not in rows or "search" not in rows:
        return []
    out = []
    for _, r in rows[rows["kind"] == KIND].iterrows():
        found = r["search"] if isinstance(r["search"], list) else []
        held = f", held out {r['held_out']}" if str(r.get("held_out") or "") else ""
        sets = "; ".join(f"fold {s['fold']}: {describe_keys(s['selected'])[1]}" for s in found if isinstance(s, dict))
        out.append(f"search row ({r['task']}{held}, {r['head']}, #{r['rank']}) selected per fold: {sets or 'not recorded'}")
    return out
