"""Specs on the command line: ``--config FILE.yaml`` and ``--set KEY=VALUE`` for every job command, the one table
from spec fields to options, the one parser of head parameters and the one translator from a validation error to
the option, ``--set`` key or file line that gave the value.

Precedence, lowest first: the command's defaults, the spec file, ``--set``, options given on the command line.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mito.core.spec loads pydantic and yaml: imported when a command runs, so `mito --help` stays fast
    from mito.core.spec import Key, RawSpec

# job -> where its spec model lives (imported when used: `mito --help` stays fast)
JOBS: dict[str, tuple[str, str]] = {
    "extract": ("mito.extract", "ExtractConfig"),
    "fit": ("mito.heads", "FitConfig"),
    "fit-slide": ("mito.heads", "SlideFitConfig"),
    "bench": ("mito.bench", "BenchConfig"),
    "bench-slide": ("mito.bench", "SlideBenchConfig"),
    "lora": ("mito.bench", "FinetuneConfig"),
    "zero-shot": ("mito.heads.zeroshot", "ZeroShotConfig"),
    "predict": ("mito.app.predict", "PredictConfig"),
}
JOB_ALIASES = {"fit-head": "fit", "finetune": "lora"}  # job names a run.yaml may carry

# The one option<->field table: spec field -> the command's parameter (its Python name) where the two differ.
RENAMES: dict[str, dict[str, str]] = {
    "extract": {"backbones": "backbone", "num_workers": "workers", "progress": "quiet"},
    "fit": {"metadata_columns": "metadata", "progress": "as_json", "head_params": "param"},
    "fit-slide": {"progress": "as_json", "head_params": "param"},
    "bench": {"tasks": "task", "n_folds": "folds", "n_jobs": "jobs", "head_params": "param"},
    "bench-slide": {"n_folds": "folds", "head_params": "param"},
    "lora": {"n_folds": "folds", "folds": "run_folds", "max_epochs": "epochs", "num_workers": "workers"},
    "predict": {"progress": "quiet"},
}
NEGATED = ("quiet", "as_json")
OWN_PARSER = (
    "param",
)  # options the command parses itself (head options: parse_head_params, then Gathered.merge)  # on/off options whose field (progress) is their opposite

# fit-head's own flags for head options (option -> head parameter), per level
HEAD_FLAGS: dict[str, dict[str, str]] = {
    "fit": {
        **{k: k for k in ("noise", "noise_mode", "hidden", "dropout", "loss", "gamma", "balance", "epochs", "patience", "lr")},
        **{"batch_size": "batch_size", "precision": "precision", "threads": "n_threads"},
    },
    "fit-slide": {
        k: k
        for k in (
            "noise",
            "noise_mode",
            "hidden",
            "dropout",
            "loss",
            "gamma",
            "epochs",
            "patience",
            "lr",
            "max_tiles",
            "tile_dropout",
            "balance",
        )
    },
}
SPEC_OPTIONS = ("config", "sets")  # every job command's --config and --set parameters


def job_model(job: str) -> Any:
    """The pydantic spec model of ``job`` (see :data:`JOBS`)."""
    from mito.core.spec import SpecError

    job = JOB_ALIASES.get(job, job)
    if job not in JOBS:
        raise SpecError(f"unknown job {job!r}; choose one of {', '.join(JOBS)}")
    module, name = JOBS[job]
    return getattr(importlib.import_module(module), name)


def resolve_job(job: str, values: dict[str, Any]) -> str:
    """The job a spec is for: ``job`` (aliases resolved), or its slide-level sibling when the keys are that one's only
    (a run.yaml that names the command, e.g. fit-head, for a --level slide run)."""
    job = JOB_ALIASES.get(job, job)
    slide = f"{job}-slide"
    if slide in JOBS and not set(values) <= set(job_model(job).model_fields) and set(values) <= set(job_model(slide).model_fields):
        return slide
    return job


def given(ctx: Any, name: str) -> bool:
    """True when the parameter ``name`` was given on the command line (or by its environment variable), not defaulted."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def option_name(ctx: Any, param: str) -> str:
    """How the user writes the parameter ``param``: its long option (``--folds``) or, for an argument, its metavar."""
    for p in ctx.command.params:
        if p.name == param:
            longs = [o for o in p.opts if o.startswith("--")]
            return longs[0] if longs else p.name.upper()
    return "--" + param.replace("_", "-")


