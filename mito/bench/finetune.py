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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mito.bench.cv import Fold
from mito.bench.errors import BenchError
from mito.metrics import metric_score
from mito.io import atomic_write
from mito.bench.leaderboard import Leaderboard, rank_rows, row_id, save_leaderboard, score_row, task_plan
from mito.tasks import PROXY_TASKS

FT_MODES = ("lora", "linear-probe", "full")
MODEL_KIND = "finetuned"


@dataclass
class FinetuneConfig:
    """A fine-tuning run: backbone, mode, LoRA and optimiser settings, and the budget per fold."""

    source: str
    out: str
    backbone: str = "efficientnet_lite0"
    task: str = "mitosis"
    mode: str = "lora"
    weights: str | None = None
    label_name: str | None = None
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.3
    targets: list[str] | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 15
    epoch_samples: int | None = None
    val_samples: int | None = None
    input_size: int | None = None
    folds: int | None = None
    n_folds: int = 5
    cv: str = "auto"
    seed: int = 0
    max_minutes: float | None = None
    augment: bool = True
    device: str = "auto"
    num_workers: int | None = None
    n_boot: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)


def head_name(cfg: FinetuneConfig) -> str:
    """The leaderboard's head label for a run: ``lora-r8``, ``linear-probe`` or ``full-ft``."""
    return {"lora": f"lora-r{cfg.rank}", "linear-probe": "linear-probe", "full": "full-ft"}[cfg.mode]


