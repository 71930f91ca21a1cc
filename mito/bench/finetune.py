"""Fine-tuning baselines on the images themselves (LoRA via peft, linear probe, full), on the leaderboard's folds.

A run writes, under ``out``: ``fold<k>/checkpoint.pt`` (resumable, replaced atomically each epoch),
``fold<k>/result.npz`` + ``fold<k>/result.json`` (a finished fold, skipped on re-run), ``fold<k>/model/``
(``config.json`` with ``"kind": "finetuned"`` + ``model.safetensors``), and the leaderboard files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd
import torch
from pydantic import ConfigDict, Field
from torch import nn

from mito.backbones import create_backbone, get_backbone
from mito.bench.cv import CVMode, Fold
from mito.bench.errors import BenchError
from mito.bench.leaderboard import Leaderboard, positive_meta, rank_rows, save_leaderboard, task_plan
from mito.bench.rows import row_id, score_row
from mito.core.artifacts import register_loader
from mito.core.errors import TaskError
from mito.core.io import RUN_KINDS, atomic_write, check_output_dir, csv_probabilities, is_artifact, write_manifest, write_npz
from mito.core.metrics import metric_score, positive_index
from mito.core.progress import add_task, advance, progress_bar
from mito.core.sections import FoldsSection, PositiveSection
from mito.core.tasks import resolve_task
from mito.core.version import __version__
from mito.datasets import PROXY_TASKS
from mito.extract import Preprocess, open_source, pick_device, preprocess
from mito.heads import Checkpointer, CheckpointError, EarlyStopping, LoopResult, TimeBudget, fit_and_score, train_loop
from mito.heads.engine import Prepared, keep_order
from mito.heads.model import register
from mito.heads.torch_heads import optimizer_step

FTMode = Literal["lora", "linear-probe", "full"]
FT_MODES: tuple[str, ...] = get_args(FTMode)
MODEL_KIND = "finetuned"


CPU_DEFAULT_MINUTES = 10.0  # a CPU fold without --max-minutes stops here (100 LoRA epochs would take hours)


class FinetuneConfig(PositiveSection, FoldsSection):
    """A fine-tuning run: backbone, mode, LoRA and optimiser settings, and the budget per fold (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="The tiles: an ImageFolder folder or CSV manifest (the store's source).", examples=["tiles/"])
    out: str = Field(description="Run folder: checkpoints (resumable), fold models, leaderboard files.", examples=["runs/lora"])
    backbone: str = Field("efficientnet_lite0", description="Backbone to fine-tune.")
    task: str = Field("mitosis", description="Task: a proxy task or label column, as in mito bench.")
    mode: FTMode = Field("lora", description="lora (adapters + linear classifier), linear-probe (frozen backbone) or full.")
    weights: str | None = Field(None, description="Backbone weight file or folder (default: resolved as mito extract does).")
    label_name: str | None = Field(None, description="Name the folder labels got at extraction (mito extract --task).")
    rank: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.3, ge=0, lt=1, description="LoRA dropout.")
    targets: list[str] | None = Field(None, description="Layer names (suffixes) to adapt (default: every linear layer or conv).")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="Adam weight decay.")
    batch_size: int = Field(32, ge=1, description="Batch size.")
    max_epochs: int = Field(100, ge=1, description="Maximum epochs per fold.")
    patience: int = Field(15, ge=1, description="Epochs without validation gain before stopping.")
    epoch_samples: int | None = Field(None, ge=1, description="Tiles drawn (class-balanced) per epoch (default: the training-set size).")
    val_samples: int | None = Field(None, ge=1, description="Score early stopping on at most this many validation tiles.")
    input_size: int | None = Field(None, ge=8, le=4096, description="Input pixels (default: the crops' native size).")
    folds: int | None = Field(None, ge=1, description="Train only the first N folds (a budget).")
    cv: CVMode = Field("auto", description="auto, kfold or split, as in mito bench.")
    max_minutes: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Training-time cap per fold in minutes (default: 10 on CPU, none on GPU)."
    )
    augment: bool = Field(True, description="Flips, 90-degree rotations and mild colour jitter.")
    device: str = Field("auto", description="auto, cpu or cuda.")
    num_workers: int | None = Field(None, ge=0, le=256, description="Image-decoding workers (default: 0 on CPU, up to 8 on GPU).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Extra settings recorded with the run.")


