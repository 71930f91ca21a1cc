"""The one task resolver: a task name -> its labels on a tile table (a catalogue task or a label column), classes and main
metric.

Generic: the named tasks of a dataset (AMi-Br's phase, atypia ...) come in as a catalogue (``mito.datasets.PROXY_TASKS``),
which fit-head, bench, lora, umap and predict pass alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from mito.core.errors import TaskError

NOT_LABELS = frozenset({"tile_id", "path", "group", "split", "slide", "x", "y", "slide_x", "slide_y", "uid"})


@dataclass(frozen=True)
class TaskSpec:
    """A classification task on the tile table: how to get its labels and how to rank it."""

    name: str
    description: str
    columns: tuple[str, ...]
    labels: Callable[[pd.DataFrame], pd.Series]
    main_metric: str = "balanced_accuracy"
    positive: str | None = None  # two classes: the class PR-AUC, ECE, Brier, ROC and DeLong score (see choose_positive)
    positive_source: str = ""  # how it was chosen, in words (printed and recorded beside it)


def is_missing(v: object) -> bool:
    """True for a missing label value (None, '', NaN)."""
    return v is None or v == "" or (not isinstance(v, str) and bool(pd.isna(v)))


def column_labels(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    """The labels of a task that is one tile-table column: its values as strings, None where missing."""

    def labels(tiles: pd.DataFrame) -> pd.Series:
        return pd.Series([None if is_missing(v) else str(v) for v in tiles[name]], index=tiles.index, dtype=object)

    return labels


def available_tasks(
    tiles: pd.DataFrame, label_columns: list[str] | None = None, catalog: Mapping[str, TaskSpec] | None = None
) -> list[str]:
    """Catalogue tasks whose columns the tile table has, then every other label column of the manifest."""
    catalog = catalog or {}
    names = [t.name for t in catalog.values() if all(c in tiles for c in t.columns)]
    covered = {c for n in names for c in catalog[n].columns if len(catalog[n].columns) == 1}
    for c in label_columns or []:
        if c in tiles and c not in covered and c not in names and c not in NOT_LABELS:
            names.append(c)
    return names


def default_task(store_tasks: Sequence[str], requested: str | None = None, option: str = "--task") -> str:
    """The task a command works on (fit-head, bench, zero-shot, umap alike): ``requested`` when given, else the store's
    only task; a store with no task or several is a TaskError that names them and ``option``."""
    if requested:
        return requested
    if len(store_tasks) == 1:
        return str(store_tasks[0])
    if not store_tasks:
        raise TaskError(f"the store has no label column; name a task with {option} (a proxy task or a tile-table column)")
    raise TaskError(f"the store has several tasks ({', '.join(store_tasks)}); choose one with {option}")


def resolve_task(tiles: pd.DataFrame, name: str, catalog: Mapping[str, TaskSpec] | None = None) -> TaskSpec:
    """The catalogue task ``name`` (e.g. mito.datasets.PROXY_TASKS), or a task made from the tile-table column of that name."""
    catalog = catalog or {}
    spec = catalog.get(name)
    if spec is not None:
        missing = [c for c in spec.columns if c not in tiles]
        if not missing:
            return spec
        if name not in tiles:
            raise TaskError(f"task {name!r} needs column(s) {', '.join(missing)}, which the tile table lacks")
    if name in tiles and name not in NOT_LABELS:
        return TaskSpec(name, f"label column {name!r}", (name,), column_labels(name))
    have = [c for c in tiles.columns if c not in NOT_LABELS]
    named = f"one of {', '.join(sorted(catalog))} or " if catalog else ""
    raise TaskError(f"unknown task {name!r}: use {named}a label column ({', '.join(have)})")


def task_labels(tiles: pd.DataFrame, spec: TaskSpec, min_per_class: int = 2) -> tuple[pd.Series, list[str]]:
    """Labels aligned with the tile table (None = not in the task) and the classes, rare ones dropped."""
    y = spec.labels(tiles)
    counts = y.dropna().value_counts()
    classes = sorted(str(c) for c, n in counts.items() if n >= min_per_class)
    keep = set(classes)
    y = pd.Series([v if v in keep else None for v in y], index=y.index, dtype=object)
    if len(classes) < 2:
        raise TaskError(f"task {spec.name!r} has fewer than two classes with >= {min_per_class} labelled tiles")
    return y, classes


def group_ids(tiles: pd.DataFrame, column: str = "group") -> np.ndarray:
    """The group (slide) of each tile as a string; a tile with no group value is a group of its own.

    (pandas 3 keeps missing values as NaN through ``astype(str)``, which breaks sorting mixed with strings.)
    """
    return np.array([f"<no {column}>:{i}" if is_missing(v) else str(v) for i, v in enumerate(tiles[column].tolist())], dtype=str)


# How a two-class task's positive class was chosen (printed and recorded beside it).
POSITIVE_GIVEN = "--positive"
POSITIVE_MINORITY = "minority of the training rows"
POSITIVE_TIE = "the classes are equally frequent in the training rows: the alphabetically second"
POSITIVE_LEGACY = "not recorded (made by an older mito): the alphabetically second class, the rule it used"


def choose_positive(train_labels: Iterable[object], classes: Sequence[str], requested: str | None = None) -> tuple[str | None, str]:
    """The positive class of a task and how it was chosen: ``requested`` (--positive) when given, else the minority
    class of ``train_labels`` (ties: the alphabetically second class, the rule mito used before). Multi-class: None.

    A requested class that is not among ``classes``, or a request on a task of more than two classes, is a TaskError.
    """
    classes = [str(c) for c in classes]
    if len(classes) != 2:
        if requested is not None:
            raise TaskError(
                f"--positive {requested!r}: the task has {len(classes)} classes ({', '.join(classes)}); --positive applies to two-class tasks"
            )
        return None, ""
    if requested is not None:
        if str(requested) not in classes:
            raise TaskError(f"--positive {requested!r} is not a class of the task; its classes are {classes[0]} and {classes[1]}")
        return str(requested), POSITIVE_GIVEN
    counts = Counter(str(v) for v in train_labels if not is_missing(v))
    a, b = sorted(classes)
    if counts[a] == counts[b]:
        return b, POSITIVE_TIE
    return (a if counts[a] < counts[b] else b), POSITIVE_MINORITY


def with_positive(spec: TaskSpec, train_labels: Iterable[object], classes: Sequence[str], requested: str | None = None) -> TaskSpec:
    """``spec`` with its positive class chosen by :func:`choose_positive`."""
    positive, source = choose_positive(train_labels, classes, requested)
    return replace(spec, positive=positive, positive_source=source)


def positive_line(positive: str | None, source: str, task: str | None = None) -> str:
    """One line saying which class is positive and why, e.g. 'positive class: Atypical (minority of the training rows;
    --positive to choose)'; empty for a multi-class task."""
    if positive is None:
        return ""
    why = source if source == POSITIVE_GIVEN else f"{source}; --positive to choose"
    return (f"task {task}: " if task else "") + f"positive class: {positive} ({why})"