def _accepts_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_list(a) for a in typing.get_args(annotation))
    return False


def _text_only(annotation: Any) -> bool:
    """True for a field that takes text only (``str`` or ``str | None``)."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a is str for a in args)
    return False


def split_list(value: str | None) -> list[str]:
    """Split a comma-separated option into stripped non-empty items."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def to_field(model: Any, name: str, value: Any) -> Any:
    """A command-line value as the field ``name`` of ``model`` takes it: comma lists split, paths as text."""
    info = model.model_fields[name]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and _accepts_list(info.annotation):
        return split_list(value)
    return value


def list_or_none(value: str) -> list[str] | None:
    """A comma list where an empty one means the default (every feature set, every head, every layer)."""
    return split_list(value) or None


def parse_head_params(pairs: Iterable[str], option: str, head: str | None = None) -> dict[str, dict[str, Any]]:
    """The one grammar of head options: HEAD.KEY=VALUE (bench and fit-head), or KEY=VALUE for ``head`` (fit-head's
    one head); VALUE parsed as on ``--set`` (JSON, else a YAML scalar or list, else text) -> {head: {key: value}}."""
    from mito.core.spec import SpecError, parse_value

    out: dict[str, dict[str, Any]] = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        name, dot, param = key.strip().rpartition(".") if "." in key else ("", "", key.strip())
        if not sep or not param or (dot and not name) or (not dot and head is None):
            grammar = "KEY=VALUE or HEAD.KEY=VALUE" if head else "HEAD.KEY=VALUE (e.g. mlp.hidden=512)"
            raise SpecError(f"{option} takes {grammar}, got {p!r}")
        out.setdefault(name or str(head), {})[param] = parse_value(raw)
    return out


@dataclass
class Gathered:
    """A job's values from every layer, and where each top-level key came from (to place a validation error)."""

    job: str
    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # field -> "flag" | "file" | "set" | "default"
    raw: RawSpec | None = None
    ctx: Any = None

    def where(self, loc: Key) -> str:
        """Where the key at ``loc`` came from, as the user wrote it."""
        if not loc:
            return "" if self.raw is None else Path(self.raw.path).name
        kind = self.origin.get(loc[0], "default")
        if kind == "file" and self.raw is not None:
            from mito.core.spec import file_where

            return file_where(self.raw)(loc)
        if kind == "set":
            return f"--set {'.'.join(loc)}"
        param = RENAMES.get(self.job, {}).get(loc[0], loc[0])
        return option_name(self.ctx, param) if self.ctx is not None else "--" + param.replace("_", "-")

    def merge(self, name: str, extra: dict[str, Any]) -> None:
        """Merge ``extra`` key by key over the mapping field ``name``, at the precedence of command-line options."""
        if extra:
            base = self.values.get(name)
            self.values[name] = {**(base if isinstance(base, dict) else {}), **extra}
            self.origin.setdefault(name, "flag")

    def validate(self, model: Any = None) -> Any:
        """The job's spec model, or one SpecError line naming the option, ``--set`` key or file:line."""
        from mito.core.spec import validate_spec

        return validate_spec(model or job_model(self.job), self.values, self.where)


def read_config(config: Path | None, jobs: tuple[str, ...]) -> RawSpec | None:
    """The spec file of ``--config``, refused when it names a job of another command."""
    from mito.core.spec import SpecError, load_spec

    if config is None:
        return None
    raw = load_spec(config)
    if raw.job is not None:
        raw.job = resolve_job(raw.job, raw.values)
    if raw.job is not None and raw.job not in jobs:
        raise SpecError(f"{Path(raw.path).name}: a spec of job {raw.job!r}; this command runs {' or '.join(jobs)}")
    return raw