def _config_hash(cfg: FinetuneConfig) -> str:
    """Hash of everything that changes what a fold computes (not the budget knobs that only stop it earlier)."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("out", "folds", "max_minutes", "max_epochs", "device", "num_workers", "n_boot")}
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
    from mito.extract import create_backbone

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
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


@contextlib.contextmanager
def merged_adapters(net: nn.Module) -> Iterator[None]:
    """Fold LoRA weights into their base layers for inference (the unmerged extra convs are slow on CPU), then undo it."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in net.modules() if isinstance(m, LoraLayer) and not m.merged]
    for m in layers:
        m.merge()
    try:
        yield
    finally:
        for m in layers:
            m.unmerge()


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
        from mito.extract import preprocess

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
def _save_model(path: Path, net: FinetuneNet, cfg: FinetuneConfig, info: dict[str, Any], classes: list[str], prep: Any, extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from mito import __version__

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
) -> dict[str, Any]:
    """Train (resuming from a checkpoint), early-stop on the fold's val set, score its test set, save the model."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    done_json = fold_dir / "result.json"
    if done_json.is_file():
        res = json.loads(done_json.read_text())
        if res.get("config_hash") == _config_hash(cfg):
            with np.load(fold_dir / "result.npz") as z:
                res["proba"] = z["proba"]
            return res
        raise BenchError(f"{fold_dir} holds a fold of a different run (other settings); use a new --out")
    amp = device.type == "cuda"
    workers = cfg.num_workers if cfg.num_workers is not None else (min(8, os.cpu_count() or 1) if amp else 0)
    net, info = build_net(cfg, len(classes), device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * fold.index)
    counts = np.bincount(yi[fold.train], minlength=len(classes)).astype(np.float64)
    weights = 1.0 / np.maximum(counts[yi[fold.train]], 1.0)
    n_epoch = cfg.epoch_samples or len(fold.train)
    sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), n_epoch, replacement=True, generator=gen)
    train_dl = _loader(Crops(source, fold.train, yi[fold.train], prep, cfg.augment), cfg.batch_size, workers, sampler)
    val_rows = fold.val
    if cfg.val_samples and len(val_rows) > cfg.val_samples:
        val_rows = np.sort(np.random.default_rng(cfg.seed + fold.index).choice(val_rows, cfg.val_samples, replace=False))
    val_dl = _loader(Crops(source, val_rows, yi[val_rows], prep, False), cfg.batch_size * 2, workers)

    state = {"epoch": 0, "best_score": -math.inf, "best": trainable_state(net, cfg.mode), "bad": 0, "seconds": 0.0, "steps": 0, "samples": 0, "history": []}
    ckpt = fold_dir / "checkpoint.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if saved.get("config_hash") != _config_hash(cfg):
            raise BenchError(f"{ckpt} was written by a run with other settings; use a new --out")
        net.load_state_dict(saved["current"], strict=False)
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        state = saved["state"]
    cap = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    stop = "max_epochs"
    bar = progress.add_task(f"fold {fold.index}", total=cfg.max_epochs * len(train_dl), completed=state["epoch"] * len(train_dl))
    while state["epoch"] < cfg.max_epochs:
        if state["bad"] >= cfg.patience:
            stop = "early_stopping"
            break
        if state["seconds"] >= cap:
            stop = "time_budget"
            break
        t0 = time.perf_counter()
        set_train_mode(net, cfg.mode)
        losses = []
        for x, y in train_dl:
            losses.append(train_step(net, opt, x.to(device, non_blocking=True), y.to(device), amp))
            state["steps"] += 1
            state["samples"] = state.get("samples", 0) + len(y)
            progress.advance(bar)
            if state["seconds"] + time.perf_counter() - t0 >= cap:
                break
        score = math.nan
        if len(val_rows):
            pv = predict_batches(net, val_dl, device, amp)
            score = metric_score(main, yi[val_rows], pv)
        state["epoch"] += 1
        state["seconds"] += time.perf_counter() - t0
        state["history"].append({"epoch": state["epoch"], "loss": float(np.mean(losses)) if losses else math.nan, f"val_{main}": score})
        if not len(val_rows) or score > state["best_score"]:
            state["best_score"], state["best"], state["bad"] = score, trainable_state(net, cfg.mode), 0
        else:
            state["bad"] += 1
        snapshot = {"config_hash": _config_hash(cfg), "current": trainable_state(net, cfg.mode), "opt": opt.state_dict(), "gen": gen.get_state(), "state": state}
        atomic_write(ckpt, lambda p: torch.save(snapshot, p), ".pt")
    else:
        stop = "max_epochs"
    net.load_state_dict(state["best"], strict=False)
    t1 = time.perf_counter()
    test_dl = _loader(Crops(source, fold.test, yi[fold.test], prep, False), cfg.batch_size * 2, workers)
    proba = predict_batches(net, test_dl, device, amp)
    predict_seconds = time.perf_counter() - t1
    res = {
        "fold": fold.index,
        "train_seconds": state["seconds"],
        "predict_seconds": predict_seconds,
        "epochs": state["epoch"],
        "steps": state["steps"],
        "samples_seen": state.get("samples", 0),
        "stopped": stop,
        "best_val_score": state["best_score"],
        "history": state["history"],
        "config_hash": _config_hash(cfg),
        "params": {k: v for k, v in info.items() if k != "lora"} | ({"lora_targets": len(info["lora"]["targets"])} if info.get("lora") else {}),
        "device": str(device),
    }
    _save_model(fold_dir / "model", net, cfg, info, classes, prep, {"fold": fold.index, "trained": {k: res[k] for k in ("epochs", "steps", "stopped", "train_seconds")}})
    atomic_write(fold_dir / "result.npz", lambda p: np.savez(open(p, "wb"), proba=proba), ".npz")
    atomic_write(done_json, lambda p: Path(p).write_text(json.dumps(res, indent=1, default=float)), ".json")
    ckpt.unlink(missing_ok=True)
    res["proba"] = proba
    return res


# ------------------------------------------------------------------ the run
def _budget(cfg: FinetuneConfig, results: Sequence[dict[str, Any]], n_total: int, input_size: int, n_train: int) -> str:
    parts = [f"{len(results)}/{n_total} folds"]
    eps = [r["epochs"] for r in results]
    per_epoch = cfg.epoch_samples or n_train
    parts.append(f"{min(eps)}-{max(eps)} ep" if eps and min(eps) != max(eps) else f"{eps[0] if eps else 0} ep")
    parts.append(f"x {per_epoch} samples (max {cfg.max_epochs} ep, patience {cfg.patience})")
    if cfg.max_minutes:
        parts.append(f"cap {cfg.max_minutes:g} min/fold")
    parts.append(f"{input_size} px")
    if cfg.val_samples:
        parts.append(f"val <= {cfg.val_samples}")
    stops = sorted({r["stopped"] for r in results})
    parts.append("stopped: " + "/".join(stops))
    return ", ".join(parts)


def open_tiles(cfg: FinetuneConfig) -> Any:
    """The tile source with its label column named as ``mito extract --task`` named it (so the folds match)."""
    from mito.extract import open_source

    label = cfg.label_name or ("mitosis" if cfg.task in PROXY_TASKS else cfg.task)
    return open_source(cfg.source, task=label)


def run_finetune(cfg: FinetuneConfig, progress: bool = True) -> Leaderboard:
    """Fine-tune on each fold (resuming finished work), score like the heads, and write a leaderboard in ``cfg.out``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from mito.extract import Preprocess, get_backbone, pick_device

    if cfg.mode not in FT_MODES:
        raise BenchError(f"mode must be one of {', '.join(FT_MODES)}, not {cfg.mode!r}")
    if cfg.rank < 1 or cfg.batch_size < 1 or cfg.max_epochs < 1 or cfg.lr <= 0:
        raise BenchError("rank, batch size and epochs must be >= 1 and the learning rate > 0")
    src = open_tiles(cfg)
    tiles = src.tiles
    spec_task, y, classes, plan = task_plan(tiles, cfg.task, cfg.n_folds, cfg.cv, cfg.seed, None)
    yi = np.array([classes.index(v) if v is not None else -1 for v in y])
    spec = get_backbone(cfg.backbone)
    size = cfg.input_size or int(min(src.read(int(plan.folds[0].train[0])).shape[:2]))
    prep = Preprocess(input_size=size, mean=tuple(spec.mean), std=tuple(spec.std))
    device = pick_device(cfg.device)
    folds = plan.folds[: cfg.folds] if cfg.folds else plan.folds
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        for f in folds:
            try:
                results.append(_run_fold(cfg, src, f, yi, classes, prep, device, out / f"fold{f.index}", bar, spec_task.main_metric))
            except OSError as e:
                raise BenchError(f"cannot read a tile: {str(e).splitlines()[0]}") from None
    features = f"image:rgb@{size}px"
    rid = row_id(cfg.task, cfg.backbone, features, head_name(cfg), 0.0, extra=_config_hash(cfg))
    base = {
        "task": cfg.task,
        "backbone": cfg.backbone,
        "features": features,
        "head": head_name(cfg),
        "noise": 0.0,
        "kind": cfg.mode,
        "budget": _budget(cfg, results, len(plan.folds), size, int(np.mean([len(f.train) for f in folds]))),
        "params": json.dumps({**results[0]["params"], "lr": cfg.lr, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size,
                              "rank": cfg.rank if cfg.mode == "lora" else None, "alpha": cfg.alpha if cfg.mode == "lora" else None,
                              "dropout": cfg.dropout if cfg.mode == "lora" else None, "device": results[0]["device"]}, sort_keys=True),
        "row_id": rid,
        "samples_seen": float(np.mean([r.get("samples_seen", 0) for r in results])),
        "models": [str(out / f"fold{f.index}" / "model") for f in folds],
    }
    row, arrays = score_row(base, spec_task, plan, y, classes, results, folds, cfg.n_boot, cfg.seed)
    lb = Leaderboard(
        rank_rows(pd.DataFrame([row])),
        {rid: arrays},
        {
            "source": str(cfg.out),
            "tasks": {cfg.task: {"description": spec_task.description, "main_metric": spec_task.main_metric, "classes": classes, "cv": plan.mode,
                                 "cv_description": plan.description, "n_folds": len(plan.folds), "fold_fingerprint": plan.fingerprint}},
            "finetune": {**asdict(cfg), "config_hash": _config_hash(cfg)},
        },
    )
    save_leaderboard(lb, out)
    return lb


