"""One torch training loop for heads and fine-tuning: epochs, one early-stopping rule, a time budget, checkpoints, progress.

The caller supplies "run one training epoch" and "score the validation rows" as callables; the loop keeps the
best epoch, stops on patience, time or max epochs, checkpoints everything needed to resume exactly (weights,
optimiser and every RNG state) and reports each epoch to a progress hook.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mito.core.errors import MitoError
from mito.core.io import atomic_write
from mito.heads.model import Callback

if TYPE_CHECKING:  # torch is imported where it is used: importing mito.heads must not load it
    import torch

STOP_REASONS = ("max_epochs", "early_stopping", "time_budget")


class CheckpointError(MitoError):
    """A checkpoint that cannot be read or belongs to a run with other settings."""


@dataclass
class EarlyStopping:
    """The one rule: keep the epoch with the best validation score (ties: lower validation loss); stop after
    ``patience`` epochs without such an epoch."""

    patience: int
    tol: float = 1e-9
    best_score: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    waited: int = 0

    def update(self, epoch: int, score: float, loss: float = math.nan) -> bool:
        """Record an epoch's validation score and loss; True when it is the new best."""
        better = score > self.best_score + self.tol or (abs(score - self.best_score) <= self.tol and loss < self.best_loss)
        if better:
            self.best_score, self.best_loss, self.best_epoch, self.waited = score, loss, epoch, 0
        else:
            self.waited += 1
        return bool(better)

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no new best."""
        return self.waited >= self.patience


@dataclass
class TimeBudget:
    """Training seconds allowed (``inf`` = no cap), counting seconds spent by earlier, interrupted runs."""

    seconds: float = math.inf
    spent: float = 0.0
    started: float | None = None

    def start(self) -> None:
        """Start (or restart) the clock; ``spent`` keeps what earlier runs used."""
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds used so far, earlier runs included."""
        return self.spent + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def exhausted(self) -> bool:
        """True when the budget is used up."""
        return self.elapsed() >= self.seconds

    def remaining(self) -> float:
        """Seconds left (``inf`` without a cap)."""
        return max(0.0, self.seconds - self.elapsed())


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state a training run draws from: torch (CPU and CUDA), numpy's global, python's ``random``, and named generators."""
    import torch

    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the global RandomState is MT19937, whose legacy state is a tuple
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    for k, g in (generators or {}).items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpointer:
    """Saves and restores, atomically, the model, the optimiser, every RNG state and the loop's own state.

    ``tag`` identifies the settings: a checkpoint written with another tag is refused.
    """

    path: Path
    tag: str
    get_model: Callable[[], dict[str, torch.Tensor]]
    set_model: Callable[[dict[str, torch.Tensor]], Any]
    optimizer: torch.optim.Optimizer | None = None
    generators: dict[str, torch.Generator] = field(default_factory=dict)

    def save(self, loop: dict[str, Any]) -> None:
        """Write the checkpoint (replacing the previous one in one step)."""
        import torch

        doc = {
            "tag": self.tag,
            "model": self.get_model(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "rng": rng_state(self.generators),
            "loop": loop,
        }
        atomic_write(self.path, lambda p: torch.save(doc, p), ".pt")

    def restore(self) -> dict[str, Any] | None:
        """Load the checkpoint into the model, optimiser and RNGs; the loop's saved state, or None when there is none."""
        if not self.path.is_file():
            return None
        import torch

        try:
            doc = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(doc, dict) or not {"tag", "model", "rng", "loop"} <= set(doc):
                raise ValueError("not a mito checkpoint")
        except Exception as e:  # torch raises many kinds (pickle, zip, EOF, runtime) for a damaged file
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read checkpoint {self.path} ({msg[:160]}); delete it to start over") from None
        if doc["tag"] != self.tag:
            raise CheckpointError(f"{self.path} was written by a run with other settings; use a new output folder")
        try:
            self.set_model(doc["model"])
            if self.optimizer is not None and doc.get("optimizer") is not None:
                self.optimizer.load_state_dict(doc["optimizer"])
            set_rng_state(doc["rng"], self.generators)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {self.path} does not fit this model ({str(e).splitlines()[0][:160]}); delete it to start over"
            ) from None
        return doc["loop"]