def time_cap_minutes(cfg: FinetuneConfig, device: torch.device) -> tuple[float | None, bool]:
    """The training-time cap per fold in minutes (None = none) and whether it is the CPU default."""
    if cfg.max_minutes is not None:
        return cfg.max_minutes, False
    if device.type == "cpu":
        return CPU_DEFAULT_MINUTES, True
    return None, False


def head_name(cfg: FinetuneConfig) -> str:
    """The leaderboard's head label for a run: ``lora-r8``, ``linear-probe`` or ``full-ft``."""
    return {"lora": f"lora-r{cfg.rank}", "linear-probe": "linear-probe", "full": "full-ft"}[cfg.mode]


def _config_hash(cfg: FinetuneConfig) -> str:
    """Hash of everything that changes what a fold computes (not the budget knobs that only stop it earlier, nor the
    positive class, which only scores the saved predictions: early stopping is on the task's balanced accuracy)."""
    keep = {
        k: v
        for k, v in cfg.model_dump().items()
        if k not in ("out", "folds", "max_minutes", "max_epochs", "device", "num_workers", "n_boot", "positive")
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the network
class FinetuneNet(nn.Module):
    """A backbone's pooled embedding followed by a linear classifier."""

    def __init__(self, encoder: Any, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = encoder.model
        self.head = nn.Linear(encoder.spec.embed_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.embed(x))


def default_targets(model: nn.Module, family: str) -> list[str]:
    """LoRA targets: every linear layer (attention and MLP projections) for ViTs; every non-grouped conv for CNNs."""
    if family == "vit":
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]


def _resolve_targets(model: nn.Module, family: str, targets: Sequence[str] | None) -> list[str]:
    if not targets:
        found = default_targets(model, family)
    else:
        names = [n for n, _ in model.named_modules()]
        found = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    if not found:
        raise BenchError(f"no LoRA target layers found (asked for: {', '.join(targets or ['default'])})")
    return found


def build_net(cfg: FinetuneConfig, n_classes: int, device: torch.device | str = "cpu") -> tuple[FinetuneNet, dict[str, Any]]:
    """The backbone (with LoRA adapters, frozen, or trainable per ``cfg.mode``) plus a fresh linear classifier."""
    if cfg.mode not in FT_MODES:
        raise BenchError(f"mode must be one of {', '.join(FT_MODES)}, not {cfg.mode!r}")
    torch.manual_seed(cfg.seed)
    enc = create_backbone(cfg.backbone, weights=cfg.weights)
    info: dict[str, Any] = {"backbone": cfg.backbone, "weights_sha256": enc.weights_sha256, "family": enc.spec.family}
    if cfg.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        targets = _resolve_targets(enc.model, enc.spec.family, cfg.targets)
        lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)
        inject_adapter_in_model(lcfg, enc.model)
        for n, p in enc.model.named_parameters():
            p.requires_grad_("lora_" in n)
        info["lora"] = {"rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "targets": targets}
    elif cfg.mode == "full":
        enc.model.requires_grad_(True)
    net = FinetuneNet(enc, n_classes).to(device)
    info["trainable_params"] = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    info["total_params"] = int(sum(p.numel() for p in net.parameters()))
    return net, info


def set_train_mode(net: FinetuneNet, mode: str) -> None:
    """Training mode, except that a frozen backbone keeps its BatchNorm statistics fixed."""
    net.train()
    if mode != "full":
        for m in net.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def trainable_state(net: FinetuneNet, mode: str) -> dict[str, torch.Tensor]:
    """What a checkpoint and a saved model need: the adapters + classifier, or everything for full fine-tuning."""
    if mode == "full":
        return {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    return {k: v.detach().clone().cpu() for k, v in net.state_dict().items() if k in names}


def train_step(net: FinetuneNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: bool = False) -> float:
    """One optimiser step on a batch; returns the loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy(net(x).float(), y)
    return optimizer_step(opt, loss)


@contextlib.contextmanager
def merged_adapters(net: nn.Module) -> Iterator[None]:
    """Fold LoRA weights into their base layers for inference (the unmerged extra convs are slow on CPU), then undo it."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in net.modules() if isinstance(m, LoraLayer) and not m.merged]
    # unmerge() subtracts the adapter again, which leaves rounding error in the frozen weights after every validation,
    # so a resumed run (fresh frozen weights) would drift from an uninterrupted one: restore the exact weights instead
    base = [{k: v.detach().clone() for k, v in m.get_base_layer().state_dict().items()} for m in layers]
    for m in layers:
        m.merge()
    try:
        yield
    finally:
        for m, state in zip(layers, base):
            m.unmerge()
            m.get_base_layer().load_state_dict(state)


@torch.no_grad()
def predict_batches(net: FinetuneNet, loader: Any, device: torch.device, amp: bool = False) -> np.ndarray:
    """Softmax probabilities for every batch of a loader (net in eval mode, LoRA adapters merged meanwhile)."""
    net.eval()
    out = []
    with merged_adapters(net):
        for x, _ in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x.to(device, non_blocking=True)).float()
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.head.out_features))


