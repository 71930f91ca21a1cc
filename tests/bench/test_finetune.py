"""LoRA / full fine-tuning: real steps on the default backbone at 128 px, resumable folds, saved models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mito.bench import BenchError, FinetuneConfig, load_finetuned, run_finetune
from mito.bench.finetune import build_net, set_train_mode, train_step
from mito.core.io import artifact_kind, read_manifest


def _batch(amibr_dir: Path, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    from mito.extract import Preprocess, open_source, preprocess

    src = open_source(amibr_dir, task="mitosis")
    prep = Preprocess(input_size=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    rows = list(range(0, len(src.tiles), len(src.tiles) // n))[:n]
    x = torch.stack([preprocess(src.read(i), prep) for i in rows])
    y = torch.tensor([int(src.tiles["mitosis"].iat[i] == "Normal") for i in rows])
    return x, y


def _step(mode: str, amibr_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    net, info = build_net(FinetuneConfig(source="", out="", mode=mode), 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    set_train_mode(net, mode)
    x, y = _batch(amibr_dir)
    losses = [train_step(net, opt, x, y) for _ in range(2)]
    assert all(np.isfinite(losses))
    return before, dict(net.state_dict()), info


def test_lora_step_changes_only_adapters_and_classifier(amibr_dir: Path) -> None:
    before, after, info = _step("lora", amibr_dir)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "a step must change something"
    assert all("lora_" in k or k.startswith("head.") for k in changed), sorted(changed)[:5]
    assert {"head.weight", "head.bias"} <= changed
    assert any("lora_B" in k for k in changed) and any("lora_A" in k for k in changed)
    frozen = [k for k in before if "lora_" not in k and not k.startswith("head.")]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics stay put too
    assert info["lora"]["rank"] == 8 and info["lora"]["alpha"] == 16 and info["lora"]["dropout"] == 0.3
    assert "conv_stem" in info["lora"]["targets"] and not any("conv_dw" in t for t in info["lora"]["targets"])
    assert 0 < info["trainable_params"] < info["total_params"] / 10


def test_full_fine_tuning_changes_the_backbone(amibr_dir: Path) -> None:
    before, after, _ = _step("full", amibr_dir)
    assert not torch.equal(before["backbone.conv_stem.weight"], after["backbone.conv_stem.weight"])


def test_run_resume_save_and_predict(amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mito.bench.finetune as ft

    cfg = FinetuneConfig(
        source=str(amibr_dir),
        out=str(tmp_path / "lora"),
        n_folds=3,
        folds=1,
        max_epochs=2,
        epoch_samples=4,
        batch_size=2,
        val_samples=4,
        n_boot=50,
    )
    real_step, calls = ft.train_step, []

    def crash_in_epoch_two(*a, **kw):  # two steps per epoch: die at the first step of epoch 2
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*a, **kw)

    monkeypatch.setattr(ft, "train_step", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(cfg, progress=False)
    ckpt = tmp_path / "lora" / "fold0" / "checkpoint.pt"
    assert ckpt.is_file() and not (tmp_path / "lora" / "fold0" / "result.json").exists()
    monkeypatch.setattr(ft, "train_step", real_step)

    lb = run_finetune(cfg, progress=False)  # resumes at epoch 2
    res = json.loads((tmp_path / "lora" / "fold0" / "result.json").read_text())
    assert res["epochs"] == 2 and res["steps"] == 4 and len(res["history"]) == 2
    assert not ckpt.exists()
    row = lb.rows.iloc[0]
    assert (row["kind"], row["head"], row["features"]) == ("lora", "lora-r8", "image:rgb@128px")
    assert row["budget"].startswith("1/3 folds") and "128 px" in row["budget"]
    assert "2 epochs of 4 tiles (at most 2 epochs" in row["budget"] and " ep," not in row["budget"]  # not "2 ep, x 4 samples"
    assert row["train_seconds"] > 0 and 0 <= row["balanced_accuracy"] <= 1
    assert (tmp_path / "lora" / "leaderboard.csv").is_file()

    model_dir = tmp_path / "lora" / "fold0" / "model"
    assert artifact_kind(model_dir) == ("finetuned-model", "tile") and artifact_kind(tmp_path) == (None, None)
    assert artifact_kind(tmp_path / "lora") == ("lora-run", "tile") and read_manifest(tmp_path / "lora")["kind"] == "lora-run"
    assert read_manifest(model_dir)["files"] == ["config.json", "model.safetensors"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["kind"] == "finetuned" and config["classes"] == ["Atypical", "Normal"]
    model = load_finetuned(model_dir)
    from mito.heads import Model, lookup

    assert isinstance(model, Model) and model.level == "image" and model.name == "lora-r8"  # the one model contract
    assert lookup("image", "finetuned") is type(model)
    from mito.extract import open_source

    src = open_source(amibr_dir, task="mitosis")
    test_rows = np.flatnonzero(src.tiles["split"].to_numpy() == "test")
    proba = model.predict_proba([src.read(int(i)) for i in test_rows])
    with np.load(tmp_path / "lora" / "fold0" / "result.npz") as z:
        np.testing.assert_allclose(proba, z["proba"], atol=1e-5)  # the saved model is the scored model

    from mito.bench import predict_finetuned

    new = tmp_path / "new"  # unseen images in a plain folder (no metadata CSV)
    picks = [Path(p) for p in src.tiles["path"].iloc[test_rows[:3]]]
    for p in picks:
        (new / p.parent.name).mkdir(parents=True, exist_ok=True)
        (new / p.parent.name / p.name).write_bytes(p.read_bytes())
    df = predict_finetuned(model_dir, new, out_csv=tmp_path / "pred.csv", device="cpu")
    assert list(df.columns) == ["path", "label", "pred", "p_Atypical", "p_Normal"] and len(df) == 3
    assert (tmp_path / "pred.csv").is_file()
    got = df.set_index(df["path"].map(lambda p: Path(p).name)).loc[[p.name for p in picks], ["p_Atypical", "p_Normal"]].to_numpy()
    np.testing.assert_allclose(got, proba[:3], atol=1e-5)
    from typer.testing import CliRunner

    from mito.cli import app

    r = CliRunner().invoke(app, ["predict", str(new), "--model", str(model_dir), "--out", str(tmp_path / "cli.csv"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "3 tiles predicted" in r.output and len(pd.read_csv(tmp_path / "cli.csv")) == 3
    written = [v for line in (tmp_path / "cli.csv").read_text().splitlines()[1:] for v in line.split(",")[-2:]]
    assert all(len(v.split("e")[0].replace(".", "").lstrip("0")) <= 6 for v in written), written  # 6 significant digits, as for heads
    r = CliRunner().invoke(
        app, ["predict", "--model", str(model_dir), "--store", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "y.csv")]
    )
    assert r.exit_code == 2 and "fine-tuned model" in r.output

    mtime = (tmp_path / "lora" / "fold0" / "result.json").stat().st_mtime
    again = run_finetune(cfg, progress=False)  # a finished fold is skipped
    assert (tmp_path / "lora" / "fold0" / "result.json").stat().st_mtime == mtime
    assert again.rows.iloc[0]["balanced_accuracy"] == row["balanced_accuracy"]
    with pytest.raises(BenchError, match="other settings"):
        run_finetune(FinetuneConfig(**{**cfg.__dict__, "lr": 1e-3}), progress=False)