def gather(
    ctx: Any,
    job: str,
    params: dict[str, Any],
    *,
    raw: RawSpec | None,
    sets: list[str],
    convert: dict[str, Callable[[Any], Any]] | None = None,
) -> Gathered:
    """A job's values, lowest first: the command's defaults, the spec file, ``--set``, options given on the command
    line (``params``: the command's parameters by Python name, mapped to fields by :data:`RENAMES`; ``convert``: how a
    command-line value becomes the field's where splitting a comma list is not enough)."""
    from mito.core.spec import parse_sets, set_path

    model = job_model(job)
    out = Gathered(job, raw=raw, ctx=ctx)
    flags: dict[str, Any] = {}
    for name in model.model_fields:
        param = RENAMES.get(job, {}).get(name, name)
        if param not in params or params[param] is None or param in OWN_PARSER:
            continue
        value = not params[param] if param in NEGATED else params[param]
        value = convert[name](value) if convert and name in convert else to_field(model, name, value)
        if given(ctx, param):
            flags[name] = value
        else:
            out.values[name] = value
    if raw is not None:
        out.values.update(raw.values)
        out.origin.update(dict.fromkeys(raw.values, "file"))
    texts = {tuple(k.strip() for k in item.partition("=")[0].split(".")): item.partition("=")[2] for item in sets}
    for key, value in parse_sets(sets).items():
        if len(key) == 1 and key[0] in model.model_fields and _text_only(model.model_fields[key[0]].annotation):
            value = value if value is None else texts[key]  # --set positive=1 or task=2024 is the text, as its option takes it
        if len(key) == 1 and key[0] in model.model_fields:  # a list field takes a comma list or one item, as its option does
            value = to_field(model, key[0], value)
            if value is not None and not isinstance(value, list) and _accepts_list(model.model_fields[key[0]].annotation):
                value = [value]
        set_path(out.values, key, value)
        out.origin[key[0]] = "set"
    out.values.update(flags)
    out.origin.update(dict.fromkeys(flags, "flag"))
    return out


def used_params(job: str, command_params: Iterable[str] = ()) -> set[str]:
    """The parameters a job reads: its fields (renamed), its head flags, --config/--set and ``command_params``."""
    fields = job_model(job).model_fields
    return {RENAMES.get(job, {}).get(f, f) for f in fields} | set(HEAD_FLAGS.get(job, {})) | set(SPEC_OPTIONS) | set(command_params)


def stray_options(ctx: Any, job: str, command_params: Iterable[str] = ()) -> list[str]:
    """The options given on the command line that ``job`` does not read, as the user wrote them."""
    keep = used_params(job, command_params)
    return [option_name(ctx, p.name) for p in ctx.command.params if p.name not in keep and given(ctx, p.name)]


def head_flag_params(ctx: Any, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """fit-head's head-option flags that were given (option -> head parameter), as {parameter: value}."""
    return {hp: params[p] for p, hp in HEAD_FLAGS[job].items() if params.get(p) is not None and (ctx is None or given(ctx, p))}


def command_defaults(command: Callable[..., Any], job: str) -> dict[str, Any]:
    """The defaults a command gives the fields of ``job`` where they differ from the model's (for `mito spec init`)."""
    model = job_model(job)
    sig = inspect.signature(command)
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        param = RENAMES.get(job, {}).get(name, name)
        p = sig.parameters.get(param)
        default = getattr(p.default, "default", None) if p is not None else None
        if default is None or default is ... or param in NEGATED or isinstance(default, list):
            continue
        value = to_field(model, name, default)
        if name == "zooms":
            value = [float(z) for z in value]
        if not info.is_required() and value != info.get_default(call_default_factory=True):
            out[name] = value
    return out
