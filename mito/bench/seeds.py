"""Several bench runs of one configuration (seeds) pooled into one table: each row's mean and sd over the runs, the
ensemble of each run's fold models where they predict the same test tiles, and a paired bootstrap against a
reference row (row minus reference, and the ensemble minus the reference's single models)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.errors import BenchError
from mito.bench.leaderboard import load_leaderboard
from mito.bench.stats import bootstrap_p_value, percentile_interval, prediction_positive
from mito.core.metrics import bootstrap_replicates, metric_score

# a row of one run is the same configuration as a row of another when these agree (row ids do not name the seed
# today, but matching by configuration does not rely on that)
MATCH_KEYS = ("task", "backbone", "features", "head", "noise", "kind", "held_out", "shots")
# what must agree between the runs' tasks (the folds themselves differ: they depend on --seed)
PROTOCOL_KEYS = ("cv", "n_folds", "classes", "positive", "main_metric")
POOLED_METRICS = ("balanced_accuracy", "auroc")
NO_ENSEMBLE = "the fold models predict different tiles (k-fold): no ensemble"


@dataclass(frozen=True)
class Reference:
    """The row others are compared with: its feature set (variant keys joined by '+', or the row's feature name), head and noise (None: any)."""

    features: str
    head: str
    noise: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Reference:
        """'FEATURES,HEAD[,NOISE]' (FEATURES as bench's --features takes one set) as a Reference."""
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) not in (2, 3) or not all(parts):
            raise BenchError(f"reference {spec!r} must be FEATURES,HEAD or FEATURES,HEAD,NOISE (e.g. efficientnet_lite0:z2:rgb,mlp)")
        try:
            noise = float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise BenchError(f"reference {spec!r}: noise {parts[2]!r} is not a number") from None
        return cls(parts[0], parts[1], noise)

    def matches(self, row: dict[str, Any]) -> bool:
        """True when ``row`` (a leaderboard row) has this feature set, head and (when given) noise."""
        want = self.features.strip()
        raw = row.get("keys")
        keys: list[Any] = raw if isinstance(raw, list) else []
        same = want in (row["features"], f"{row['backbone']} {row['features']}") or (
            ":" in want and {k.strip() for k in want.split("+")} == set(map(str, keys))
        )
        # a head row on all labels: a few-shot or search row (same features and head) is another configuration
        plain = str(row.get("kind") or "head") == "head" and str(row.get("shots") or "all") == "all"
        return plain and same and row["head"] == self.head and (self.noise is None or math.isclose(float(row["noise"]), self.noise))

    def __str__(self) -> str:
        return f"{self.features} {self.head}" + ("" if self.noise is None else f" noise {self.noise:g}")


@dataclass
class SeedRun:
    """One bench folder: its rows and meta (predictions are read per row, from ``folder``/predictions.npz)."""

    folder: Path
    rows: pd.DataFrame
    meta: dict[str, Any]

    @property
    def seed(self) -> Any:
        """The run's --seed (None when not recorded)."""
        return (self.meta.get("config") or {}).get("seed")

    def predictions(self, rid: str) -> dict[str, np.ndarray] | None:
        """One row's kept test predictions (fold, row, y, proba, ...), or None when the folder kept none."""
        npz = self.folder / "predictions.npz"
        if not npz.is_file():
            return None
        with np.load(npz, allow_pickle=False) as z:
            out = {k.partition(".")[2]: np.asarray(z[k]) for k in z.files if k.partition(".")[0] == rid}
        return out if "proba" in out else None


def load_runs(folders: Sequence[str | os.PathLike]) -> list[SeedRun]:
    """Each folder as a :class:`SeedRun` (checked by load_leaderboard), refused in one line unless they can be pooled."""
    if not folders:
        raise BenchError("no bench folders to pool")
    paths = [Path(f).resolve() for f in folders]
    if len(set(paths)) < len(paths):
        raise BenchError("a bench folder is given twice")
    runs = []
    for p in paths:
        lb = load_leaderboard(p)
        runs.append(SeedRun(p, match_key_columns(lb.rows), lb.meta))
    check_compatible(runs)
    return runs