def recorded_positive(info: object, classes: Sequence[object] | None = None) -> tuple[str | None, str]:
    """The positive class recorded in a task's or row's metadata (``positive``, ``positive_source``), or for a folder
    written before it was recorded the class its binary metrics used: the second class (:data:`POSITIVE_LEGACY`)."""
    d = info if isinstance(info, dict) else {}
    cls = d.get("classes", classes)
    pos = d.get("positive")
    if isinstance(pos, str) and pos:
        return pos, str(d.get("positive_source") or "")
    if isinstance(cls, (list, tuple)) and len(cls) == 2:
        return str(cls[1]), POSITIVE_LEGACY
    return None, ""


def one_group_per_tile(groups: np.ndarray) -> bool:
    """True when every row is a group of its own (no slide information): a "grouped" split then splits tile by tile."""
    return len(groups) > 1 and len(np.unique(groups)) == len(groups)


def per_tile_warning(column: str = "group", option: str | None = "--group-column COL") -> str:
    """The one warning line for a split made tile by tile because every tile is its own group."""
    how = "extract from a CSV manifest with a slide column" + (f", or name a slide column with {option}" if option else "")
    return (
        f"every tile is its own {column!r} (the store has no slide information), so tiles of one slide may land on both "
        f"sides of the split and the scores may be optimistic; to keep slides together, {how}"
    )
