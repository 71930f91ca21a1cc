"""Job specs: a YAML file (or run.yaml) of a job's settings, ``--set key.path=value`` overrides, validation into the
job's pydantic model with every problem as one line naming the key, the file and line, and what is allowed; a
commented template of a model (`mito spec init`) and the YAML of a validated spec (run.yaml, `mito spec show`).

Precedence, lowest first: the model's defaults, the command's own defaults, the spec file, ``--set``, options given
on the command line (see mito.cli_spec).
"""

from __future__ import annotations

import difflib
import json
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from mito.core.errors import MitoError

Key = tuple[str, ...]


class SpecError(MitoError):
    """A spec file or a --set override that cannot be read or does not validate (one line)."""


@dataclass
class RawSpec:
    """A spec file as read: its values, the line of every key (1-based), its path and the job it names (if any)."""

    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[Key, int] = field(default_factory=dict)
    path: str = ""
    job: str | None = None
    record: dict[str, Any] = field(default_factory=dict)  # a run.yaml's other keys: versions, the store's tile-list sha256


def _key_lines(node: Any, prefix: Key, out: dict[Key, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for k, v in node.value:
        key = (*prefix, str(k.value))
        out[key] = k.start_mark.line + 1
        _key_lines(v, key, out)


def load_spec(path: str | Path) -> RawSpec:
    """Read a spec YAML: a mapping of keys (an optional ``job:`` first), or a run.yaml (``job``, ``spec``, ...)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read the spec file {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "context_mark", None) or getattr(e, "problem_mark", None)  # where the broken construct starts
        where = f"{p.name}:{mark.line + 1}" if mark is not None else p.name
        raise SpecError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{p.name}:1: a spec is a mapping of keys to values (mito spec init JOB writes one)")
    lines: dict[Key, int] = {}
    _key_lines(node, (), lines)
    job = data.pop("job", None)
    record: dict[str, Any] = {}
    if isinstance(data.get("spec"), dict):  # run.yaml: {job, spec, versions, ...}
        lines = {k[1:]: n for k, n in lines.items() if k[:1] == ("spec",) and len(k) > 1}
        record = {k: v for k, v in data.items() if k != "spec"}
        data = dict(data["spec"])
    return RawSpec(data, lines, str(p), str(job) if job is not None else None, record)


def parse_value(raw: str) -> Any:
    """A value given on the command line: JSON when it parses (1e-3, [1, 2], true), else a YAML scalar or list, else text
    (``yes``, ``no``, ``on`` and ``off`` stay text)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        return raw  # YAML 1.1 reads yes/no/on/off as booleans: only true and false are
    return value


def parse_sets(items: list[str]) -> dict[Key, Any]:
    """``--set key.path=value`` items as {key path: value} (value parsed by :func:`parse_value`)."""
    out: dict[Key, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        path = tuple(k.strip() for k in key.split("."))
        if not sep or not all(path):
            raise SpecError(f"--set takes KEY=VALUE or KEY.SUBKEY=VALUE (e.g. --set seed=1), got {item!r}")
        out[path] = parse_value(raw)
    return out


def set_path(values: dict[str, Any], path: Key, value: Any) -> None:
    """Set ``values[path[0]][path[1]]... = value``, making the mappings on the way (a non-mapping is replaced)."""
    node = values
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[path[-1]] = value


def _allowed(err: Mapping[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    return str(ctx.get("expected", ""))


def error_message(err: Mapping[str, Any], model_cls: type[BaseModel] | None = None) -> str:
    """What is wrong in one pydantic error, in words (an unknown key names the nearest known ones)."""
    if err["type"] == "extra_forbidden" and model_cls is not None:
        name = str(err["loc"][-1])
        near = difflib.get_close_matches(name, list(model_cls.model_fields), n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        return f"unknown key ({hint}allowed: {', '.join(model_cls.model_fields)})"
    if err["type"] == "missing":
        return "required, and not given"
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    if isinstance(got, (str, int, float)) and not isinstance(got, bool) and repr(got) not in msg and str(got) not in msg:
        msg += f" (got {got!r})"
    return msg


def error_line(e: ValidationError, where: Callable[[Key], str], model_cls: type[BaseModel] | None = None) -> str:
    """The one translator from a validation error to a line for the user: ``<where the key came from>: <what is
    wrong>``; ``where(loc)`` names a CLI option, ``--set key`` or ``file:line: key``. A check across several keys names
    them itself (``where(())`` is then the file, or empty)."""
    err = e.errors()[0]
    loc = tuple(str(x) for x in err["loc"])
    place = where(loc)
    msg = error_message(err, model_cls)
    return f"{place}: {msg}" if place else msg


def validate_spec(model_cls: type[BaseModel], values: dict[str, Any], where: Callable[[Key], str]) -> Any:
    """``model_cls(**values)``; a validation problem is one :class:`SpecError` line placed by ``where``."""
    try:
        return model_cls(**values)
    except ValidationError as e:
        raise SpecError(error_line(e, where, model_cls)) from None


def file_where(raw: RawSpec) -> Callable[[Key], str]:
    """``where`` for keys of a spec file: ``fit.yaml:4: head`` (the nearest key the file has a line for)."""
    name = Path(raw.path).name

    def where(loc: Key) -> str:
        if not loc:
            return name
        for n in range(len(loc), 0, -1):
            if loc[:n] in raw.lines:
                return f"{name}:{raw.lines[loc[:n]]}: {'.'.join(loc)}"
        return f"{name}: {'.'.join(loc)}"

    return where


def _default(info: Any) -> Any:
    if info.default_factory is not None:
        return info.default_factory()
    return None if info.default is PydanticUndefined else info.default


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip() or "null"


def spec_template(model_cls: type[BaseModel], job: str | None = None, defaults: Mapping[str, Any] | None = None) -> str:
    """A commented YAML template of ``model_cls``: every key with its default (``defaults`` replace the model's, e.g.
    a command's own) and the sentence of its description; a required key gets its example and ``# required``."""
    doc = (model_cls.__doc__ or "").strip().splitlines()[0]
    out = [f"# {doc}", "# Precedence: options on the command line > --set KEY=VALUE > this file > defaults.", ""]
    if job:
        out += [f"job: {job}", ""]
    for name, info in model_cls.model_fields.items():
        desc = (info.description or "").strip()
        for line in textwrap.wrap(desc, 78) if desc else []:
            out.append(f"# {line}")
        if info.is_required():
            example = (info.examples or [None])[0]
            out.append(f"{name}: {_yaml_value(example)}  # required")
        else:
            value = defaults[name] if defaults and name in defaults else _default(info)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            out.append(f"{name}: {_yaml_value(value)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def dump_spec(model: BaseModel, job: str | None = None) -> str:
    """The YAML of a validated spec (every key, defaults included), ``job:`` first when given."""
    data = model.model_dump(mode="json")
    head = {"job": job} if job else {}
    return yaml.safe_dump({**head, **data}, sort_keys=False, default_flow_style=False, width=100)