def match_key_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with their match columns normalised (held_out '' in-domain, shots 'all', noise a float)."""
    rows = rows.copy()
    for c, default in (("held_out", ""), ("shots", "all"), ("kind", "head")):
        rows[c] = rows[c].map(lambda v, d=default: d if v is None or str(v) in ("", "nan", "None") else str(v)) if c in rows else default
    rows["noise"] = pd.to_numeric(rows["noise"], errors="coerce").fillna(0.0).round(12) if "noise" in rows else 0.0
    return rows


def _store_id(meta: dict[str, Any]) -> str:
    store = meta.get("store") or {}
    return str(store.get("tile_list_sha256") or store.get("path") or "")


def check_compatible(runs: Sequence[SeedRun]) -> None:
    """Refuse runs of different stores (tile list, or the same variant extracted otherwise), tasks, protocols or shift column."""
    for run in runs[1:]:
        _check_pair(run, runs[0], f"{run.folder} and {runs[0].folder}")
    configs = [{k: v for k, v in (r.meta.get("config") or {}).items() if k != "include"} for r in runs]
    for i, c in enumerate(configs):
        if c and c in configs[:i]:
            raise BenchError(
                f"{runs[i].folder} repeats the run of {runs[configs.index(c)].folder} (same config and seed): it would count one run twice"
            )


def _check_pair(a: SeedRun, b: SeedRun, where: str) -> None:
    if _store_id(a.meta) != _store_id(b.meta):
        raise BenchError(f"{where} were run on different stores (their tile lists differ): pool runs of one store")
    va, vb = a.meta.get("variants") or {}, b.meta.get("variants") or {}
    for k in sorted(set(va) & set(vb)):
        if any((va[k] or {}).get(f) != (vb[k] or {}).get(f) for f in ("weights_sha256", "preprocessing", "dim")):
            raise BenchError(f"{where} hold feature {k} extracted differently (weights or preprocessing): pool runs of one store")
    ta, tb = a.meta.get("tasks") or {}, b.meta.get("tasks") or {}
    if set(ta) != set(tb):
        raise BenchError(f"{where} rank different tasks ({', '.join(sorted(ta))} vs {', '.join(sorted(tb))}): pool runs of one task")
    for t in ta:
        diff = [f for f in PROTOCOL_KEYS if (ta[t] or {}).get(f) != (tb[t] or {}).get(f)]
        if diff:
            raise BenchError(f"{where} scored task {t!r} with a different protocol ({', '.join(diff)} differ)")
    sa, sb = (a.meta.get("shift") or {}).get("column"), (b.meta.get("shift") or {}).get("column")
    if sa and sb and sa != sb:  # a run without shift rows still shares its in-domain rows
        raise BenchError(f"{where} hold out different shift columns ({sa} vs {sb})")


def matched_rows(runs: Sequence[SeedRun]) -> list[list[dict[str, Any]]]:
    """The rows present in every run, matched by configuration (:data:`MATCH_KEYS`): one list of per-run rows each."""
    by_run = []
    for run in runs:
        recs: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in run.rows.to_dict("records"):
            key = tuple(r[k] for k in MATCH_KEYS)
            if key in recs:
                raise BenchError(f"{run.folder} has two rows of configuration {' '.join(map(str, key))}")
            recs[key] = r
        by_run.append(recs)
    keys = [k for k in by_run[0] if all(k in recs for recs in by_run[1:])]
    if not keys:
        raise BenchError("the bench folders share no row (same task, features, head, noise and held-out group)")
    return [[recs[k] for recs in by_run] for k in keys]


@dataclass
class Models:
    """Every (run, fold) model's test predictions of one configuration, stacked: ``model`` numbers the models."""

    y: np.ndarray
    proba: np.ndarray
    model: np.ndarray
    tile: np.ndarray
    run: np.ndarray
    positive: int
    tiles: np.ndarray  # the distinct test tiles (store rows), sorted

    def score(self, metric: str) -> float:
        """``metric`` per model, averaged over the models that can be scored."""
        vals = [metric_score(metric, self.y[self.model == m], self.proba[self.model == m], self.positive) for m in np.unique(self.model)]
        ok = [v for v in vals if not math.isnan(v)]
        return float(np.mean(ok)) if ok else math.nan

    def replicates(self, metric: str, n_boot: int, seed: int) -> np.ndarray:
        """The :meth:`score` of ``n_boot`` bootstrap resamples of the test tiles (draws fixed by the tiles, n_boot and seed)."""
        return bootstrap_replicates(
            self.y,
            self.proba,
            metric,
            fold=self.model,
            tile=self.tile,
            n_boot=n_boot,
            seed=seed,
            positive=self.positive,
            universe=self.tiles,
        )


def _fits(p: dict[str, np.ndarray]) -> np.ndarray:
    """Each prediction's fit: its fold, or (K-shot rows) its (fold, draw)."""
    fold = np.asarray(p["fold"], np.int64)
    if "draw" not in p:
        return fold
    return fold * (int(np.max(p["draw"], initial=0)) + 1) + np.asarray(p["draw"], np.int64)


