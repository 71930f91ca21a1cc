"""From leaderboard to model: what a bench or LoRA folder records of how it was made (``run.yaml``), the fit spec of
every head row (``rows/<ROW_ID>.yaml``, FitConfig-shaped), and ``fit_from_bench``: train one row's recipe on all the
bench's training rows (``mito fit-head --from-bench DIR --row ID``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mito.bench.errors import BenchError
from mito.core.io import atomic_write_text, safe_name
from mito.core.runrecord import dump_record, update_run_record, write_run_record
from mito.core.validation import as_dict
from mito.heads import fit_head, make_fit_config

ROWS_DIR = "rows"
_FINETUNE_ONLY = ("config_hash",)  # entries of meta["finetune"] that are not FinetuneConfig fields


def write_bench_record(out: str | os.PathLike, rows: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Write ``out/run.yaml`` (the bench, slide bench or LoRA spec that made the leaderboard) and, for a tile bench,
    ``out/rows/<ROW_ID>.yaml``: the fit spec of each head row (call before the folder's manifest)."""
    out = Path(out)
    sha = as_dict(meta.get("store")).get("tile_list_sha256")
    if "finetune" in meta:
        spec = {k: v for k, v in as_dict(meta["finetune"]).items() if k not in _FINETUNE_ONLY}
        write_run_record(out, "lora", spec, sha)
        return
    config = as_dict(meta.get("config"))
    if not config:
        return  # a leaderboard without its config (an earlier mito's, re-saved): nothing to re-run from
    slide = meta.get("level") == "slide"
    write_run_record(out, "bench-slide" if slide else "bench", config, sha)
    if not slide:
        write_recipes(out / ROWS_DIR, rows, meta)


def row_recipe(row: pd.Series, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The FitConfig-shaped spec that trains one leaderboard row's recipe on all the bench's training rows (None for rows
    that are not a head fitted on all labels: zero-shot, few-shot, LoRA rows; a search row's is fit-head's
    --feature-search over the row's candidates)."""
    if row.get("kind") not in ("head", "search") or str(row.get("shots", "all")) != "all" or not isinstance(row.get("keys"), list):
        return None
    cfg = as_dict(meta.get("config"))
    task = str(row["task"])
    tmeta = as_dict(as_dict(meta.get("tasks")).get(task))
    held = str(row.get("held_out") or "")
    params = json.loads(row["params"]) if isinstance(row.get("params"), str) else {}
    recipe: dict[str, Any] = {
        # absolute: the recipe is read from wherever its user stands (--from-bench DIR, --config DIR/rows/ID.yaml)
        "store": os.path.abspath(str(cfg.get("store", as_dict(meta.get("store")).get("path")))),
        "task": task,
        "head": str(row["head"]),
        "features": [str(k) for k in row["keys"]],
        "metadata_columns": list(cfg.get("metadata_columns") or []),
        "standardize": bool(cfg.get("standardize", False)),
        "pca": cfg.get("pca"),
        "head_params": params,
        "seed": int(cfg.get("seed", 0)),
        "stream": cfg.get("stream"),
        **({"buffer_rows": int(cfg["buffer_rows"])} if cfg.get("buffer_rows") else {}),
        **({"positive": tmeta["positive"]} if cfg.get("positive") and tmeta.get("positive") else {}),  # else: fit-head's own rule
    }
    if row.get("kind") == "search":  # the row scores a procedure (each fold may select another set): fit-head runs it
        recipe.update(feature_search=True, **{k: cfg[k] for k in ("search_folds", "search_max", "search_margin") if k in cfg})
    if held:  # a domain-shift row: train on the other values of the column, test on this one
        recipe.update(split_column=None, test_group=f"{cfg.get('shift_column')}={held}")
    elif tmeta.get("cv") == "split":  # the bench trained on the store's train split and scored its test split
        recipe.update(split_column="split")
    else:  # k-fold: every labelled row is a training row; val is carved (by group) for early stopping only
        recipe.update(split_column=None, test_fraction=0.0)
    return recipe


def write_recipes(folder: Path, rows: pd.DataFrame, meta: dict[str, Any]) -> int:
    """One ``<ROW_ID>.yaml`` per head row in ``folder`` (replaced as a whole); returns how many."""
    if folder.exists():
        shutil.rmtree(folder)
    n = 0
    for _, row in rows.iterrows():
        recipe = row_recipe(row, meta)
        if recipe is None:
            continue
        head = (
            f"# bench row {row['row_id']} (rank {row.get('rank')} of task {row['task']}): {row['features']} x {row['head']}, "
            f"noise {row.get('noise')}\n# train it: mito fit-head --from-bench BENCH_DIR --row {row['row_id']} --out MODEL_DIR\n"
        )
        if row.get("kind") == "search":
            head += "# a search row: fit-head re-runs the forward selection over these candidates on its own training rows\n"
        atomic_write_text(folder / f"{safe_name(row['row_id'])}.yaml", head + dump_record(recipe))
        n += 1
    return n


def read_recipe(bench_dir: str | os.PathLike, row_id: str) -> dict[str, Any]:
    """The fit spec of row ``row_id`` of a bench folder (its rows/<ROW_ID>.yaml); one-line BenchError when absent."""
    d = Path(bench_dir)
    folder = d / ROWS_DIR
    if not folder.is_dir():
        raise BenchError(
            f"{d} has no {ROWS_DIR}/ folder of row recipes (not a tile bench folder, or written by an earlier mito: "
            f"re-run it with mito rerun {d} --out NEW)"
        )
    f = folder / f"{safe_name(row_id)}.yaml"
    if not f.is_file():
        have = sorted(p.stem for p in folder.glob("*.yaml"))
        listed = ", ".join(have[:5]) + (" ..." if len(have) > 5 else "")
        raise BenchError(f"no head row {row_id!r} in {d} (its head rows: {listed or 'none'}; ids are the leaderboard's row_id column)")
    try:
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BenchError(f"{f} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise BenchError(f"{f} is not a fit spec (a mapping of FitConfig fields)")
    return doc


def trained_on(recipe: dict[str, Any]) -> str:
    """Which rows a recipe trains on, in words (printed by fit-head --from-bench)."""
    if recipe.get("test_group"):
        return f"the rows outside {recipe['test_group']} (the bench's shift row), tested on {recipe['test_group']}"
    if recipe.get("split_column"):
        return "the store's train split (as the bench's split-mode folds), val carved by group for early stopping, scored on its test split"
    return (
        "all labelled rows (the bench's k-fold training rows), val carved by group for early stopping; no rows are held out "
        "for testing, so the metrics below are on the early-stopping rows: the bench's cross-validated numbers are the estimate"
    )


def fit_from_bench(
    bench_dir: str | os.PathLike, row_id: str, out: str | os.PathLike, overwrite: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Train bench row ``row_id``'s recipe into the model folder ``out``; its run.yaml names the bench and the row."""
    recipe = read_recipe(bench_dir, row_id)
    cfg = make_fit_config(**{**recipe, "out": str(out), "overwrite": overwrite, "progress": progress})
    metrics = fit_head(cfg)
    origin = {"dir": str(bench_dir), "row": row_id, "trained_on": trained_on(recipe)}
    update_run_record(out, from_bench=origin)
    metrics["from_bench"] = origin
    return metrics
