"""The shared training loop (mito/heads/loop.py): one early-stopping rule, time budget, checkpoints with every RNG state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mito.heads.loop import Checkpointer, CheckpointError, EarlyStopping, TimeBudget, train_loop


def test_early_stopping_one_rule_ties_broken_by_lower_loss() -> None:
    es = EarlyStopping(patience=2)
    assert es.update(1, 0.6, 0.9)
    assert es.update(2, 0.6, 0.8)  # same score, lower loss: the new best
    assert not es.update(3, 0.6, 0.85) and es.best_epoch == 2
    assert not es.update(4, 0.5, 0.1) and es.should_stop


def _net_and_opt() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    return net, torch.optim.Adam(net.parameters(), lr=0.1)


def _draws(gen: torch.Generator) -> list[float]:
    return [float(torch.rand(())), float(np.random.rand()), random.random(), float(torch.rand((), generator=gen))]


def test_checkpoint_restores_model_optimizer_and_every_rng(tmp_path: Path) -> None:
    net, opt = _net_and_opt()
    gen = torch.Generator().manual_seed(5)
    ck = Checkpointer(
        tmp_path / "c.pt", "tag", lambda: {k: v.clone() for k, v in net.state_dict().items()}, net.load_state_dict, opt, {"g": gen}
    )
    net(torch.ones(3, 4)).sum().backward()
    opt.step()
    ck.save({"history": [], "best": None})
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    expected = _draws(gen)
    torch.manual_seed(99), np.random.seed(99), random.seed(99), gen.manual_seed(99)
    with torch.no_grad():
        net.weight.zero_()
    assert ck.restore() == {"history": [], "best": None}
    assert _draws(gen) == expected
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert opt.state_dict()["state"][0]["step"] == 1


def test_damaged_or_foreign_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    net, opt = _net_and_opt()
    path = tmp_path / "c.pt"
    ck = Checkpointer(path, "a", net.state_dict, net.load_state_dict, opt)
    ck.save({"history": []})
    with pytest.raises(CheckpointError, match="other settings"):
        Checkpointer(path, "b", net.state_dict, net.load_state_dict, opt).restore()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}"):
        ck.restore()


def _fit(tmp_path: Path, max_epochs: int, budget: TimeBudget | None = None) -> tuple[list[dict], torch.nn.Module]:
    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # what a run seeds; the rest must come from the checkpoint
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(64, 4, generator=torch.Generator().manual_seed(2)), torch.arange(64) % 2

    def run_epoch(ep: int) -> dict[str, float]:
        net.train()
        total = 0.0
        for idx in torch.randperm(64, generator=gen).split(16):
            loss = torch.nn.functional.cross_entropy(net(X[idx] + torch.randn(len(idx), 4) * np.random.rand()), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return {"train_loss": total}

    def validate() -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            out = net(X)
        return float((out.argmax(1) == y).float().mean()), float(torch.nn.functional.cross_entropy(out, y))

    ck = Checkpointer(
        tmp_path / "ck.pt", "t", lambda: {k: v.clone() for k, v in net.state_dict().items()}, net.load_state_dict, opt, {"g": gen}
    )
    res = train_loop(run_epoch, max_epochs, validate, EarlyStopping(50), lambda: None, budget=budget, checkpoint=ck)
    return res.history, net


def test_resumed_loop_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    full, _ = _fit(tmp_path / "a", 4)
    _fit(tmp_path / "b", 2)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # a fresh process starts from other RNG states
    resumed, _ = _fit(tmp_path / "b", 4)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed) == strip(full)


def test_time_budget_stops_the_loop(tmp_path: Path) -> None:
    hist, _ = _fit(tmp_path, 5, TimeBudget(seconds=0.0))
    assert hist == []
    spent = TimeBudget(seconds=10.0, spent=10.0)
    assert spent.exhausted() and spent.remaining() == 0.0