def stack_models(rows: Sequence[dict[str, Any]], runs: Sequence[SeedRun]) -> Models | None:
    """One configuration's predictions over the runs, stacked; None when a run kept none; refused when the runs' test tiles differ."""
    parts, offset, ref_tiles = [], 0, None
    for i, (r, run) in enumerate(zip(rows, runs)):
        p = run.predictions(str(r["row_id"]))
        if p is None:
            return None
        fit = _fits(p)
        tiles, first = np.unique(p["row"], return_index=True)
        labelled = (tiles, np.asarray(p["y"])[first])
        if ref_tiles is None:
            ref_tiles = labelled
        elif not (np.array_equal(ref_tiles[0], labelled[0]) and np.array_equal(ref_tiles[1], labelled[1])):
            raise BenchError(
                f"row {r['features']} {r['head']} ({r['held_out'] or 'in-domain'}) was tested on other tiles (or labels) in {run.folder} than in {runs[0].folder}"
            )
        parts.append((p, fit + offset, i))
        offset += int(fit.max(initial=-1)) + 1
    assert ref_tiles is not None
    return Models(
        y=np.concatenate([np.asarray(p["y"], np.int64) for p, _, _ in parts]),
        proba=np.concatenate([np.asarray(p["proba"], np.float64) for p, _, _ in parts]),
        model=np.concatenate([m for _, m, _ in parts]),
        tile=np.concatenate([np.asarray(p["row"], np.int64) for p, _, _ in parts]),
        run=np.concatenate([np.full(len(m), i) for _, m, i in parts]),
        positive=prediction_positive(parts[0][0]) if parts[0][0]["proba"].shape[1] == 2 else 1,
        tiles=ref_tiles[0],
    )


def ensemble(m: Models) -> Models | None:
    """Per run, the mean of its fold models' probabilities on the shared test tiles (one model per run); None unless
    every fold model of every run predicts every test tile once (k-fold models predict disjoint tiles)."""
    ys, probas, runs = [], [], []
    k = m.proba.shape[1]
    for r in np.unique(m.run):
        sel = m.run == r
        models = np.unique(m.model[sel])
        total = np.zeros((m.tiles.size, k))
        for mod in models:
            s = m.model == mod
            if m.tile[s].size != m.tiles.size or not np.array_equal(np.sort(m.tile[s]), m.tiles):
                return None
            total[np.searchsorted(m.tiles, m.tile[s])] += m.proba[s]
        y = np.zeros(m.tiles.size, np.int64)
        y[np.searchsorted(m.tiles, m.tile[sel])] = m.y[sel]
        ys.append(y)
        probas.append(total / len(models))
        runs.append(np.full(m.tiles.size, r))
    run = np.concatenate(runs)
    return Models(np.concatenate(ys), np.vstack(probas), run, np.tile(m.tiles, len(ys)), run, m.positive, m.tiles)