# ------------------------------------------------------------------ using a fine-tuned model
@dataclass
class FinetunedModel:
    """A loaded fine-tuned model: ``predict_proba`` on uint8 HxWx3 images, columns follow ``classes_``."""

    net: FinetuneNet
    classes_: list[str]
    prep: Any
    config: dict[str, Any]
    device: torch.device

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Class probabilities for a list of uint8 HxWx3 images."""
        from mito.extract import preprocess

        out = []
        self.net.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.stack([preprocess(im, self.prep) for im in images[i : i + batch_size]]).to(self.device)
                out.append(torch.softmax(self.net(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))


def is_finetuned(model_dir: str | os.PathLike) -> bool:
    """True when ``model_dir/config.json`` says ``"kind": "finetuned"``."""
    p = Path(model_dir) / "config.json"
    try:
        return json.loads(p.read_text()).get("kind") == MODEL_KIND
    except (OSError, json.JSONDecodeError):
        return False


def load_finetuned(model_dir: str | os.PathLike, weights: str | None = None, device: str = "cpu") -> FinetunedModel:
    """Rebuild a fine-tuned model from its folder (the base backbone's weights must be the ones it was trained on)."""
    from safetensors.torch import load_file

    from mito.extract import Preprocess, pick_device

    d = Path(model_dir)
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"cannot read {d / 'config.json'}: {e}") from None
    if config.get("kind") != MODEL_KIND:
        raise BenchError(f"{d} is not a fine-tuned model (config.json kind is {config.get('kind')!r})")
    lora = config.get("lora") or {}
    cfg = FinetuneConfig(source="", out="", backbone=config["backbone"], mode=config["mode"], weights=weights,
                         rank=lora.get("rank", 8), alpha=lora.get("alpha", 16), dropout=lora.get("dropout", 0.0), targets=lora.get("targets"))
    net, info = build_net(cfg, len(config["classes"]))
    if config["mode"] != "full" and info["weights_sha256"] != config["weights_sha256"]:
        raise BenchError(f"{d} was trained on other {config['backbone']} weights (sha256 {config['weights_sha256'][:12]}...); pass the same --weights")
    state = load_file(str(d / config.get("weights_file", "model.safetensors")))
    missing = set(trainable_state(net, config["mode"])) - set(state)
    if missing:
        raise BenchError(f"{d} lacks {len(missing)} weight tensors (e.g. {sorted(missing)[0]})")
    net.load_state_dict(state, strict=False)
    p = config["preprocess"]
    prep = Preprocess(**{**p, "mean": tuple(p["mean"]), "std": tuple(p["std"])})
    dev = pick_device(device)
    for m in net.modules():  # inference only: fold the adapters in once
        if hasattr(m, "merge") and hasattr(m, "merged") and not m.merged:
            m.merge()
    return FinetunedModel(net.to(dev).eval(), list(config["classes"]), prep, config, dev)


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
    from mito.extract import open_source

    model = load_finetuned(model_dir, weights=weights, device=device)
    task = model.config.get("task", "mitosis")
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
    if task in PROXY_TASKS:
        labels = PROXY_TASKS[task].labels(tiles) if all(c in tiles for c in PROXY_TASKS[task].columns) else None
    else:
        labels = tiles[task] if task in tiles else None
    if labels is not None and labels.iloc[keep].notna().any():
        df["label"] = labels.iloc[keep].to_numpy()
    classes = np.asarray(model.classes_)
    df["pred"] = classes[proba.argmax(axis=1)]
    for j, c in enumerate(model.classes_):
        df[f"p_{c}"] = proba[:, j]
    if out_csv is not None:
        out = Path(out_csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda p: df.to_csv(p, index=False), ".csv")
    return df
