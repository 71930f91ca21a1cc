"""Ensembles of heads: K heads (different seeds, or the k fold models of a slide-grouped split of the training rows)
whose probabilities are averaged, saved as one model directory that load_model / mito predict use like any other.

Layout: the model directory's ``head.json`` says ``"head": "ensemble"`` and lists ``member0/`` ... ``member{K-1}/``,
each a head saved by ``Head.save`` (its own head.json and weights), with the SHA-256 of each member's head.json
(which in turn records its weights' SHA-256). The standardise/PCA pipeline is the model directory's, shared by all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mito.core.io import artifact_kind
from mito.core.metrics import classification_metrics
from mito.core.progress import add_task, advance, progress_bar
from mito.core.version import __version__
from mito.heads.base import HEAD_FILE, Head, HeadError, check_sha256, file_sha256, read_json_file
from mito.heads.base import load_head as load_head_file
from mito.heads.engine import FitResult, Scored, fit_and_score
from mito.heads.fit import StoreRows
from mito.heads.model import Callback
from mito.heads.split import SplitError, grouped_parts

ENSEMBLE = "ensemble"
MAX_MEMBERS = 100
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class EnsembleSpec:
    """How to build an ensemble: ``seeds`` (K heads, seeds seed..seed+K-1, same split) or ``folds`` (K fold models)."""

    mode: str
    k: int


def parse_ensemble(value: str | int | None) -> EnsembleSpec | None:
    """``--ensemble`` text -> spec: ``K`` (2..100 seeds), ``folds`` (5 fold models) or ``folds:K``; None, '' or none -> None."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    text = str(value).strip().lower()
    mode, _, k = text.partition(":") if text.startswith("folds") else ("seeds", "", text)
    if mode != "folds" and mode != "seeds":
        raise HeadError(f"--ensemble takes K (a number of seeds), 'folds' or 'folds:K', got {value!r}")
    if mode == "folds" and not k:
        k = str(DEFAULT_FOLDS)
    try:
        n = int(k)
    except ValueError:
        raise HeadError(f"--ensemble takes K (a number of seeds), 'folds' or 'folds:K', got {value!r}") from None
    if not 2 <= n <= MAX_MEMBERS:
        raise HeadError(f"--ensemble needs between 2 and {MAX_MEMBERS} members, got {n}")
    return EnsembleSpec(mode, n)