@dataclass
class LoopResult:
    """What a training loop ends with: the best epoch's weights (None = keep the last), the history and why it stopped."""

    best_state: Any
    best_epoch: int
    best_score: float
    history: list[dict[str, float]]
    stopped: str
    seconds: float

    @property
    def epochs_run(self) -> int:
        """Epochs trained, over all resumed runs."""
        return len(self.history)


def train_loop(
    run_epoch: Callable[[int], dict[str, float]],
    max_epochs: int,
    validate: Callable[[], tuple[float, float]] | None = None,
    stopping: EarlyStopping | None = None,
    snapshot: Callable[[], Any] | None = None,
    metric: str = "balanced_accuracy",
    budget: TimeBudget | None = None,
    checkpoint: Checkpointer | None = None,
    callbacks: Sequence[Callback] = (),
) -> LoopResult:
    """Train epoch by epoch until ``max_epochs``, early stopping or the time budget; resume from ``checkpoint`` when it holds one.

    ``run_epoch(epoch)`` trains one epoch and returns at least ``train_loss``; ``validate()`` returns the validation
    (score, loss); ``snapshot()`` copies the weights kept when an epoch is the new best; ``callbacks`` are told after
    every epoch (mito.heads.model.Callback).
    """
    stopping = stopping or EarlyStopping(patience=max_epochs + 1)
    budget = budget or TimeBudget()
    history: list[dict[str, float]] = []
    best_state: Any = None
    if checkpoint is not None:
        saved = checkpoint.restore()
        if saved is not None:
            history, best_state = list(saved["history"]), saved["best"]
            stopping = EarlyStopping(**saved["stopping"])
            budget.spent = float(saved["seconds"])
    budget.start()
    stopped = "max_epochs"
    while True:
        if len(history) >= max_epochs:
            stopped = "max_epochs"
            break
        if validate is not None and stopping.should_stop:
            stopped = "early_stopping"
            break
        if budget.exhausted():
            stopped = "time_budget"
            break
        epoch = len(history) + 1
        rec: dict[str, float] = {"epoch": epoch, **run_epoch(epoch)}
        rec["seconds"] = round(budget.elapsed(), 3)
        if validate is not None:
            score, loss = validate()
            rec.update({"val_loss": loss, f"val_{metric}": score})
            if stopping.update(epoch, score, loss) and snapshot is not None:
                best_state = snapshot()
        history.append(rec)
        if checkpoint is not None:
            checkpoint.save({"history": history, "best": best_state, "stopping": asdict(stopping), "seconds": budget.elapsed()})
        for cb in callbacks:
            cb.on_epoch(rec, max_epochs)
    return LoopResult(
        best_state=best_state,
        best_epoch=stopping.best_epoch if validate is not None and stopping.best_epoch else len(history),
        best_score=stopping.best_score if validate is not None else math.nan,
        history=history,
        stopped=stopped,
        seconds=budget.elapsed(),
    )


def train_best(
    net: Any,
    run_epoch: Callable[[int], dict[str, float]],
    max_epochs: int,
    patience: int,
    validate: Callable[[], tuple[float, float]] | None,
    callbacks: Sequence[Callback] = (),
) -> LoopResult:
    """train_loop for a torch network in memory: early stopping after ``patience`` epochs without a validation gain,
    then the best epoch's weights loaded back and the network left in eval mode."""
    result = train_loop(
        run_epoch,
        max_epochs,
        validate=validate,
        stopping=EarlyStopping(patience),
        snapshot=lambda: copy.deepcopy(net.state_dict()),
        callbacks=callbacks,
    )
    if result.best_state is not None:
        net.load_state_dict(result.best_state)
    net.eval()
    return result
