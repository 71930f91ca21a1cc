"""Torch heads (mlp, linear): one training loop with feature noise, focal loss, class balance and early stopping."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mito.heads.base import (
    SMALL_DATA,
    FitArgs,
    Head,
    HeadError,
    balanced_accuracy,
    class_weights,
    iter_blocks,
    noise_variance,
    noise_variance_from,
    register_head,
)
from mito.heads.loop import train_best
from mito.heads.model import Callback
from mito.heads.params import BALANCES, COMMON, LOSSES, Param, balance_mode
from mito.heads.view_noise import VIEW_NOISE_MODES, pick_views, view_cov_noise

MODEL_FILE = "model.safetensors"
PRECISIONS = ("auto", "fp32", "bf16")
# first_layer_noise costs ~h*h*d per batch against b*d random draws for plain input noise: it pays off for big batches
PROJECT_NOISE_ROWS_PER_UNIT = 4

MAX_HIDDEN = 65536  # wider hidden layers than this are a typo, and would try to allocate terabytes


class _Net(nn.Module):
    """first Linear -> (ReLU -> Dropout -> Linear when hidden); noise enters through the first layer."""

    def __init__(self, d: int, n_classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.first = nn.Linear(d, hidden or n_classes)
        self.rest = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)) if hidden else nn.Identity()

    def forward(self, x: torch.Tensor, noise_var: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        if noise_var is None:
            return self.rest(self.first(x))
        noise = None
        b, d, h = x.shape[0], x.shape[1], self.first.out_features
        if d > h and b >= PROJECT_NOISE_ROWS_PER_UNIT * h:  # then drawing in the output space costs less
            noise = first_layer_noise(self.first.weight, noise_var, b, gen)
        if noise is None:
            return self.rest(self.first(x + torch.randn(x.shape, generator=gen) * noise_var.sqrt()))
        h = self.first(x)
        return self.rest(h + noise.to(h.dtype))


def first_layer_noise(weight: torch.Tensor, noise_var: torch.Tensor, n: int, gen: torch.Generator | None) -> torch.Tensor | None:
    """W @ e for n fresh draws e ~ N(0, diag(noise_var)), sampled in the layer's output space (None if W is degenerate).

    W e is Gaussian with covariance W diag(var) W^T, so drawing z ~ N(0, I_h) and returning L z (L its Cholesky
    factor) has exactly the distribution of adding the noise to the embeddings, with h instead of d random
    numbers per row; gradients flow through L, so the regularising effect on W is kept.
    """
    w = weight.float()
    cov = ((w * noise_var) @ w.T).float()  # bf16 under autocast: rounding is far below the noise itself
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    scale = cov.diagonal().mean().detach().clamp_min(1e-12)
    for jitter in (1e-5, 1e-3):  # rounding in cov can make it slightly indefinite
        chol, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if int(info) == 0:
            return torch.randn(n, cov.shape[0], generator=gen) @ chol.T
    return None


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 matmuls run about twice as fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, n_values: int) -> str:
    """``auto``: bf16 matmuls for big training sets on CPUs with native bf16, fp32 otherwise (small sets stay exact)."""
    if precision != "auto":
        return precision
    return "bf16" if n_values >= SMALL_DATA and cpu_has_fast_bf16() else "fp32"


def _adam(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch supports it on CPU (several times faster per step for small heads)."""
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float, weight: torch.Tensor | None) -> torch.Tensor:
    """Weighted focal loss, sum(w_y (1-p_y)^gamma * -log p_y) / sum(w_y); gamma 0 is weighted cross-entropy."""
    logp = torch.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    loss = -logp if gamma == 0 else -((1 - logp.exp()).clamp_min(0) ** gamma) * logp
    w = weight[y] if weight is not None else torch.ones_like(loss)
    return (w * loss).sum() / w.sum()


