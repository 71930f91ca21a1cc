"""How an output was made: ``run.yaml`` beside every folder mito writes (the job, its effective spec, the versions
that ran it, the store's tile-list hash, the time), so that ``mito rerun`` can make it again. Stores keep the same
record per run in their attributes (``runs``, see mito.store.Store.add_run)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mito.core.errors import MitoError
from mito.core.io import MANIFEST, atomic_write_text, json_default, read_manifest, write_json
from mito.core.version import __version__

RUN_FILE = "run.yaml"
RUN_FORMAT = 1
# the jobs whose outputs record their spec (mito.app.rerun maps each to its config class and runner)
JOBS = ("extract", "fit-head", "fit-slide", "bench", "bench-slide", "lora", "export", "import")
# packages whose versions change numbers; read only when something already imported them (never imported here)
_PACKAGES = ("numpy", "pandas", "pydantic", "torch", "torchvision", "timm", "sklearn", "lightgbm", "zarr", "h5py", "safetensors", "peft")


class RunRecordError(MitoError):
    """A run.yaml that is missing, unreadable or not one mito wrote."""


def versions() -> dict[str, str]:
    """mito's and Python's versions, and those of the numeric packages this process has already imported."""
    out = {"mito": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        mod = sys.modules.get(name)
        v = getattr(mod, "__version__", None) if mod is not None else None
        if v is not None:
            out[name] = str(v)
    return out


def spec_dict(spec: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """A spec as plain JSON values (a pydantic model's ``model_dump(mode="json")``; a mapping through JSON)."""
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json")
    return json.loads(json.dumps(dict(spec), default=json_default))


# spec keys that name input files or folders: recorded as absolute paths, so that a record re-runs from any folder
INPUT_PATHS = ("store", "source", "points", "annotations", "include", "prompts", "zero_shot", "model", "folder", "labels", "checkpoint")


def _absolute(value: Any) -> Any:
    """A relative path that exists from here, made absolute (other values, e.g. a built-in prompt set's name, as given)."""
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
        return os.path.abspath(value)
    return value


def recorded_spec(spec: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The spec as a run record keeps it: ``overwrite`` is how that run treated an existing output, not how the output
    is made, so it is recorded off (a run.yaml given to --config never replaces the output it describes); input paths
    are absolute (mito rerun from another folder reads the same store and source)."""
    out = spec_dict(spec)
    if out.get("overwrite"):
        out["overwrite"] = False
    for key in INPUT_PATHS:
        if key in out:
            out[key] = _absolute(out[key])
    return out


def run_record(job: str, spec: BaseModel | Mapping[str, Any], store_sha256: str | None = None, **extra: Any) -> dict[str, Any]:
    """The record of one run: job, effective spec, versions, the store's tile-list sha256 (when a store is involved), time."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}")
    return {
        "job": job,
        "format_version": RUN_FORMAT,
        "spec": recorded_spec(spec),
        "versions": versions(),
        **({"store_tiles_sha256": store_sha256} if store_sha256 else {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def dump_record(record: Mapping[str, Any]) -> str:
    """A record as YAML text (keys in the order written)."""
    return yaml.safe_dump(dict(record), sort_keys=False, allow_unicode=True, default_flow_style=False)


def write_run_record(
    out_dir: str | os.PathLike, job: str, spec: BaseModel | Mapping[str, Any], store_sha256: str | None = None, **extra: Any
) -> Path:
    """Write ``out_dir/run.yaml`` (see :func:`run_record`). Call it before the folder's manifest is written; when the
    manifest is there already, run.yaml is added to its file list (so the folder stays one mito may replace)."""
    path = atomic_write_text(Path(out_dir) / RUN_FILE, dump_record(run_record(job, spec, store_sha256, **extra)))
    doc = read_manifest(out_dir)
    if doc is not None and isinstance(doc.get("files"), list) and RUN_FILE not in doc["files"]:
        write_json(Path(out_dir) / MANIFEST, {**doc, "files": sorted([*doc["files"], RUN_FILE])})
    return path


def update_run_record(out_dir: str | os.PathLike, **extra: Any) -> Path:
    """Add entries to an existing run.yaml (e.g. the bench row a model was trained from)."""
    doc = read_run_record(out_dir)
    return atomic_write_text(Path(out_dir) / RUN_FILE, dump_record({**doc, **extra}))


def check_record(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` when it is a run record this mito reads, else a one-line RunRecordError naming ``where``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("job"), str) or not isinstance(doc.get("spec"), dict):
        raise RunRecordError(f"{where} is not a run record mito wrote (it needs a job and a spec mapping)")
    if doc["job"] not in JOBS:
        raise RunRecordError(f"{where}: unknown job {doc['job']!r} (mito re-runs {', '.join(JOBS)})")
    if int(doc.get("format_version", RUN_FORMAT)) > RUN_FORMAT:
        raise RunRecordError(f"{where} has format {doc['format_version']}, newer than this mito reads ({RUN_FORMAT}): update mito")
    return doc


def read_run_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The run record of a folder mito wrote (its run.yaml); a missing or damaged one is a one-line RunRecordError."""
    f = Path(folder) / RUN_FILE
    if not Path(folder).exists():
        raise RunRecordError(f"{folder} does not exist")
    if not f.is_file():
        raise RunRecordError(f"{folder} has no {RUN_FILE}: it was not written by a mito that records its runs, or is not a mito output")
    try:
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunRecordError(f"{f} cannot be read: {why}") from None
    return check_record(doc, str(f))
