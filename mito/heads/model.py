"""The one model contract and the one model registry, keyed by (level, name).

Every model kind implements ``Model``: tile heads (mito.heads.base.Head and its subclasses), slide-level MIL heads
(mito.heads.mil.MILHead, X = mito.heads.bags.BagSet), ensembles of tile heads (mito.heads.ensemble.Ensemble),
model directories (mito.heads.predict.TileModel, mito.heads.slide.SlideModel) and fine-tuned backbones
(mito.bench.finetune.FinetunedModel, X = images). Views and callbacks are fit arguments, never attributes set on a
model from outside. Built-in models are imported on first use: ``import mito.heads`` never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from mito.heads.errors import HeadError

Level = Literal["tile", "slide", "image"]
LEVELS: tuple[str, ...] = ("tile", "slide", "image")
CONFIG_FILE = "config.json"  # a model directory's config (fit-head, fit-head --level slide)
METRICS_FILE = "metrics.json"


class Callback(Protocol):
    """Told after every training epoch: the epoch's record (epoch, train_loss, val_* when validated) and the epoch cap."""

    def on_epoch(self, metrics: dict[str, float], max_epochs: int) -> None: ...


class EpochCallback:
    """A Callback from a plain function ``fn(metrics, max_epochs)``."""

    def __init__(self, fn: Callable[[dict[str, float], int], None]) -> None:
        self.fn = fn

    def on_epoch(self, metrics: dict[str, float], max_epochs: int) -> None:
        """Call the function."""
        self.fn(metrics, max_epochs)


@runtime_checkable
class Model(Protocol):
    """What every model kind offers: fit, class probabilities, save and load (``isinstance`` checks a fitted one)."""

    level: ClassVar[str]

    @property
    def name(self) -> str: ...

    @property
    def classes_(self) -> np.ndarray: ...

    def fit(
        self, X: Any, y: Any = None, *, eval_set: Any = None, views: np.ndarray | None = None, callbacks: Sequence[Callback] = ()
    ) -> Any: ...

    def predict_proba(self, X: Any) -> np.ndarray: ...

    def save(self, path: str | Path) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> Any: ...


M = TypeVar("M")
_REGISTRY: dict[tuple[str, str], type] = {}
# built-in models, imported on first use: a process that never trains a torch head never imports torch (~0.5 GB)
BUILTIN: dict[tuple[str, str], str] = {
    ("tile", "mlp"): "mito.heads.torch_heads",
    ("tile", "linear"): "mito.heads.torch_heads",
    ("tile", "logreg"): "mito.heads.sklearn_heads",
    ("tile", "knn"): "mito.heads.sklearn_heads",
    ("tile", "lightgbm"): "mito.heads.lgbm",
    ("slide", "mean-linear"): "mito.heads.mil",
    ("slide", "mean-mlp"): "mito.heads.mil",
    ("slide", "abmil"): "mito.heads.mil",
}
# models that need more than features (class text embeddings): usable by name, left out of the default set
OPTIONAL: dict[tuple[str, str], str] = {("tile", "text-linear"): "mito.heads.text_linear"}
_WHAT = {"tile": "head", "slide": "slide-level head", "image": "image model"}


def register(level: str, name: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a model class available under (``level``, ``name``) (a second registration fails)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")

    def deco(cls: type[M]) -> type[M]:
        if (level, name) in _REGISTRY:
            raise RuntimeError(f"{level} model {name!r} registered twice")
        if not isinstance(getattr(cls, "name", None), property):  # a model whose name depends on its settings keeps it
            cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[level, name] = cls
        return cls

    return deco


def lookup(level: str, name: str) -> type:
    """The class registered under (``level``, ``name``); a built-in's module is imported on first use."""
    key = (level, name)
    if key not in _REGISTRY and (key in BUILTIN or key in OPTIONAL):
        importlib.import_module(BUILTIN.get(key) or OPTIONAL[key])
    try:
        return _REGISTRY[key]
    except KeyError:
        raise HeadError(f"unknown {_WHAT.get(level, level)} {name!r}; choose one of {', '.join(names(level))}") from None


def names(level: str) -> tuple[str, ...]:
    """The names of ``level``: built-ins, then the optional ones, then any registered by other code, in registration order."""
    keys = [*BUILTIN, *OPTIONAL, *_REGISTRY]
    return tuple(dict.fromkeys(n for lv, n in keys if lv == level))


def keys() -> tuple[tuple[str, str], ...]:
    """Every (level, name), level by level in names() order, built-ins imported (what the conformance tests walk)."""
    out = tuple((level, n) for level in LEVELS for n in names(level))
    for key in out:
        lookup(*key)
    return out


def module_of(level: str, name: str) -> str | None:
    """The module a built-in model lives in (what a worker imports before training it), None for others."""
    return BUILTIN.get((level, name)) or OPTIONAL.get((level, name))


def make(level: str, name: str, **params: Any) -> Any:
    """A model by (level, name) with its options checked against its declaration; bad options raise HeadError."""
    cls = lookup(level, name)
    build = getattr(cls, "create", None)
    return build(**params) if callable(build) else cls(**params)
