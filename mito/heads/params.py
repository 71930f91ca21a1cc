"""Hyperparameters declared once per head (scikit-learn's ``_parameter_constraints`` idea): each head class lists its
options as ``param_spec = {name: Param(...)}``; that declaration validates the options (one line naming the head, the
option and the allowed values), writes their help (``describe_params``) and drives the conformance tests
(tests/heads/test_conformance.py feeds every declared option values it must refuse)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mito.heads.errors import HeadError

BALANCES = ("weights", "sampler", "none")  # class balance: loss weights, a balanced sampler, or none
LOSSES = ("focal", "ce")  # torch heads, tile and slide level (mito.heads.torch_heads.focal_loss)
NOISE_MODES = ("global", "per-dim", "absolute", "views", "view-cov")  # the last two: mito.heads.view_noise


@dataclass(frozen=True)
class Param:
    """One option: its type (int, float, choice, balance, path), range or choices, whether None is allowed, and
    extra literal values it also takes (e.g. C='auto')."""

    kind: Literal["int", "float", "choice", "balance", "path"]
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    none: bool = False
    also: tuple[str, ...] = ()
    help: str = ""

    def allowed(self) -> str:
        """The allowed values in words, e.g. 'a whole number in [1, 65536]' or 'one of focal, ce'."""
        if self.kind in ("int", "float"):
            what = f"a {'whole ' if self.kind == 'int' else ''}number"
            if math.isinf(self.high):
                text = f"{what} {'>' if self.low_open else '>='} {_num(self.low)}"
            else:
                lo = ("(" if self.low_open else "[") + _num(self.low)
                hi = _num(self.high) + (")" if self.high_open else "]")
                text = f"{what} in {lo}, {hi}"
        elif self.kind == "balance":
            text = f"one of {', '.join(self.choices)} (true = weights, false = none)"
        elif self.kind == "path":
            text = "a file path"
        else:
            text = f"one of {', '.join(map(str, self.choices))}"
        extra = [*(repr(a) for a in self.also), *(["none"] if self.none else [])]
        return text + (f" or {' or '.join(extra)}" if extra else "")

    def accepts(self, value: Any) -> bool:
        """True when ``value`` is allowed (options reach heads as given on the command line: JSON values)."""
        if value is None:
            return self.none
        if isinstance(value, str) and value in self.also:
            return True
        if self.kind == "balance":
            return isinstance(value, bool) or (isinstance(value, str) and value in self.choices)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "path":
            return isinstance(value, (str, os.PathLike)) and str(value) != ""
        kinds = (int, np.integer) if self.kind == "int" else (int, float, np.integer, np.floating)
        if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(float(value)):
            return False
        v = float(value)
        return (v > self.low if self.low_open else v >= self.low) and (v < self.high if self.high_open else v <= self.high)

    def invalid_values(self) -> list[Any]:
        """Values this declaration must refuse (for the conformance tests)."""
        bad: list[Any] = ["not-an-option", [1]] if self.kind != "path" else [3, ""]
        if self.kind in ("int", "float"):
            bad += [v for v in (self.low - 1, self.high + 1) if math.isfinite(v)]
            bad += [self.low] if self.low_open and math.isfinite(self.low) else []
            bad += [self.high] if self.high_open and math.isfinite(self.high) else []
            bad += [math.nan, math.inf, True] + ([2.5] if self.kind == "int" else [])
        if not self.none:
            bad.append(None)
        return bad


def _num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "2**32" if v == 2**32 else f"{v:g}"


def balance_mode(value: Any) -> str:
    """The one meaning of ``balance`` for every head: 'weights', 'sampler' or 'none' (old spellings true/false kept)."""
    if isinstance(value, (bool, np.bool_)):
        return "weights" if value else "none"
    return str(value)


# options every tile head shares
COMMON: dict[str, Param] = {
    "noise": Param("float", 0, help="feature-noise scale (see noise_mode)"),
    "noise_mode": Param("choice", choices=NOISE_MODES, help="how noise scales with the features"),
    "n_threads": Param("int", 1, none=True, help="CPU threads (none: one for small data, else the idle cores)"),
    "seed": Param("int", 0, 2**32, high_open=True, help="random seed"),
}
COPIES: dict[str, Param] = {"noise_copies": Param("int", 0, help="noisy copies of the training rows (whole-array heads)")}


def check_options(head: str, allowed: Sequence[str], given: Mapping[str, Any], what: str = "head") -> None:
    """One-line HeadError when ``given`` names an option the head does not take (listing those it takes)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise HeadError(f"{what} {head!r} has no option {', '.join(unknown)} (it takes: {', '.join(allowed)})")


def check_params(head: str, spec: Mapping[str, Param], values: Mapping[str, Any]) -> None:
    """One-line HeadError for the first option ``head`` does not take or whose value its declaration refuses."""
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise HeadError(f"head {head!r} has no option {', '.join(unknown)} (it takes: {', '.join(spec)})")
    for key, p in spec.items():
        if key in values and not p.accepts(values[key]):
            raise HeadError(f"head {head!r}: {key} must be {p.allowed()}, got {values[key]!r}")


def describe_params(spec: Mapping[str, Param], defaults: Mapping[str, Any]) -> list[str]:
    """One line per option: name, allowed values, default and what it does (the help of --param)."""
    return [f"{k}: {p.allowed()}; default {defaults.get(k)!r}" + (f" - {p.help}" if p.help else "") for k, p in spec.items()]
