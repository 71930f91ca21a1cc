"""``mito rerun DIR --out NEW``: make an output again from its run record (a folder's run.yaml, a store's ``runs``):
the spec validated into its job's config class, the output path replaced by NEW, the same library function run."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mito.bench import BenchConfig, Leaderboard, SlideBenchConfig, run_bench, run_slide_bench, save_leaderboard
from mito.bench.finetune import FinetuneConfig, run_finetune
from mito.core.errors import MitoError
from mito.core.io import RUN_KINDS, atomic_dir, check_output_dir, is_artifact, is_store_dir
from mito.core.runrecord import check_record, read_run_record
from mito.core.validation import one_line
from mito.extract import ExtractConfig, extract
from mito.heads import FitConfig, fit_head
from mito.heads.slide import SlideFitConfig, fit_slide_head
from mito.interop import export, import_features
from mito.report import build_report
from mito.store import open_store, store_exists


class RerunError(MitoError):
    """An output that cannot be re-run: no run record, a damaged one, or a spec this mito refuses."""


@dataclass
class Rerun:
    """What a re-run made: the job, the new output, and its result (metrics, leaderboard, extract summaries ...)."""

    job: str
    out: Path
    source: Path
    results: list[Any] = field(default_factory=list)


def _validate(cls: type[BaseModel], spec: dict[str, Any], where: str) -> Any:
    try:
        return cls.model_validate(spec)
    except ValidationError as e:
        raise RerunError(f"the spec in {where} is not a valid {cls.__name__}: {one_line(e)}") from None


def _save_bench(lb: Leaderboard, out: Path) -> Leaderboard:
    atomic_dir(
        out,
        lambda tmp: (save_leaderboard(lb, tmp), build_report(tmp)),
        replace=lambda p: is_artifact(p, *RUN_KINDS) or not any(p.iterdir()),
    )
    return lb


def _fit(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    return fit_head(_validate(FitConfig, {**spec, "out": str(out), "overwrite": overwrite}, where))


def _fit_slide(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    return fit_slide_head(_validate(SlideFitConfig, {**spec, "out": str(out), "overwrite": overwrite}, where))


def _bench(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    cfg = _validate(BenchConfig, spec, where)
    check_output_dir(out, overwrite, is_ours=lambda p: is_artifact(p, *RUN_KINDS), protect=(cfg.store, *cfg.include), what="bench folder")
    return _save_bench(run_bench(cfg, progress=False), out)


def _bench_slide(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    cfg = _validate(SlideBenchConfig, spec, where)
    check_output_dir(out, overwrite, is_ours=lambda p: is_artifact(p, *RUN_KINDS), protect=(cfg.store,), what="bench folder")
    return _save_bench(run_slide_bench(cfg, progress=False), out)


def _lora(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    if out.exists() and any(out.iterdir()):
        raise RerunError(f"{out} exists: mito lora resumes into an existing run folder, so a re-run needs a new --out")
    return run_finetune(_validate(FinetuneConfig, {**spec, "out": str(out)}, where), progress=False)


def _need(spec: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Jobs without a config class (export, import): a hand-edited spec that lacks an entry is one line."""
    missing = [k for k in keys if spec.get(k) is None]
    if missing:
        raise RerunError(f"the spec in {where} has no {missing[0]!r} entry")


def _export(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    _need(spec, ("store", "format"), where)
    return export(str(spec["store"]), str(spec["format"]), out, spec.get("feature"), overwrite)


def _extract(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    return extract(_validate(ExtractConfig, {**spec, "store": str(out), "progress": False}, where))


def _import(spec: dict[str, Any], out: Path, overwrite: bool, where: str) -> Any:
    _need(spec, ("folder", "chunk_rows"), where)
    return import_features(spec["folder"], out, spec.get("format", "auto"), spec.get("name"), spec.get("labels"), int(spec["chunk_rows"]))


Runner = Callable[[dict[str, Any], Path, bool, str], Any]
# job -> the function that runs its spec into a new output (the config class each validates against is named inside)
RUNNERS: dict[str, Runner] = {
    "fit-head": _fit,
    "fit-slide": _fit_slide,
    "bench": _bench,
    "bench-slide": _bench_slide,
    "lora": _lora,
    "export": _export,
    "extract": _extract,
    "import": _import,
}
STORE_JOBS = ("extract", "import")  # jobs whose output is a store: their runs are replayed in order into NEW


def store_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The run records of a store, oldest first; one-line RerunError when it has none."""
    with open_store(path, "r") as s:
        runs = s.runs
    if not runs:
        raise RerunError(f"{path} records no runs (made by a mito before stores kept their specs): re-run its extract by hand")
    records = [check_record(r, f"{path} (run {i + 1})") for i, r in enumerate(runs)]
    stray = next((r["job"] for r in records if r["job"] not in STORE_JOBS), None)
    if stray is not None:
        raise RerunError(f"{path} records a {stray} run, which does not write a store")
    return records


def _same_store(rec: dict[str, Any], store: str | None, where: str) -> dict[str, Any]:
    """The record's spec reading ``store`` instead of the recorded one (when given); a store whose tiles differ from the
    recorded run's (tile-list sha256) is refused: re-running on it would not give the recorded numbers."""
    spec = dict(rec["spec"])
    if store is not None:
        if "store" not in spec:
            raise RerunError(f"{where} records a {rec['job']} run, which reads no store: --store does not apply")
        spec["store"] = os.path.abspath(store)
    want = rec.get("store_tiles_sha256")
    if want and spec.get("store") and store_exists(spec["store"]):
        with open_store(spec["store"], "r") as s:
            have = s.meta.get("tile_list_sha256")
        if have and have != want:
            raise RerunError(
                f"{spec['store']} holds other tiles than the recorded run read (tile-list sha256 {have[:12]}..., recorded "
                f"{want[:12]}...): a re-run would not reproduce it; give the store it was made from (--store PATH)"
            )
    return spec


def rerun(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, store: str | None = None) -> Rerun:
    """Make the output at ``source`` again into ``out`` from its run record (a store: every recorded run, in order);
    ``store``: where the store it read lives now (a colleague's copy), checked to hold the recorded tiles."""
    src, new = Path(source), Path(out)
    if not src.exists():
        raise RerunError(f"{source} does not exist")
    if src.resolve() == new.resolve():
        raise RerunError(f"--out {out} is {source} itself: re-run into a new folder")
    if is_store_dir(src):
        if store is not None:
            raise RerunError("--store names the store a model or bench read; a store re-runs from its own recorded source")
        records = store_records(src)
        if store_exists(new):
            raise RerunError(f"{out} already holds a store: a re-run writes a new one (delete it or give another --out)")
        done = Rerun(records[0]["job"], new, src)
        for rec in records:
            done.results.append(RUNNERS[rec["job"]](rec["spec"], new, overwrite, f"{source} (run of {rec.get('created', '?')})"))
        return done
    rec = read_run_record(src)
    if rec["job"] in STORE_JOBS:
        raise RerunError(f"{src}'s run.yaml describes a store ({rec['job']}); re-run the store itself")
    where = str(src / "run.yaml")
    return Rerun(rec["job"], new, src, [RUNNERS[rec["job"]](_same_store(rec, store, where), new, overwrite, where)])
