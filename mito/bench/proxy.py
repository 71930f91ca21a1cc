"""Proxy validity: does a cheap proxy task rank backbones the way the target task does?

For each proxy task and head ("best" = each backbone's best head), the backbones' scores on the proxy and on the
target (each backbone's best in-domain row of that task: best feature set, and best head for "best"), their rank
agreement (Kendall tau-b, Spearman rho; scipy.stats) and a percentile bootstrap interval that resamples the test
tiles: one draw of the store's tiles per replicate, shared by every row of both tasks (mito.core.metrics
bootstrap_replicates with a common universe), the rows chosen once on the full data. Nothing is re-fitted: it
reads the leaderboard's kept test predictions.

A proxy *disagrees* with the target when its tau-b <= 0 (it ranks the backbones no better than chance, or inverted),
or when the backbone it ranks first is not the target's best and scores lower on the target by more than the
bootstrap noise (the 95% interval of that regret lies above 0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from mito.bench.errors import BenchError
from mito.bench.stats import percentile_interval, prediction_positive
from mito.core.metrics import bootstrap_replicates
from mito.core.validation import as_dict

BEST = "best"  # the head label of the best-head-per-backbone comparison
LEVEL = 0.95
RANDOM_PREFIX = "random_"  # random-init controls: ranked last by every proxy, so tau-b is also given without them


@dataclass(frozen=True)
class ProxyAgreement:
    """How one proxy task's ranking of backbones agrees with the target's (for one head, or each backbone's best)."""

    proxy: str
    target: str
    head: str  # a head name, or "best": each backbone's best head on each task
    backbones: tuple[str, ...]
    proxy_scores: tuple[float, ...]  # each backbone's score on the proxy (its main metric, mean over folds)
    target_scores: tuple[float, ...]
    proxy_rows: tuple[str, ...]  # the leaderboard rows (row_id) the scores come from
    target_rows: tuple[str, ...]
    proxy_metric: str
    target_metric: str
    tau: float  # Kendall tau-b of the two score vectors
    tau_low: float
    tau_high: float
    rho: float  # Spearman
    rho_low: float
    rho_high: float
    proxy_pick: str  # the backbone the proxy ranks first
    target_pick: str  # the target's best backbone
    regret: float  # target score of target_pick minus that of proxy_pick (0: the proxy picks the best)
    regret_low: float
    regret_high: float
    n_boot: int
    n_tiles: int
    disagrees: bool
    tau_trained: float = math.nan  # tau-b over the trained backbones only (NaN: no control, or under 3 trained)
    tau_trained_low: float = math.nan
    tau_trained_high: float = math.nan

    def warning(self) -> str:
        """One line for a proxy whose ranking disagrees with the target's ('' when it agrees)."""
        if not self.disagrees:
            return ""
        why = (
            f"tau-b {self.tau:+.2f} [{self.tau_low:+.2f}, {self.tau_high:+.2f}]"
            if self.tau <= 0
            else f"its pick scores {self.regret:.3f} [{self.regret_low:.3f}, {self.regret_high:.3f}] below the best on {self.target}"
        )
        head = "" if self.head == BEST else f" ({self.head} head)"
        return (
            f"proxy {self.proxy} does not predict {self.target}{head}: {why}; it ranks {self.proxy_pick} first, "
            f"{self.target} ranks {self.target_pick} first"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def candidate_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows that rank backbones: frozen-feature heads trained on every training tile and tested in-domain, on a
    single backbone (concatenations of several backbones are feature sets, not backbones)."""
    sel = rows
    if "kind" in sel:
        sel = sel[sel["kind"].astype(str) == "head"]
    if "held_out" in sel:
        sel = sel[sel["held_out"].fillna("").astype(str) == ""]
    if "shots" in sel:
        sel = sel[sel["shots"].astype(str).isin(["all", "", "nan", "None"])]
    sel = sel[~sel["backbone"].astype(str).str.contains("+", regex=False)]
    return sel.assign(_score=[float(r[r["main_metric"]]) for _, r in sel.iterrows()]) if len(sel) else sel.assign(_score=[])


def best_rows(rows: pd.DataFrame, task: str, head: str) -> dict[str, pd.Series]:
    """Each backbone's best row of ``task`` (over its feature sets, and over heads when ``head`` is "best")."""
    sel = rows[rows["task"] == task]
    if head != BEST:
        sel = sel[sel["head"] == head]
    sel = sel.dropna(subset=["_score"]).sort_values(["_score", "row_id"], ascending=[False, True], kind="stable")
    return {str(bb): g.iloc[0] for bb, g in sel.groupby("backbone", sort=True)}


def _replicates(p: dict[str, np.ndarray], metric: str, universe: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """A row's mean-over-folds ``metric`` on each replicate of the shared tile draws."""
    proba = np.asarray(p["proba"], np.float64)
    pos = prediction_positive(p) if proba.shape[1] == 2 else 1
    return bootstrap_replicates(
        np.asarray(p["y"]),
        proba,
        metric,
        fold=np.asarray(p["fold"]),
        tile=np.asarray(p["row"]),
        n_boot=n_boot,
        seed=seed,
        positive=pos,
        universe=universe,
    )


def rank_agreement(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Kendall tau-b, Spearman rho) of two score vectors; NaN where either is constant."""
    from scipy.stats import kendalltau, spearmanr

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(kendalltau(x, y).statistic), float(spearmanr(x, y).statistic)


def proxy_validity(
    rows: pd.DataFrame,
    predictions: dict[str, dict[str, np.ndarray]],
    target: str,
    proxies: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[ProxyAgreement]:
    """Rank agreement of each proxy task with ``target`` across the backbones both scored, for each backbone's best
    head and for each head on its own (see the module docstring). ``proxies``: default every other task of ``rows``.
    A (proxy, head) pair with fewer than two common backbones is left out; an unknown target is a BenchError."""
    cand = candidate_rows(rows)
    tasks = list(dict.fromkeys(rows["task"].astype(str)))
    if target not in tasks:
        raise BenchError(f"target task {target!r} is not in the leaderboard (it has: {', '.join(tasks)})")
    proxies = [t for t in (proxies or tasks) if t != target]
    missing = [t for t in proxies if t not in tasks]
    if missing:
        raise BenchError(f"proxy task {missing[0]!r} is not in the leaderboard (it has: {', '.join(tasks)})")
    heads = [BEST, *sorted(set(cand["head"].astype(str)))] if len(cand) else []
    reps = Replicates(predictions, n_boot, seed)
    out = []
    for proxy in proxies:
        for head in heads:
            pr, tr = best_rows(cand, proxy, head), best_rows(cand, target, head)
            bbs = tuple(b for b in pr if b in tr)
            if len(bbs) >= 2:
                out.append(agreement(proxy, target, head, [pr[b] for b in bbs], [tr[b] for b in bbs], reps))
    return out


class Replicates:
    """Each row's bootstrap replicates of its main metric (computed once), drawn over one universe of tiles."""

    def __init__(self, predictions: dict[str, dict[str, np.ndarray]], n_boot: int, seed: int) -> None:
        self.predictions, self.n_boot, self.seed = predictions, n_boot, seed
        self.universe = (
            np.unique(np.concatenate([np.asarray(p["row"]) for p in predictions.values()])) if predictions else np.zeros(0, np.int64)
        )
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, r: pd.Series) -> np.ndarray:
        rid = str(r["row_id"])
        if rid not in self.cache:
            self.cache[rid] = (
                _replicates(self.predictions[rid], str(r["main_metric"]), self.universe, self.n_boot, self.seed)
                if self.n_boot > 0 and rid in self.predictions
                else np.full(max(self.n_boot, 0), np.nan)
            )
        return self.cache[rid]


def agreement(proxy: str, target: str, head: str, pr: Sequence[pd.Series], tr: Sequence[pd.Series], reps: Replicates) -> ProxyAgreement:
    """One (proxy, head) comparison over the backbones of rows ``pr`` (proxy) and ``tr`` (target), in the same order."""
    bbs = tuple(str(r["backbone"]) for r in pr)
    px = np.array([r["_score"] for r in pr])
    tx = np.array([r["_score"] for r in tr])
    tau, rho = rank_agreement(px, tx)
    pick, best = int(np.argmax(px)), int(np.argmax(tx))
    pb, tb = np.vstack([reps(r) for r in pr]).T, np.vstack([reps(r) for r in tr]).T  # replicates x backbones
    taus, rhos, regrets = replicate_agreement(pb, tb, pick, best)
    tlo, thi = percentile_interval(taus, LEVEL)
    rlo, rhi = percentile_interval(rhos, LEVEL)
    glo, ghi = percentile_interval(regrets, LEVEL)
    regret = float(tx[best] - tx[pick])
    disagrees = bool((not math.isnan(tau) and tau <= 0) or (pick != best and not math.isnan(glo) and glo > 0))
    trained = [i for i, b in enumerate(bbs) if not b.startswith(RANDOM_PREFIX)]
    tt, tt_lo, tt_hi = math.nan, math.nan, math.nan
    if len(trained) < len(bbs) and len(trained) >= 3:
        tt = rank_agreement(px[trained], tx[trained])[0]
        tt_lo, tt_hi = percentile_interval(replicate_agreement(pb[:, trained], tb[:, trained], 0, 0)[0], LEVEL)
    return ProxyAgreement(
        proxy,
        target,
        head,
        bbs,
        tuple(map(float, px)),
        tuple(map(float, tx)),
        tuple(str(r["row_id"]) for r in pr),
        tuple(str(r["row_id"]) for r in tr),
        str(pr[0]["main_metric"]),
        str(tr[0]["main_metric"]),
        tau,
        tlo,
        thi,
        rho,
        rlo,
        rhi,
        bbs[pick],
        bbs[best],
        regret,
        glo,
        ghi,
        reps.n_boot,
        int(reps.universe.size),
        disagrees,
        tt,
        tt_lo,
        tt_hi,
    )


def replicate_agreement(pb: np.ndarray, tb: np.ndarray, pick: int, best: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bootstrap replicate (rows of ``pb``/``tb``: replicates x backbones) with no NaN: tau-b, rho and the regret
    of the proxy's pick."""
    taus, rhos, regrets = [], [], []
    for a, b in zip(pb, tb):
        if np.isnan(a).any() or np.isnan(b).any():
            continue
        t, r = rank_agreement(a, b)
        taus.append(t)
        rhos.append(r)
        regrets.append(b[best] - b[pick])
    return np.array(taus, float), np.array(rhos, float), np.array(regrets, float)


def validity_meta(agreements: Sequence[ProxyAgreement], target: str, why_none: str = "") -> dict[str, Any]:
    """What a leaderboard keeps of it (leaderboard.json meta ``proxy_validity``): the target, the definition, each row."""
    return {
        "target": target,
        "rule": "disagrees: tau-b <= 0, or the proxy's first backbone is not the target's best and its regret's 95% CI lies above 0",
        "rows": [a.as_dict() for a in agreements],
        **({"skipped": why_none} if why_none else {}),
    }


def bench_validity(
    rows: pd.DataFrame, predictions: dict[str, dict[str, np.ndarray]], target: str, n_boot: int, seed: int
) -> dict[str, Any] | None:
    """The ``proxy_validity`` meta of a bench with several tasks (None with one task); why nothing was computed when
    fewer than two backbones were scored on the target and a proxy."""
    tasks = list(dict.fromkeys(rows["task"].astype(str))) if len(rows) else []
    if len(tasks) < 2 or target not in tasks:
        return None
    got = proxy_validity(rows, predictions, target, n_boot=n_boot, seed=seed)
    n_bb = candidate_rows(rows)["backbone"].nunique() if len(rows) else 0
    why = "" if got else f"needs at least 2 backbones scored on {target} and a proxy task (this bench has {n_bb})"
    return validity_meta(got, target, why)


def agreements_from_meta(meta: dict[str, Any]) -> list[ProxyAgreement]:
    """The ProxyAgreement rows kept in a leaderboard's meta (none when it has no proxy_validity)."""
    pv = as_dict(meta.get("proxy_validity"))
    out = []
    for r in pv.get("rows") or []:
        try:
            fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}
            out.append(ProxyAgreement(**fields))
        except TypeError:
            continue
    return out