@dataclass
class Ensemble:
    """Heads trained alike whose class probabilities are averaged; quacks like a fitted Head for Model and predict."""

    members: list[Head]
    mode: str = "seeds"
    seeds: list[int] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # member scores, set by fit_ensemble (not saved)
    name: ClassVar[str] = ENSEMBLE
    level: ClassVar[str] = "tile"

    def __post_init__(self) -> None:
        if len(self.members) < 1:
            raise HeadError("an ensemble needs at least one member")
        if all(hasattr(m, "classes_") for m in self.members):
            self._check_members()

    def fit(
        self, X: Any, y: Any = None, *, eval_set: Any = None, views: np.ndarray | None = None, callbacks: Sequence[Callback] = ()
    ) -> Ensemble:
        """Fit every member on the same rows (a seeds ensemble: the members differ by their seeds). A folds ensemble
        trains each member on other rows of a store, split by group: fit_ensemble fits it."""
        if self.mode != "seeds":
            raise HeadError(
                "a folds ensemble trains each member on other slides' rows: fit it with fit_ensemble (fit-head --ensemble folds)"
            )
        for m in self.members:
            m.fit(X, y, eval_set=eval_set, views=views, callbacks=callbacks)
        self._check_members()
        return self

    @classmethod
    def load(cls, path: str | Path) -> Ensemble:
        """An ensemble written by ``save`` (load_ensemble)."""
        return load_ensemble(path)

    def _check_members(self) -> None:
        ref = self.members[0]
        for i, m in enumerate(self.members[1:], 1):
            if list(map(str, m.classes_)) != list(map(str, ref.classes_)) or int(m.n_features_in_) != int(ref.n_features_in_):
                raise HeadError(
                    f"ensemble member {i} has classes/inputs {m.classes_.tolist()}/{m.n_features_in_}, member 0 {ref.classes_.tolist()}/{ref.n_features_in_}"
                )

    @property
    def classes_(self) -> np.ndarray:
        """The classes, in the order of predict_proba's columns."""
        return self.members[0].classes_

    @property
    def n_features_in_(self) -> int:
        """Width of the head inputs."""
        return int(self.members[0].n_features_in_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """The mean of the members' class probabilities."""
        total = self.members[0].predict_proba(X)
        for m in self.members[1:]:
            total = total + m.predict_proba(X)
        return total / len(self.members)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row (of the averaged probabilities)."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def get_params(self) -> dict[str, Any]:
        """What the model config records: member head, how many, how they differ, the members' options."""
        return {
            "head": self.members[0].name,
            "members": len(self.members),
            "mode": self.mode,
            "seeds": list(self.seeds),
            "member_params": self.members[0].get_params(),
        }

    def save(self, path: str | Path) -> None:
        """Write member0/ ... member{K-1}/ (each a saved head) and the listing head.json into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        listing = []
        for i, m in enumerate(self.members):
            sub = path / f"member{i}"
            m.save(sub)
            listing.append(
                {"dir": sub.name, "sha256": file_sha256(sub / HEAD_FILE), **({"seed": self.seeds[i]} if i < len(self.seeds) else {})}
            )
        meta = {
            "head": ENSEMBLE,
            "member_head": self.members[0].name,
            "mode": self.mode,
            "classes": self.classes_.tolist(),
            "n_features_in": self.n_features_in_,
            "members": listing,
            "mito_version": __version__,
        }
        (path / HEAD_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_ensemble(path: str | Path) -> Ensemble:
    """The Ensemble saved in ``path``; a missing, changed or inconsistent member is a one-line HeadError."""
    path = Path(path)
    f = path / HEAD_FILE
    meta = read_json_file(f, "ensemble description")
    listing = meta.get("members")
    if not isinstance(listing, list) or not listing or not all(isinstance(m, dict) and isinstance(m.get("dir"), str) for m in listing):
        raise HeadError(f"{f} is not a valid ensemble description (needs a 'members' list of {{dir, sha256}})")
    members, seeds = [], []
    for m in listing:
        sub = path / m["dir"]
        if Path(m["dir"]).name != m["dir"] or m["dir"] in ("", ".", ".."):
            raise HeadError(f"{f} names a member folder outside the model: {m['dir']!r}")
        check_sha256(sub / HEAD_FILE, m.get("sha256"))
        members.append(load_head_file(sub))
        if "seed" in m:
            seeds.append(int(m["seed"]))
    ens = Ensemble(members, str(meta.get("mode", "seeds")), seeds)
    if list(map(str, meta.get("classes", []))) != list(map(str, ens.classes_)):
        raise HeadError(f"{f} lists classes {meta.get('classes')}, its members {ens.classes_.tolist()}")
    return ens


def load_any_head(path: str | Path) -> Head | Ensemble:
    """What a head folder holds: an Ensemble when its head.json says so, else the saved head."""
    return load_ensemble(path) if artifact_kind(path)[0] == ENSEMBLE else load_head_file(path)


def fold_parts(pool: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` slide-grouped, label-stratified parts of the row indices ``pool`` (y, groups: per pool row)."""
    try:
        parts = [pool[p] for p in grouped_parts(y, groups, k, seed)]
    except SplitError:
        n_groups = len(np.unique(groups))
        raise HeadError(f"--ensemble folds:{k} needs at least {k} slides/groups among the training rows, they have {n_groups}") from None
    for i, p in enumerate(parts):
        if len(np.unique(y[np.isin(pool, np.setdiff1d(pool, p))])) < len(np.unique(y)):
            raise HeadError(f"--ensemble folds:{k}: fold {i} leaves a class out of training; use fewer folds")
    return parts


def fit_ensemble(
    spec: EnsembleSpec,
    make: Callable[[int], Head],
    seed: int,
    data: StoreRows,
    parts: Mapping[str, np.ndarray],
    groups: np.ndarray | None,
    progress: bool = False,
) -> FitResult[Ensemble]:
    """Fit ``spec.k`` heads through the engine (mito.heads.engine.fit_and_score on ``data``) and average their val/test
    probabilities.

    ``seeds``: member i is ``make(seed + i)`` on the same train/val rows. ``folds``: train and val are pooled and cut
    into k slide-grouped parts (``groups``: one id per store row); member i early-stops on part i and trains on the
    rest (all with ``make(seed)``); its ``val`` score is then out-of-fold. The returned FitResult's head is the Ensemble.
    """
    if spec.mode == "folds" and (data.standardize or data.pca):
        raise HeadError(
            "--ensemble folds trains each member on other rows, so they cannot share one --standardize/--pca pipeline; use --ensemble K"
        )
    data = replace(data, seed=seed)  # the members' pipeline is seeded like their heads
    jobs = _member_jobs(spec, seed, parts, np.asarray(data.labels), groups)
    results: list[FitResult[Head]] = []
    with progress_bar(unit="heads", enabled=progress, transient=True) as bar:
        task, t0 = add_task(bar, f"training {spec.k} ensemble members", spec.k), time.perf_counter()
        for i, (rows, s) in enumerate(jobs):
            results.append(fit_and_score(make(s), data, rows))
            advance(bar, task, 1, t0, i + 1)
    ens = Ensemble([r.head for r in results], spec.mode, [s for _, s in jobs])
    scored = _ensemble_scores(spec, results, len(parts.get("val", [])) > 0, len(parts.get("test", [])) > 0)
    ens.report = _member_report(spec, ens, results, "test" if "test" in scored and len(parts.get("test", [])) else "val")
    return FitResult(
        ens,
        results[0].pipeline,
        results[0].n_features_in,
        scored,
        pipeline_seconds=sum(r.pipeline_seconds for r in results),
        train_seconds=sum(r.train_seconds for r in results),
        predict_seconds=sum(r.predict_seconds for r in results),
        streamed=results[0].streamed,
    )


def _member_jobs(
    spec: EnsembleSpec, seed: int, parts: Mapping[str, np.ndarray], labels: np.ndarray, groups: np.ndarray | None
) -> list[tuple[dict[str, np.ndarray], int]]:
    """Each member's rows (train/val/test) and seed."""
    tr, va, te = (np.asarray(parts.get(n, []), dtype=np.int64) for n in ("train", "val", "test"))
    if spec.mode != "folds":
        return [({"train": tr, "val": va, "test": te}, seed + i) for i in range(spec.k)]
    pool = np.concatenate([tr, va])
    g = groups[pool] if groups is not None else pool.astype(str)
    cut = fold_parts(pool, labels[pool].astype(str), g, spec.k, seed)
    return [({"train": np.setdiff1d(pool, c), "val": c, "test": te}, seed) for c in cut]


def _ensemble_scores(spec: EnsembleSpec, results: Sequence[FitResult[Head]], has_val: bool, has_test: bool) -> Scored:
    """The averaged test (and, seeds, val) probabilities; folds: out-of-fold val, each row scored by the member that
    did not train on it."""
    scored: Scored = {}
    if has_test:
        scored["test"] = (results[0].scored["test"][0], np.mean([r.scored["test"][1] for r in results], axis=0))
    if spec.mode == "seeds" and has_val:
        scored["val"] = (results[0].scored["val"][0], np.mean([r.scored["val"][1] for r in results], axis=0))
    elif spec.mode == "folds":
        scored["val"] = (np.concatenate([r.scored["val"][0] for r in results]), np.concatenate([r.scored["val"][1] for r in results]))
    return scored


def _member_report(spec: EnsembleSpec, ens: Ensemble, results: Sequence[FitResult[Head]], side: str) -> dict[str, Any]:
    """The members' own scores on ``side`` (test, else val), for metrics.json."""
    member_scores = [classification_metrics(*r.scored[side], r.head.classes_) for r in results if side in r.scored]
    return {
        "members": spec.k,
        "mode": spec.mode,
        "seeds": ens.seeds,
        "member_scores_on": side,
        **{f"member_{m}": [round(float(s[m]), 4) for s in member_scores] for m in ("balanced_accuracy", "auroc")},
        **{f"member_{m}_std": round(float(np.std([s[m] for s in member_scores])), 4) for m in ("balanced_accuracy", "auroc")},
    }