def _mean_sd(vals: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value) of the finite values."""
    a = np.asarray([v for v in vals if v is not None and not math.isnan(float(v))], np.float64)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def paired(a: Models, b: Models, metric: str, b_reps: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """a minus b (``b_reps``: b's replicates, drawn on the same tiles): delta, 95% percentile CI and two-sided p."""
    delta = a.score(metric) - b.score(metric)
    if n_boot <= 0 or not np.array_equal(a.tiles, b.tiles):
        return {"delta": delta, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    diffs = a.replicates(metric, n_boot, seed) - b_reps
    diffs = diffs[~np.isnan(diffs)]
    lo, hi = percentile_interval(diffs)
    return {"delta": delta, "ci_low": lo, "ci_high": hi, "p": bootstrap_p_value(diffs)}


def summary_row(rows: Sequence[dict[str, Any]], runs: Sequence[SeedRun], m: Models | None) -> dict[str, Any]:
    """One configuration pooled over the runs: mean and sd of each run's leaderboard values, and of each run's ensemble."""
    r0 = rows[0]
    out: dict[str, Any] = {k: r0[k] for k in MATCH_KEYS}
    out.update(
        main_metric=r0["main_metric"],
        n_seeds=len(rows),
        seeds=",".join(str(run.seed) for run in runs),
        n_folds=int(r0.get("n_folds") or 0),
        n_test=int(m.tiles.size) if m is not None else int(r0.get("n_test") or 0),
        keys="+".join(map(str, r0.get("keys") or [])),
    )
    metrics = list(dict.fromkeys([*POOLED_METRICS, str(r0["main_metric"])]))
    for metric in metrics:
        out[metric], out[f"{metric}_sd"] = _mean_sd([float(r[metric]) for r in rows])
    ens = ensemble(m) if m is not None else None
    for metric in metrics:
        vals = [metric_score(metric, ens.y[ens.run == i], ens.proba[ens.run == i], ens.positive) for i in np.unique(ens.run)] if ens else []
        out[f"ens_{metric}"], out[f"ens_{metric}_sd"] = _mean_sd(vals)
    out["note"] = "" if ens is not None else (NO_ENSEMBLE if m is not None else "no test predictions kept")
    return out


PAIRED_OUT = ("delta_vs_ref", "ci_low", "ci_high", "p_vs_ref", "ens_delta_vs_ref", "ens_ci_low", "ens_ci_high", "ens_p_vs_ref")


def _group_reference(group: list[tuple[list[dict[str, Any]], Models | None]], ref: Reference) -> int | None:
    hits = [i for i, (rows, _) in enumerate(group) if ref.matches(rows[0])]
    if len(hits) > 1:
        found = "; ".join(f"{group[i][0][0]['backbone']} {group[i][0][0]['features']} noise {group[i][0][0]['noise']:g}" for i in hits)
        raise BenchError(
            f"reference {ref} matches {len(hits)} rows ({found}): name one, FEATURES as variant keys and NOISE (FEATURES,HEAD,NOISE)"
        )
    return hits[0] if hits else None


def paired_columns(group: list[tuple[list[dict[str, Any]], Models | None]], ref: Reference, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Each configuration of one (task, held-out group) against the reference's: single models and ensembles."""
    nan = dict.fromkeys(PAIRED_OUT, math.nan)
    i_ref = _group_reference(group, ref)
    if i_ref is None or group[i_ref][1] is None:
        return [{**nan, "reference": False} for _ in group]
    ref_m = group[i_ref][1]
    assert ref_m is not None
    metric = str(group[i_ref][0][0]["main_metric"])
    ref_reps = ref_m.replicates(metric, n_boot, seed) if n_boot > 0 else np.zeros(0)
    out = []
    for i, (_, m) in enumerate(group):
        cols: dict[str, Any] = {**nan, "reference": i == i_ref}
        if m is not None:
            s = paired(m, ref_m, metric, ref_reps, n_boot, seed)
            cols.update(delta_vs_ref=s["delta"], ci_low=s["ci_low"], ci_high=s["ci_high"], p_vs_ref=s["p"])
            ens = ensemble(m)
            if ens is not None:
                e = paired(ens, ref_m, metric, ref_reps, n_boot, seed)
                cols.update(ens_delta_vs_ref=e["delta"], ens_ci_low=e["ci_low"], ens_ci_high=e["ci_high"], ens_p_vs_ref=e["p"])
        out.append(cols)
    return out


def pool_benches(
    folders: Sequence[str | os.PathLike], reference: Reference | str | None = None, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Bench runs of one store and task with different seeds pooled into one table (one row per configuration present
    in every run): mean and sd over runs, the ensemble of each run's fold models (NaN under k-fold), and with a
    ``reference`` the paired bootstrap of each row and ensemble minus the reference's single models."""
    runs = load_runs(folders)
    ref = Reference.parse(reference) if isinstance(reference, str) else reference
    groups: dict[tuple[str, str], list[tuple[list[dict[str, Any]], Models | None]]] = {}
    for rows in matched_rows(runs):
        groups.setdefault((str(rows[0]["task"]), str(rows[0]["held_out"])), []).append((rows, stack_models(rows, runs)))
    if ref is not None and not any(ref.matches(rows[0]) for g in groups.values() for rows, _ in g):
        raise BenchError(f"no row of the bench folders is the reference {ref}")
    records = []
    for group in groups.values():
        cols = (
            paired_columns(group, ref, n_boot, seed)
            if ref is not None
            else [{**dict.fromkeys(PAIRED_OUT, math.nan), "reference": False}] * len(group)
        )
        records += [{**summary_row(rows, runs, m), **c} for (rows, m), c in zip(group, cols)]
    table = pd.DataFrame(records)
    table["_score"] = [r[r["main_metric"]] if r["main_metric"] in r else math.nan for r in table.to_dict("records")]
    table = table.sort_values(["task", "held_out", "_score"], ascending=[True, True, False], na_position="last", kind="stable")
    first = [*MATCH_KEYS, "reference", "main_metric", "n_seeds", "seeds", "n_folds", "n_test"]
    return table[[*first, *(c for c in table if c not in first and c != "_score")]].reset_index(drop=True)