# ------------------------------------------------------------------ data
class Crops(torch.utils.data.Dataset):
    """Tiles of a source as (normalised tensor, class index), with flips, 90° rotations and mild colour jitter."""

    def __init__(self, source: Any, rows: np.ndarray, targets: np.ndarray, prep: Any, augment: bool) -> None:
        from torchvision.transforms import v2

        self.source, self.rows, self.targets, self.prep, self.augment = source, rows, targets, prep, augment
        self.jitter = v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.source.read(int(self.rows[i]))
        if self.augment:
            img = self.jitter(torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        x = preprocess(img, self.prep)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(2)
            if torch.rand(()) < 0.5:
                x = x.flip(1)
            x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(1, 2))
        return x.contiguous(), int(self.targets[i])


def _loader(ds: Crops, batch: int, workers: int, sampler: Any = None) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, shuffle=False, num_workers=workers, persistent_workers=False)


# ------------------------------------------------------------------ one fold
def _save_model(
    path: Path, net: FinetuneNet, cfg: FinetuneConfig, info: dict[str, Any], classes: list[str], prep: Any, extra: dict[str, Any]
) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in trainable_state(net, cfg.mode).items()}
    atomic_write(path / "model.safetensors", lambda p: save_file(state, p), ".safetensors")
    config = {
        "kind": MODEL_KIND,
        "mito_version": __version__,
        "mode": cfg.mode,
        "head": head_name(cfg),
        "task": cfg.task,
        "classes": classes,
        "backbone": cfg.backbone,
        "weights_sha256": info["weights_sha256"],
        "lora": info.get("lora"),
        "preprocess": prep.as_dict(),
        "weights_file": "model.safetensors",
        "config_hash": _config_hash(cfg),
        **extra,
    }
    atomic_write(path / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=1)), ".json")
    write_manifest(path, "finetuned-model", "tile", head=config["head"], mode=cfg.mode)


def bar_total(done: int, epoch_steps: int, seconds_per_step: float, seconds_left: float) -> int:
    """Steps a fold's bar counts to: all epochs' steps, or fewer when the time cap will stop it first (so the ETA is the cap's)."""
    if not math.isfinite(seconds_left):
        return max(epoch_steps, done)
    return max(done, min(epoch_steps, done + int(seconds_left / max(seconds_per_step, 1e-9))))