@dataclass(eq=False, repr=False)
class _TorchHead(Head):
    """Shared fit/predict/save for the torch heads; subclasses only declare their options (dataclass fields, in
    the constructor's signature, as scikit-learn's get_params reads them)."""

    loss: str = "focal"
    gamma: float = 2.0
    balance: str = "weights"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 100
    patience: int = 15
    batch_size: int | None = None
    noise: float = 0.0
    noise_mode: str = "global"
    precision: str = "auto"
    n_threads: int | None = None
    seed: int = 0

    supports_stream = True

    param_spec = {
        "loss": Param("choice", choices=LOSSES, help="focal or cross-entropy"),
        "gamma": Param("float", 0, 100, help="focal-loss exponent"),
        "balance": Param("balance", choices=BALANCES, help="class weights in the loss, a balanced sampler, or none"),
        "lr": Param("float", 0, 10, low_open=True, help="Adam learning rate"),
        "weight_decay": Param("float", 0, 10),
        "epochs": Param("int", 1, 10**9),
        "patience": Param("int", 1, 10**9, help="epochs without validation gain before stopping"),
        "batch_size": Param("int", 1, 10**7, none=True, help="none: 256, growing with the data up to 2048"),
        "precision": Param("choice", choices=PRECISIONS, help="auto: bf16 for big sets on CPUs with native bf16"),
        **COMMON,
    }

    def _arch(self) -> tuple[int, float]:
        return 0, 0.0

    def _build(self, d: int, n_classes: int) -> _Net:
        hidden, dropout = self._arch()
        return _Net(d, n_classes, hidden, dropout)

    def _batch(self, n: int) -> int:
        """Batch size: as given, or 256 rows, growing with the data (n/64, up to 2048) so big sets train fast."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return int(min(2048, max(256, n // 64)))

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None, extra: FitArgs) -> None:
        n, d = X.shape
        Xt = torch.from_numpy(np.ascontiguousarray(X))
        stack = self._view_stack(X, extra.views)  # [V+1, n, d] for the noise modes views / view-cov, else None
        mode, scale = self.noise_mode, float(self.noise) or 1.0

        def epoch(gen: torch.Generator, bs: int, row_w: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = torch.multinomial(row_w, n, replacement=True, generator=gen) if row_w is not None else torch.randperm(n, generator=gen)
            for s in range(0, n, bs):
                idx = order[s : s + bs]
                if stack is None:
                    yield Xt[idx], idx
                else:
                    yield (pick_views(stack, idx, gen) if mode == "views" else view_cov_noise(stack, idx, gen, scale)), idx

        val = (lambda net: _logits(net, X_val)) if X_val is not None else None
        nv = noise_variance(X, self.noise, self.noise_mode) if self.noise > 0 and stack is None else None
        self._train(n, d, y, epoch, val, y_val, nv, extra.callbacks)

    def _view_stack(self, X: np.ndarray, views: np.ndarray | None) -> torch.Tensor | None:
        """The rows and their augmented views, [V+1, n, d], when the noise mode trains on views."""
        if self.noise_mode not in VIEW_NOISE_MODES:
            return None
        if views is None or views.shape[1:] != X.shape:
            raise HeadError(f"noise_mode {self.noise_mode} needs the tiles' augmented views: train through fit-head or bench")
        return torch.from_numpy(np.concatenate([X[None], views.astype(X.dtype, copy=False)]))

    def _fit_stream(self, train: Any, y: np.ndarray, val: Any, y_val: np.ndarray | None, callbacks: Sequence[Callback] = ()) -> None:
        if self.noise_mode in VIEW_NOISE_MODES:
            raise HeadError(f"noise_mode {self.noise_mode} trains from memory: use --no-stream")
        seed = int(self.seed)

        def epoch(gen: torch.Generator, bs: int, row_w: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            e = next(counter)
            for pos, block, order in train.shuffled(np.random.default_rng([seed, e])):
                xt, pt = torch.from_numpy(block), torch.from_numpy(pos)
                # class balance: sample the buffer's rows with replacement, as the in-memory sampler does over all rows
                j_all = (
                    torch.multinomial(row_w[pt], len(pt), replacement=True, generator=gen) if row_w is not None else torch.from_numpy(order)
                )
                edges = list(range(0, len(pt), bs))
                if len(edges) > 1 and len(pt) - edges[-1] < bs:  # the remainder joins the last full batch
                    edges.pop()
                for a, b in zip(edges, [*edges[1:], len(pt)]):
                    j = j_all[a:b]
                    yield xt[j], pt[j]

        counter = itertools.count()  # the epoch number, for a fresh shuffle each epoch
        val_fn = (lambda net: _stream_logits(net, val)) if val is not None else None
        nv = None
        if self.noise > 0:
            nv = noise_variance_from(lambda: train.moments()[1], train.d, self.noise, self.noise_mode)
        self._train(train.n, train.d, y, epoch, val_fn, y_val, nv, callbacks)

    def _train(
        self,
        n: int,
        d: int,
        y: np.ndarray,
        epoch_batches: Callable[[torch.Generator, int, torch.Tensor | None], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        val_logits: Callable[[nn.Module], torch.Tensor] | None,
        y_val: np.ndarray | None,
        noise_var: np.ndarray | None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        """The training loop: ``epoch_batches`` yields (features, row positions) for one epoch, ``val_logits`` scores the val rows."""
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        k = len(self.classes_)
        net = self._build(d, k)
        opt = _adam(net, self.lr, self.weight_decay)
        yt = torch.from_numpy(y)
        cw = torch.tensor(class_weights(y, k), dtype=torch.float32)
        loss_w = cw if balance_mode(self.balance) == "weights" else None
        row_w = cw[yt] if balance_mode(self.balance) == "sampler" else None
        gamma = float(self.gamma) if self.loss == "focal" else 0.0
        nv = torch.tensor(noise_var, dtype=torch.float32) if noise_var is not None else None
        self.precision_ = resolve_precision(self.precision, n * d)
        self.threads_ = torch.get_num_threads()
        dtype = torch.bfloat16 if self.precision_ == "bf16" else torch.float32
        bs = self._batch(n)

        def run_epoch(ep: int) -> dict[str, float]:
            net.train()
            total, seen = 0.0, 0
            for xb, idx in epoch_batches(gen, bs, row_w):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    logits = net(xb.to(dtype), nv, gen)
                loss = focal_loss(logits, yt[idx], gamma, loss_w)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            return {"train_loss": total / max(seen, 1)}

        def validate() -> tuple[float, float]:
            assert val_logits is not None and y_val is not None  # train_loop gets validate only when both are given
            vlogits = val_logits(net)
            vloss = float(focal_loss(vlogits, torch.from_numpy(y_val), gamma, loss_w))
            return balanced_accuracy(y_val, vlogits.argmax(1).numpy()), vloss

        has_val = val_logits is not None and y_val is not None
        result = train_best(net, run_epoch, int(self.epochs), int(self.patience), validate if has_val else None, callbacks)
        self.net_ = net
        self.best_epoch_: int | None = result.best_epoch  # after fit or load (None: a head saved without it)
        self.epochs_run_: int | None = result.epochs_run
        self.history_ = result.history
        self.fit_seconds_ = result.seconds

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return torch.softmax(_logits(self.net_, X), dim=1).numpy()

    def _save_state(self, path: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.net_.state_dict().items()}, str(path / MODEL_FILE))
        return {"file": MODEL_FILE, "best_epoch": self.best_epoch_, "epochs_run": self.epochs_run_}

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        net = self._build(self.n_features_in_, len(self.classes_))
        try:
            net.load_state_dict(load_file(str(path / state.get("file", MODEL_FILE))))
        except (RuntimeError, OSError) as e:
            raise HeadError(f"cannot load {self.name} weights from {path}: {str(e).splitlines()[0]}") from None
        net.eval()
        self.net_ = net
        self.best_epoch_ = state.get("best_epoch")
        self.epochs_run_ = state.get("epochs_run")


@torch.no_grad()
def _logits(net: nn.Module, X: np.ndarray) -> torch.Tensor:
    was = net.training
    net.eval()
    out = torch.cat([net(torch.from_numpy(np.ascontiguousarray(X[s])).float()) for s in iter_blocks(len(X), 8192)])
    net.train(was)
    return out


@register_head("mlp")
@dataclass(eq=False, repr=False)
class MLPHead(_TorchHead):
    """One dense hidden layer + dropout + classifier, trained with Adam on focal or cross-entropy loss."""

    hidden: int = 256
    dropout: float = 0.3

    param_spec = {
        "hidden": Param("int", 1, MAX_HIDDEN, help="hidden units"),
        "dropout": Param("float", 0, 1, high_open=True),
        **_TorchHead.param_spec,
    }

    def _arch(self) -> tuple[int, float]:
        return int(self.hidden), float(self.dropout)


@register_head("linear")
@dataclass(eq=False, repr=False)
class LinearHead(_TorchHead):
    """A single linear layer trained by the same loop as mlp (a torch linear probe)."""

    loss: str = "ce"


def _stream_logits(net: nn.Module, stream: Any) -> torch.Tensor:
    """Logits of every row of a FeatureStream, in row order."""
    return torch.from_numpy(stream.map(lambda X: _logits(net, X).numpy()))
