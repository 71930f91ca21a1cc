"""bench --zero-shot: a 'zero-shot' row per vision-language backbone (it only scores each fold's test tiles, on the
same folds as every other row) and the class text embeddings the text-linear head starts from."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mito.bench.row import FitJob, Producer, scored
from mito.bench.rows import describe_keys, row_id, score_row
from mito.bench.shift import LEAVE_GROUP_OUT
from mito.core.errors import MitoError
from mito.heads.zeroshot import cache_path, load_prompts, pick_variant, read_text_embeddings, text_embeddings, zero_shot_proba
from mito.store import open_store

TEXT_HEADS = ("text-linear",)
ZERO_SHOT = "zero-shot"


@dataclass
class TextPlan:
    """Per VLM backbone: its text-embedding file, embeddings and scored store key; one line per thing left out."""

    prompts: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    texts: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def plan_text(
    store: str,
    prompts_file: str | None,
    complete: Sequence[str],
    variant_info: dict[str, dict[str, Any]],
    heads: Sequence[str],
    progress: bool = False,
) -> TextPlan:
    """Find (or compute once and cache) the class text embeddings of every VLM backbone in the store."""
    plan = TextPlan(prompts_file)
    if not prompts_file:
        if any(h in TEXT_HEADS for h in heads):
            plan.skipped.append("text-linear skipped: it needs class prompts, give --zero-shot PROMPTS.json")
        return plan
    # the backbone registry loads torch: only a bench asked for zero-shot rows pays for it, never a head worker
    from mito.backbones import create_backbone, get_backbone, resolve_weights
    from mito.backbones.registry import RANDOM_SHA, file_sha256, weights_help
    from mito.backbones.vlm import is_vlm, vlm_names

    prompts = load_prompts(prompts_file)
    backbones = []
    for k in complete:
        bb = k.split(":")[0]
        try:
            vlm = is_vlm(get_backbone(bb))
        except MitoError:
            vlm = False
        if vlm and bb not in backbones:
            backbones.append(bb)
    if not backbones:
        plan.skipped.append(
            f"--zero-shot skipped: the store has no vision-language backbone features ({', '.join(vlm_names())}); no zero-shot or text-linear rows"
        )
        return plan
    for bb in backbones:
        key = pick_variant(list(complete), bb)
        sha = str(variant_info.get(key, {}).get("weights_sha256", ""))
        cached = cache_path(store, bb, sha, prompts)
        try:
            if cached.is_file():
                te, path = read_text_embeddings(cached), cached
            else:
                spec = get_backbone(bb)
                wpath = resolve_weights(spec)
                found = file_sha256(wpath) if wpath is not None else RANDOM_SHA
                if found != sha:
                    plan.skipped.append(f"zero-shot {bb} skipped: the weights found ({wpath}) are not those the store was extracted with")
                    continue
                te, path, _ = text_embeddings(store, bb, sha, prompts, [""], lambda bb=bb: create_backbone(bb), progress)
        except MitoError as e:
            why = str(e).splitlines()[0] if "needs" in str(e) else f"{str(e).splitlines()[0]}; {weights_help(get_backbone(bb))}"
            plan.skipped.append(f"zero-shot {bb} skipped (no cached text embeddings for these prompts, no weights): {why}")
            continue
        plan.files[bb], plan.texts[bb], plan.keys[bb] = str(path), te, key
    return plan


def text_head_params(head: str, backbone: str, params: dict[str, Any], plan: TextPlan) -> dict[str, Any] | None:
    """The params of a head on a feature set: text heads get their backbone's text embeddings (None: not on this set)."""
    if head not in TEXT_HEADS:
        return params
    if backbone not in plan.files:
        return None
    return {**params, "text_embeddings": params.get("text_embeddings", plan.files[backbone])}


def job_params(
    head: str, backbone: str, head_params: dict[str, dict[str, Any]], noise: float | None, plan: TextPlan
) -> dict[str, Any] | None:
    """A head's params for one bench job: the user's options, the text embeddings of its backbone (text heads; None:
    not on this backbone) and the noise level (None: the head's default)."""
    params = text_head_params(head, backbone, dict(head_params.get(head, {})), plan)
    if params is not None and noise is not None:
        params["noise"] = noise
    return params


class ZeroShotRows(Producer):
    """--zero-shot: a row per (vision-language backbone, task), each fold's test tiles scored by the prompts (no fits)."""

    def score(self, ctx: Any, jobs: Sequence[FitJob], results: Sequence[Any]) -> list[Any]:
        lgo = ctx.cfg.cv == LEAVE_GROUP_OUT
        if lgo and ctx.text.texts:  # zero-shot rows are scored on the in-domain folds only
            ctx.text.skipped.append(
                "no zero-shot rows with --cv leave-group-out (they are scored on in-domain folds); the text-linear head's shift rows are kept"
            )
        return [scored(p) for p in zero_shot_rows(ctx.text, str(ctx.cfg.store), {} if lgo else ctx.plans, ctx.cfg.n_boot, ctx.cfg.seed)]


def zero_shot_rows(
    plan: TextPlan, store: str, plans: dict[str, Any], n_boot: int, seed: int
) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Score each fold's test tiles with each VLM backbone's prompts: (row, arrays) as score_row gives for the head rows."""
    out = []
    for bb, te in plan.texts.items():
        key = plan.keys[bb]
        for t, (spec, y, classes, cv) in plans.items():
            missing = [c for c in classes if c not in te.classes]
            if missing:
                plan.skipped.append(
                    f"zero-shot {bb} on task {t} skipped: no prompts for class {missing[0]!r} (prompt classes: {', '.join(te.classes)})"
                )
                continue
            T = te.matrix("", list(classes))
            results = []
            with open_store(store) as s:
                for f in cv.folds:
                    t0 = time.perf_counter()
                    X = s.read([key], rows=np.asarray(f.test))
                    results.append(
                        {"proba": zero_shot_proba(X, T, te.logit_scale), "train_seconds": 0.0, "predict_seconds": time.perf_counter() - t0}
                    )
            _, fname = describe_keys([key])
            base = {
                "task": t,
                "backbone": bb,
                "features": fname,
                "head": ZERO_SHOT,
                "noise": 0.0,
                "kind": ZERO_SHOT,
                "budget": f"no training: prompts only ({len(cv.folds)}/{len(cv.folds)} folds' test tiles scored)",
                "params": json.dumps(
                    {"prompts": plan.prompts, "text_embeddings": plan.files[bb], "logit_scale": te.logit_scale}, sort_keys=True
                ),
                "row_id": row_id(t, bb, fname, ZERO_SHOT, 0.0),
                "keys": [key],
            }
            row, arrays = score_row(base, spec, cv, y, classes, results, list(cv.folds), n_boot, seed)
            row["n_train"], row["n_val"] = 0, 0
            out.append((row, arrays))
    return out