def _read_result(fold_dir: Path, cfg: FinetuneConfig) -> dict[str, Any] | None:
    """A finished fold's result (None when the fold is not finished); a damaged or foreign one is refused naming the file."""
    done_json = fold_dir / "result.json"
    if not done_json.is_file():
        return None
    try:
        res = json.loads(done_json.read_text())
        if not isinstance(res, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read {done_json} ({str(e).splitlines()[0]}); delete the fold folder to redo it") from None
    if res.get("config_hash") != _config_hash(cfg):
        raise BenchError(f"{fold_dir} holds a fold of a different run (other settings); use a new --out")
    npz = fold_dir / "result.npz"
    try:
        with np.load(npz, allow_pickle=False) as z:
            res["proba"] = np.asarray(z["proba"], dtype=np.float64)
    except Exception as e:  # numpy/zipfile raise many kinds for a truncated file
        raise BenchError(
            f"cannot read {npz} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'damaged'}); delete the fold folder to redo it"
        ) from None
    return res


@dataclass(frozen=True)
class ImageSet:
    """Images through a backbone as a fine-tuned model's X (mito.heads.model.Model, mito.heads.engine): tiles of a
    source (``rows``; None: every tile), their class indices ``targets`` (one per source tile) and the preprocessing."""

    source: Any
    targets: np.ndarray
    prep: Any
    rows: np.ndarray | None = None
    augment: bool = False

    @property
    def index(self) -> np.ndarray:
        """The chosen tiles."""
        return np.arange(len(self.targets)) if self.rows is None else np.asarray(self.rows, dtype=np.int64)

    def crops(self, augment: bool | None = None) -> Crops:
        """The chosen tiles as a torch Dataset (augmented when training)."""
        idx = self.index
        return Crops(self.source, idx, self.targets[idx], self.prep, self.augment if augment is None else augment)

    def take(self, rows: np.ndarray, augment: bool = False) -> ImageSet:
        """Other tiles of the same source."""
        return ImageSet(self.source, self.targets, self.prep, np.asarray(rows, dtype=np.int64), augment)

    def prepare(self, model: Any, parts: Mapping[str, np.ndarray]) -> Prepared:
        """The engine's inputs: the training tiles augmented (as the run asks), val and test tiles as they are; only the
        test tiles are scored after training (validation already scored every epoch, and a pass costs minutes)."""
        score = {"test": (self.take(parts["test"]), self.targets[parts["test"]], keep_order)} if len(parts["test"]) else {}
        eval_set = self.take(parts["val"]) if len(parts["val"]) else None
        return Prepared(self.take(parts["train"], self.augment), None, eval_set, None, score)


class FoldBar:
    """A fit callback moving a fold's progress bar step by step (its total follows the time cap when that binds)."""

    def __init__(self, progress: Any, label: str) -> None:
        self.progress, self.task, self.t0, self.steps = progress, add_task(progress, label, None), 0.0, 0

    def on_step(self, done: int, total: int) -> None:
        """A training step ended: ``done`` steps of at most ``total``."""
        if self.steps == 0:
            self.t0 = time.perf_counter()
        self.steps += 1
        self.progress.update(self.task, completed=done, total=total)
        advance(self.progress, self.task, 0, self.t0, self.steps)

    def on_epoch(self, metrics: dict[str, float], max_epochs: int) -> None:
        """Nothing more per epoch (the steps moved the bar)."""


def _val_rows(cfg: FinetuneConfig, fold: Fold) -> np.ndarray:
    """The fold's validation tiles, at most ``cfg.val_samples`` of them (a seeded sample)."""
    if cfg.val_samples and len(fold.val) > cfg.val_samples:
        return np.sort(np.random.default_rng(cfg.seed + fold.index).choice(fold.val, cfg.val_samples, replace=False))
    return fold.val


def _run_fold(
    cfg: FinetuneConfig,
    source: Any,
    fold: Fold,
    yi: np.ndarray,
    classes: list[str],
    prep: Any,
    device: torch.device,
    fold_dir: Path,
    progress: Any,
    main: str = "balanced_accuracy",
    cap_minutes: float | None = None,
    positive: int = 1,
) -> dict[str, Any]:
    """Train (resuming from a checkpoint), early-stop on the fold's val set, score its test set, save the model: the
    engine (mito.heads.engine.fit_and_score) on the fold's images."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    done = _read_result(fold_dir, cfg)
    if done is not None:
        return done
    model = FinetunedModel.create(cfg, classes, device, fold.index, fold_dir / "checkpoint.pt", cap_minutes, main, positive)
    split = {"train": fold.train, "val": _val_rows(cfg, fold), "test": fold.test}
    label = f"fold {fold.index}" + (f" (cap {cap_minutes:g} min)" if cap_minutes else "")
    try:
        fitted = fit_and_score(model, ImageSet(source, yi, prep, augment=cfg.augment), split, callbacks=[FoldBar(progress, label)])
    except CheckpointError as e:
        raise BenchError(str(e)) from None
    result, info = model.result_, model.info
    assert result is not None
    res = {
        "fold": fold.index,
        "train_seconds": result.seconds,
        "predict_seconds": fitted.predict_seconds,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "steps": int(sum(h.get("steps", 0) for h in result.history)),
        "samples_seen": int(sum(h.get("samples", 0) for h in result.history)),
        "stopped": result.stopped,
        "best_val_score": result.best_score,
        "history": result.history,
        "config_hash": _config_hash(cfg),
        "params": {k: v for k, v in info.items() if k != "lora"}
        | ({"lora_targets": len(info["lora"]["targets"])} if info.get("lora") else {}),
        "device": str(device),
    }
    model.config["trained"] = {k: res[k] for k in ("epochs", "steps", "stopped", "train_seconds")}
    model.save(fold_dir / "model")
    proba = fitted.scored["test"][1]
    write_npz(fold_dir / "result.npz", {"proba": proba}, compressed=False)
    atomic_write(fold_dir / "result.json", lambda p: Path(p).write_text(json.dumps(res, indent=1, default=float)), ".json")
    (fold_dir / "checkpoint.pt").unlink(missing_ok=True)
    res["proba"] = proba
    return res


# ------------------------------------------------------------------ the run
def _budget(
    cfg: FinetuneConfig,
    results: Sequence[dict[str, Any]],
    n_total: int,
    input_size: int,
    n_train: int,
    cap_minutes: float | None = None,
    cpu_default: bool = False,
) -> str:
    parts = [f"{len(results)}/{n_total} folds"]
    eps = [r["epochs"] for r in results]
    per_epoch = cfg.epoch_samples or n_train

    def epochs(n: Any) -> str:
        return f"{n} epoch" + ("" if n == 1 else "s")

    ran = f"{min(eps)}-{max(eps)} epochs" if eps and min(eps) != max(eps) else epochs(eps[0] if eps else 0)
    parts.append(f"{ran} of {per_epoch} tiles (at most {epochs(cfg.max_epochs)}; stops after {cfg.patience} without a validation gain)")
    if cap_minutes:
        parts.append(f"cap {cap_minutes:g} min/fold" + (" (CPU default; --max-minutes to change)" if cpu_default else ""))
    parts.append(f"{input_size} px")
    if cfg.val_samples:
        parts.append(f"validation on at most {cfg.val_samples} tiles")
    stops = sorted({r["stopped"] for r in results})
    parts.append("stopped: " + "/".join(stops))
    return ", ".join(parts)


def open_tiles(cfg: FinetuneConfig) -> Any:
    """The tile source with its label column named as ``mito extract --task`` named it (so the folds match)."""
    label = cfg.label_name or ("mitosis" if cfg.task in PROXY_TASKS else cfg.task)
    return open_source(cfg.source, task=label)


def run_finetune(cfg: FinetuneConfig, progress: bool = True, note: Callable[[str], None] | None = None) -> Leaderboard:
    """Fine-tune on each fold (resuming finished work), score like the heads, and write a leaderboard in ``cfg.out``;
    ``note`` is told, before training, when a CPU run stops each fold at the default time cap."""
    check_output_dir(cfg.out, overwrite=True, is_ours=lambda p: is_artifact(p, *RUN_KINDS), protect=(cfg.source,), what="run folder")
    src = open_tiles(cfg)
    tiles = src.tiles
    spec_task, y, classes, plan = task_plan(tiles, cfg.task, cfg.n_folds, cfg.cv, cfg.seed, None, cfg.positive)
    pos = positive_index(classes, spec_task.positive) if spec_task.positive is not None else 1
    yi = np.array([classes.index(v) if v is not None else -1 for v in y])
    spec = get_backbone(cfg.backbone)
    size = cfg.input_size or int(min(src.read(int(plan.folds[0].train[0])).shape[:2]))
    prep = Preprocess(input_size=size, mean=(*spec.mean,), std=(*spec.std,))
    device = pick_device(cfg.device)
    cap, cpu_default = time_cap_minutes(cfg, device)
    if cpu_default and note is not None:
        note(f"training on CPU: each fold stops after {cap:g} minutes (pass --max-minutes to change)")
    folds = plan.folds[: cfg.folds] if cfg.folds else plan.folds
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with progress_bar(unit="steps", enabled=progress) as bar:
        for f in folds:
            try:
                results.append(
                    _run_fold(cfg, src, f, yi, classes, prep, device, out / f"fold{f.index}", bar, spec_task.main_metric, cap, pos)
                )
            except OSError as e:
                if e.filename is not None and Path(str(e.filename)).is_relative_to(out):
                    raise
                raise BenchError(f"cannot read a tile: {str(e).splitlines()[0]}") from None
    base = _base_row(cfg, results, len(plan.folds), folds, size, out, cap, cpu_default)
    row, arrays = score_row(base, spec_task, plan, y, classes, results, folds, cfg.n_boot, cfg.seed)
    meta = {
        "source": str(cfg.out),
        "tasks": {
            cfg.task: {
                "description": spec_task.description,
                "main_metric": spec_task.main_metric,
                "classes": classes,
                **positive_meta(spec_task),
                "cv": plan.mode,
                "cv_description": plan.description,
                "n_folds": len(plan.folds),
                "fold_fingerprint": plan.fingerprint,
            }
        },
        "finetune": {**cfg.model_dump(), "config_hash": _config_hash(cfg)},
    }
    lb = Leaderboard(rank_rows(pd.DataFrame([row])), {base["row_id"]: arrays}, meta)
    save_leaderboard(lb, out)
    return lb


def _base_row(
    cfg: FinetuneConfig,
    results: Sequence[dict[str, Any]],
    n_folds: int,
    folds: Sequence[Fold],
    size: int,
    out: Path,
    cap: float | None,
    cpu_default: bool,
) -> dict[str, Any]:
    """The leaderboard row's description of the run (score_row adds the scores): what was tuned, how, on what budget."""
    features = f"image:rgb@{size}px"
    lora = cfg.mode == "lora"
    params = {
        **results[0]["params"],
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size,
        **{k: getattr(cfg, k) if lora else None for k in ("rank", "alpha", "dropout")},
        "device": results[0]["device"],
    }
    return {
        "task": cfg.task,
        "backbone": cfg.backbone,
        "features": features,
        "head": head_name(cfg),
        "noise": 0.0,
        "kind": cfg.mode,
        "budget": _budget(cfg, results, n_folds, size, int(np.mean([len(f.train) for f in folds])), cap, cpu_default),
        "params": json.dumps(params, sort_keys=True),
        "row_id": row_id(cfg.task, cfg.backbone, features, head_name(cfg), 0.0, extra=_config_hash(cfg)),
        "samples_seen": float(np.mean([r.get("samples_seen", 0) for r in results])),
        "models": [str(out / f"fold{f.index}" / "model") for f in folds],
    }


# ------------------------------------------------------------------ using a fine-tuned model
@register("image", "finetuned")
@dataclass
class FinetunedModel:
    """A fine-tuned backbone plus classifier (the one model contract, level "image"): ``fit`` trains it on an ImageSet
    (resumable through ``checkpoint``, stopped by ``cap_minutes``), ``predict_proba`` takes an ImageSet or uint8
    HxWx3 images; columns follow ``classes_``."""

    net: FinetuneNet | None
    classes_: list[str]
    prep: Any
    config: dict[str, Any]
    device: torch.device
    cfg: FinetuneConfig | None = None  # how to train (None: a loaded model)
    fold: int = 0
    checkpoint: Path | None = None
    cap_minutes: float | None = None
    main: str = "balanced_accuracy"
    positive: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    result_: LoopResult | None = None
    level: ClassVar[str] = "image"

    @property
    def name(self) -> str:
        """The leaderboard's head label: lora-r8, linear-probe or full-ft."""
        return str(self.config.get("head") or (head_name(self.cfg) if self.cfg is not None else "finetuned"))

    @classmethod
    def create(
        cls,
        cfg: FinetuneConfig,
        classes: list[str],
        device: torch.device,
        fold: int = 0,
        checkpoint: Path | None = None,
        cap_minutes: float | None = None,
        main: str = "balanced_accuracy",
        positive: int = 1,
    ) -> FinetunedModel:
        """An untrained model for ``cfg`` (its network is built when fit starts)."""
        return cls(None, list(classes), None, {"fold": fold}, device, cfg, fold, checkpoint, cap_minutes, main, positive)

    def get_params(self) -> dict[str, Any]:
        """The run settings (FinetuneConfig) this model trains with."""
        return self.cfg.model_dump() if self.cfg is not None else {}

    def _workers(self) -> int:
        amp = self.device.type == "cuda"
        n = self.cfg.num_workers if self.cfg is not None else None
        return n if n is not None else (min(8, os.cpu_count() or 1) if amp else 0)

    def fit(
        self, X: ImageSet, y: Any = None, *, eval_set: ImageSet | None = None, views: Any = None, callbacks: Sequence[Any] = ()
    ) -> FinetunedModel:
        """Train on the tiles of ``X`` (their targets are y), early-stopping on ``eval_set``; callbacks get on_epoch and,
        when they have it, on_step(done, total)."""
        if self.cfg is None:
            raise BenchError("a loaded fine-tuned model is not trained again; run mito lora")
        cfg, device = self.cfg, self.device
        net, self.info = build_net(cfg, len(self.classes_), device)
        self.net, self.prep = net, X.prep
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed + 1000 * self.fold)
        train_dl = self._train_loader(X, gen)
        budget = TimeBudget(self.cap_minutes * 60 if self.cap_minutes else math.inf)
        ckpt = None
        if self.checkpoint is not None:
            get, put = (lambda: trainable_state(net, cfg.mode)), (lambda st: net.load_state_dict(st, strict=False))
            ckpt = Checkpointer(self.checkpoint, _config_hash(cfg), get, put, optimizer=opt, generators={"sampler": gen})
        result = train_loop(
            self._epoch_runner(net, opt, train_dl, budget, callbacks),
            cfg.max_epochs,
            validate=self._validator(net, eval_set) if eval_set is not None else None,
            stopping=EarlyStopping(cfg.patience),
            snapshot=lambda: trainable_state(net, cfg.mode),
            metric=self.main,
            budget=budget,
            checkpoint=ckpt,
            callbacks=callbacks,
        )
        if result.best_state is not None:
            net.load_state_dict(result.best_state, strict=False)
        self.result_ = result
        return self

    def _train_loader(self, X: ImageSet, gen: torch.Generator) -> torch.utils.data.DataLoader:
        """Class-balanced sampling with replacement, ``epoch_samples`` tiles an epoch (default: as many as X has)."""
        assert self.cfg is not None
        y = X.targets[X.index]
        counts = np.bincount(y, minlength=len(self.classes_)).astype(np.float64)
        weights = 1.0 / np.maximum(counts[y], 1.0)
        n_epoch = self.cfg.epoch_samples or len(y)
        # a list, as torch's stub types it (the sampler makes the same float64 tensor of it)
        sampler = torch.utils.data.WeightedRandomSampler(weights.tolist(), n_epoch, replacement=True, generator=gen)
        return _loader(X.crops(), self.cfg.batch_size, self._workers(), sampler)

    def _epoch_runner(
        self, net: FinetuneNet, opt: torch.optim.Optimizer, train_dl: Any, budget: TimeBudget, callbacks: Sequence[Any]
    ) -> Callable[[int], dict[str, float]]:
        """One epoch of optimiser steps (stopping mid-epoch when the time cap is reached), telling on_step callbacks."""
        assert self.cfg is not None
        cfg, device, amp = self.cfg, self.device, self.device.type == "cuda"
        per_epoch, stepped = len(train_dl), [cb for cb in callbacks if hasattr(cb, "on_step")]
        run = {"steps": 0.0, "spent0": -1.0}  # steps taken in this process; budget spent before its first epoch

        def run_epoch(epoch: int) -> dict[str, float]:
            if run["spent0"] < 0:
                run["spent0"] = budget.spent
            set_train_mode(net, cfg.mode)
            losses, seen = [], 0
            for x, yb in train_dl:
                losses.append(train_step(net, opt, x.to(device, non_blocking=True), yb.to(device), amp))
                seen += len(yb)
                run["steps"] += 1
                done = (epoch - 1) * per_epoch + len(losses)
                per_step = (budget.elapsed() - run["spent0"]) / run["steps"]
                for cb in stepped:
                    cb.on_step(done, bar_total(done, cfg.max_epochs * per_epoch, per_step, budget.remaining()))
                if budget.exhausted():
                    break
            return {"train_loss": float(np.mean(losses)) if losses else math.nan, "steps": len(losses), "samples": seen}

        return run_epoch

    def _validator(self, net: FinetuneNet, val: ImageSet) -> Callable[[], tuple[float, float]]:
        """The early-stopping score (the task's main metric) and loss on the validation tiles."""
        assert self.cfg is not None
        amp, yv = self.device.type == "cuda", val.targets[val.index]
        val_dl = _loader(val.crops(False), self.cfg.batch_size * 2, self._workers())

        def validate() -> tuple[float, float]:
            pv = predict_batches(net, val_dl, self.device, amp)
            loss = float(-np.mean(np.log(np.clip(pv[np.arange(len(yv)), yv], 1e-12, None))))
            return metric_score(self.main, yv, pv, self.positive), loss

        return validate

    def predict_proba(self, X: ImageSet | Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Class probabilities of the tiles of an ImageSet, or of a list of uint8 HxWx3 images."""
        if self.net is None:
            raise BenchError("this fine-tuned model is not trained yet; call fit first")
        if isinstance(X, ImageSet):
            assert self.cfg is not None
            dl = _loader(X.crops(False), self.cfg.batch_size * 2, self._workers())
            return predict_batches(self.net, dl, self.device, self.device.type == "cuda")
        out = []
        self.net.eval()
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                x = torch.stack([preprocess(im, self.prep) for im in X[i : i + batch_size]]).to(self.device)
                out.append(torch.softmax(self.net(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))

    def save(self, path: str | Path) -> None:
        """config.json (kind finetuned, backbone, LoRA settings, preprocessing) + model.safetensors + the manifest."""
        if self.net is None or self.cfg is None:
            raise BenchError("only a model trained in this run is saved (a loaded one is already in its folder)")
        _save_model(Path(path), self.net, self.cfg, self.info, self.classes_, self.prep, self.config)

    @classmethod
    def load(cls, path: str | Path) -> FinetunedModel:
        """A fine-tuned model folder (load_finetuned)."""
        return load_finetuned(path)


def load_finetuned(model_dir: str | os.PathLike, weights: str | None = None, device: str = "cpu") -> FinetunedModel:
    """Rebuild a fine-tuned model from its folder (the base backbone's weights must be the ones it was trained on)."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read {d / 'config.json'}: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise BenchError(f"{d / 'config.json'} is not a model configuration (a JSON object)")
    if config.get("kind") != MODEL_KIND:
        raise BenchError(f"{d} is not a fine-tuned model (config.json kind is {config.get('kind')!r})")
    missing_keys = [k for k in ("backbone", "mode", "classes", "weights_sha256", "preprocess") if k not in config]
    if missing_keys:
        raise BenchError(f"{d / 'config.json'} lacks {', '.join(missing_keys)}")
    wname = str(config.get("weights_file", "model.safetensors"))
    if Path(wname).name != wname:
        raise BenchError(f"{d / 'config.json'} names a weights file outside the model folder: {wname!r}")
    lora = config.get("lora") or {}
    cfg = FinetuneConfig(
        source="",
        out="",
        backbone=config["backbone"],
        mode=config["mode"],
        weights=weights,
        rank=lora.get("rank", 8),
        alpha=lora.get("alpha", 16),
        dropout=lora.get("dropout", 0.0),
        targets=lora.get("targets"),
    )
    net, info = build_net(cfg, len(config["classes"]))
    if config["mode"] != "full" and info["weights_sha256"] != config["weights_sha256"]:
        raise BenchError(
            f"{d} was trained on other {config['backbone']} weights (sha256 {config['weights_sha256'][:12]}...); pass the same --weights"
        )
    wfile = d / wname
    try:
        state = load_file(str(wfile))
    except Exception as e:  # safetensors raises its own error type (and OSError) for a damaged file
        raise BenchError(f"cannot read {wfile} ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    missing = set(trainable_state(net, config["mode"])) - set(state)
    if missing:
        raise BenchError(f"{d} lacks {len(missing)} weight tensors (e.g. {sorted(missing)[0]})")
    net.load_state_dict(state, strict=False)
    p = config["preprocess"]
    prep = Preprocess(**{**p, "mean": tuple(p["mean"]), "std": tuple(p["std"])})
    dev = pick_device(device)
    for m in net.modules():  # inference only: fold the adapters in once
        merge = getattr(m, "merge", None)
        if callable(merge) and hasattr(m, "merged") and not m.merged:
            merge()
    return FinetunedModel(net.to(dev).eval(), list(config["classes"]), prep, config, dev)


register_loader("finetuned-model", None, lambda a: load_finetuned(a.path))


def predict_finetuned(
    model_dir: str | os.PathLike,
    source: str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    device: str = "auto",
    weights: str | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Predict the tiles of a folder / manifest with a fine-tuned model: path (or tile_id), label when known, pred, p_<class>.

    The same columns as ``mito predict`` writes for heads; tiles that cannot be decoded are left out.
    """
    model = load_finetuned(model_dir, weights=weights, device=device)
    task = model.config["task"]
    src = open_source(source, task="mitosis" if task in PROXY_TASKS else task)
    tiles = src.tiles
    keep, probs = [], []
    for start in range(0, len(tiles), batch_size):
        imgs, idx = [], []
        for i in range(start, min(len(tiles), start + batch_size)):
            try:
                imgs.append(src.read(i))
                idx.append(i)
            except OSError:
                continue
        if imgs:
            probs.append(model.predict_proba(imgs, batch_size=batch_size))
            keep += idx
    if not keep:
        raise BenchError(f"no readable tile in {source}")
    proba = np.concatenate(probs)
    id_col = "path" if "path" in tiles and tiles["path"].notna().all() else "tile_id"
    df = tiles.iloc[keep][[id_col]].reset_index(drop=True)
    try:
        labels = resolve_task(tiles, task, PROXY_TASKS).labels(tiles)
    except TaskError:  # new tiles need not carry the task's columns
        labels = None
    if labels is not None and labels.iloc[keep].notna().any():
        df["label"] = labels.iloc[keep].to_numpy()
    classes = np.asarray(model.classes_)
    df["pred"] = classes[proba.argmax(axis=1)]
    for j, c in enumerate(model.classes_):
        df[f"p_{c}"] = proba[:, j]
    if out_csv is not None:
        out = Path(out_csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda p: csv_probabilities(df).to_csv(p, index=False), ".csv")
    return df
