"""mito lora: resume after a crash equals an uninterrupted run, CPU budget defaults, budget flags, damaged run files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mito.bench import BenchError, FinetuneConfig, load_finetuned, run_finetune
from mito.bench.finetune import CPU_DEFAULT_MINUTES, bar_total
from mito.cli import app

runner = CliRunner()


def _cfg(amibr_dir: Path, out: Path, **kw: object) -> FinetuneConfig:
    base = dict(
        source=str(amibr_dir),
        out=str(out),
        n_folds=3,
        folds=1,
        max_epochs=3,
        patience=10,
        epoch_samples=4,
        batch_size=2,
        val_samples=4,
        input_size=64,
        n_boot=0,
        device="cpu",
    )
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def uninterrupted(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("lora") / "a"
    lb = run_finetune(_cfg(amibr_dir, out), progress=False)
    return out, lb


def _losses(out: Path) -> list[tuple[float, float, float]]:
    hist = json.loads((out / "fold0" / "result.json").read_text())["history"]
    return [(h["train_loss"], h["val_loss"], h["val_balanced_accuracy"]) for h in hist]


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    amibr_dir: Path, uninterrupted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mito.bench.finetune as ft

    ref, _ = uninterrupted
    out = tmp_path / "b"
    real, calls = ft.train_step, []

    def die_in_epoch_three(*a: object, **kw: object) -> float:  # two steps an epoch: the 5th step is epoch 3's first
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(ft, "train_step", die_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(_cfg(amibr_dir, out), progress=False)
    saved = torch.load(out / "fold0" / "checkpoint.pt", weights_only=True)
    assert len(saved["loop"]["history"]) == 2  # the checkpoint after epoch 2 is the real resume point
    monkeypatch.setattr(ft, "train_step", real)
    torch.manual_seed(777), np.random.seed(777), random.seed(777)  # a new process starts from other RNG states
    run_finetune(_cfg(amibr_dir, out), progress=False)
    assert len(_losses(out)) == 3
    assert _losses(out) == _losses(ref)  # exactly: epoch 3 draws the same batches, augmentations and dropout


def test_cpu_runs_get_a_default_budget_said_in_the_budget_column(uninterrupted) -> None:
    _, lb = uninterrupted
    budget = lb.rows.iloc[0]["budget"]
    assert f"cap {CPU_DEFAULT_MINUTES:g} min/fold (CPU default" in budget


def test_the_bar_counts_to_what_the_binding_budget_allows() -> None:
    assert bar_total(5, 200, 1.0, float("inf")) == 200  # no time cap: every epoch's steps
    assert bar_total(5, 200, 12.0, 55.0) == 9  # a 1-minute cap at 12 s a step binds: 4 more steps, not 195
    assert bar_total(5, 200, 0.01, 3600.0) == 200  # a loose cap does not


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_non_positive_max_minutes_is_refused_in_one_line(amibr_dir: Path, tmp_path: Path, minutes: str) -> None:
    r = runner.invoke(app, ["lora", str(amibr_dir), "--out", str(tmp_path / "o"), "--max-minutes", minutes])
    assert r.exit_code == 2 and "--max-minutes" in r.output and "Traceback" not in r.output, r.output
    assert len([x for x in r.output.splitlines() if x.strip()]) == 1, r.output
    assert not (tmp_path / "o").exists()


def test_unknown_finetune_settings_are_refused() -> None:
    with pytest.raises(Exception, match="extra"):
        FinetuneConfig(source="s", out="o", rank_typo=4)


def test_damaged_run_files_are_refused_naming_the_file(amibr_dir: Path, uninterrupted, tmp_path: Path) -> None:
    ref, _ = uninterrupted
    d = tmp_path / "c"
    shutil.copytree(ref, d)
    npz = d / "fold0" / "result.npz"
    npz.write_bytes(npz.read_bytes()[:50])
    with pytest.raises(BenchError, match=f"cannot read {npz}"):
        run_finetune(_cfg(amibr_dir, d), progress=False)
    weights = d / "fold0" / "model" / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(BenchError, match=f"cannot read {weights}"):
        load_finetuned(d / "fold0" / "model")
    e = tmp_path / "e"
    (e / "fold0").mkdir(parents=True)
    (e / "fold0" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(BenchError, match=f"cannot read checkpoint {e / 'fold0' / 'checkpoint.pt'}"):
        run_finetune(_cfg(amibr_dir, e), progress=False)
