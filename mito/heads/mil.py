"""Slide-level (multiple-instance) heads: mean pooling (mean-linear, mean-mlp) and gated attention (abmil, Ilse et al. 2018).

They train on bags read batch by batch from the store (mito.heads.bags) with per-tile feature noise, tile dropout,
focal or cross-entropy loss, class weights and early stopping (mito.heads.loop.train_loop); they save as
head.json + model.safetensors like the tile heads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mito.core.version import __version__
from mito.heads.bags import SCORE_TILES, BagReader, Bags, BagSet, local_batches, tile_budget_batches
from mito.heads.base import (
    HEAD_FILE,
    HeadError,
    balanced_accuracy,
    check_sha256,
    class_weights,
    cpu_threads,
    file_sha256,
    noise_variance_from,
    read_json_file,
)
from mito.heads.loop import train_best
from mito.heads.model import Callback, lookup, make, names, register
from mito.heads.params import COMMON, LOSSES, Param, balance_mode, check_options, check_params, describe_params
from mito.heads.stream import read_ahead

if TYPE_CHECKING:  # torch (and the networks, mito.heads.mil_nets) load on first use: importing mito.heads must not load it
    import torch
    from torch import nn

MODEL_FILE = "model.safetensors"


def mil_head_names() -> tuple[str, ...]:
    """The slide-level heads (level "slide" of the model registry, mito.heads.model), in registration order."""
    return names("slide")


# every option of the slide-level heads, declared once (mito.heads.params): validation, help, conformance tests
MIL_PARAMS: dict[str, Param] = {
    "hidden": Param("int", 1, 65536, help="tile embedding width (abmil, mean-mlp)"),
    "attention": Param("int", 1, 65536, help="attention width (abmil)"),
    "dropout": Param("float", 0, 1, high_open=True),
    "loss": Param("choice", choices=LOSSES),
    "gamma": Param("float", 0, 100, help="focal-loss exponent"),
    "balance": Param("balance", choices=("weights", "none"), help="class weights inverse to bag frequency"),
    "lr": Param("float", 0, 10, low_open=True),
    "weight_decay": Param("float", 0, 10),
    "epochs": Param("int", 1, 10**9),
    "patience": Param("int", 1, 10**9),
    "batch_bags": Param("int", 1, 10**9, help="bags per step"),
    "max_tiles": Param("int", 1, 10**9, none=True, help="tiles sampled per bag in training (none: all)"),
    "tile_dropout": Param("float", 0, 1, high_open=True, help="share of a bag's tiles dropped per step"),
    "noise": Param("float", 0, 1e6, help="feature-noise scale (see noise_mode)"),
    "noise_mode": Param("choice", choices=("global", "per-dim", "absolute")),
    "seed": COMMON["seed"],
}


@dataclass
class MILHead:
    """A slide-level head: its options (saved in head.json), and after fitting its classes and network."""

    name: str = "abmil"
    hidden: int = 128
    attention: int = 64
    dropout: float = 0.25
    loss: str = "ce"
    gamma: float = 2.0
    balance: bool = True
    lr: float = 2e-4
    weight_decay: float = 1e-4
    epochs: int = 50
    patience: int = 10
    batch_bags: int = 16
    max_tiles: int | None = 512
    tile_dropout: float = 0.0
    noise: float = 0.0
    noise_mode: str = "global"
    seed: int = 0
    classes_: np.ndarray | None = field(default=None, repr=False)
    n_features_in_: int = 0
    net_: nn.Module | None = field(default=None, repr=False)
    history_: list[dict[str, float]] = field(default_factory=list, repr=False)
    best_epoch_: int = 0
    level: ClassVar[str] = "slide"
    param_spec: ClassVar[dict[str, Param]] = MIL_PARAMS  # every option, declared once (mito.heads.params)

    def get_params(self) -> dict[str, Any]:
        """The options, as saved (scikit-learn's name; params() too)."""
        return self.params()

    def params(self) -> dict[str, Any]:
        """The options, as saved."""
        d = asdict(self)
        return {k: v for k, v in d.items() if not k.endswith("_") and k != "name"}

    def validate(self) -> None:
        """One-line HeadError naming the head, the option and its allowed values (from ``param_spec``)."""
        lookup("slide", self.name)  # an unknown name is a one-line HeadError listing the others
        if self.noise_mode in ("views", "view-cov"):
            raise HeadError(
                f"head {self.name!r}: noise_mode must be global, per-dim or absolute, got {self.noise_mode!r} (views and view-cov are for tile-level heads)"
            )
        check_params(self.name, MIL_PARAMS, self.params())

    def build(self, d: int, k: int) -> nn.Module:
        """A fresh network for d-dim tiles and k classes."""
        from mito.heads.mil_nets import GatedAttention, MeanPool

        if self.name == "abmil":
            return GatedAttention(d, k, int(self.hidden), int(self.attention), float(self.dropout))
        return MeanPool(d, k, int(self.hidden) if self.name == "mean-mlp" else 0, float(self.dropout))

    # -- training
    @classmethod
    def create(cls, **params: Any) -> MILHead:
        """This head with ``params``; unknown options or values out of range are one-line HeadErrors."""
        check_options(cls.name, sorted(MILHead().params()), params, "slide-level head")
        head = cls(**params)
        head.validate()
        return head

    def fit(
        self, X: BagSet, y: Any = None, *, eval_set: BagSet | None = None, views: Any = None, callbacks: Sequence[Callback] = ()
    ) -> MILHead:
        """Train on the bags of ``X`` (their labels are y), early-stopping on the bags of ``eval_set``; ``callbacks``
        are told after every epoch. ``views`` are for tile heads (None here)."""
        self.validate()
        if views is not None:
            raise HeadError(f"head {self.name!r}: augmented views are for tile-level heads")
        if y is not None and list(map(str, np.asarray(y))) != list(map(str, X.labels)):
            raise HeadError("a slide-level head takes its labels from the bags (give y=None)")
        train, val = X.index, (eval_set.index if eval_set is not None else None)
        with cpu_threads(int(X.bags.sizes[train].sum()) * X.reader.d, reserve=1):  # one core reads ahead (read_ahead)
            return self._fit(X.reader, X.bags, train, val, callbacks)

    def _fit(self, reader: BagReader, bags: Bags, train: np.ndarray, val: np.ndarray | None, callbacks: Sequence[Callback]) -> MILHead:
        import torch

        torch.manual_seed(self.seed)
        self.classes_ = np.asarray(bags.classes)
        self.n_features_in_ = reader.d
        index = {c: i for i, c in enumerate(bags.classes)}
        y = np.array([index[v] for v in bags.labels], dtype=np.int64)
        net = self.build(reader.d, len(bags.classes))
        loss_fn = self._loss(y[train], len(bags.classes))
        run_epoch = self._epoch_runner(net, reader, bags, train, y, loss_fn)

        def validate() -> tuple[float, float]:
            assert val is not None  # train_loop gets validate only with validation bags
            logits = self._logits(net, reader, bags, val)[0]
            return balanced_accuracy(y[val], logits.argmax(1).numpy()), float(loss_fn(logits, torch.from_numpy(y[val])))

        has_val = val is not None and len(val) > 0
        result = train_best(net, run_epoch, int(self.epochs), int(self.patience), validate if has_val else None, callbacks)
        self.net_, self.history_, self.best_epoch_ = net, result.history, result.best_epoch
        return self

    def _loss(self, y_train: np.ndarray, k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss: focal or cross-entropy, class-weighted by the training bags when balance says so."""
        import torch

        from mito.heads.torch_heads import focal_loss

        cw = torch.tensor(class_weights(y_train, k), dtype=torch.float32) if balance_mode(self.balance) == "weights" else None
        gamma = float(self.gamma) if self.loss == "focal" else 0.0
        return lambda logits, target: focal_loss(logits, target, gamma, cw)

    def _epoch_runner(
        self,
        net: nn.Module,
        reader: BagReader,
        bags: Bags,
        train: np.ndarray,
        y: np.ndarray,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> Callable[[int], dict[str, float]]:
        """One training epoch over the bags ``train``: shuffled batches of bags, tiles subsampled, feature noise."""
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sd = None
        if self.noise > 0:
            var = noise_variance_from(lambda: reader.moments(bags, train)[1], reader.d, self.noise, self.noise_mode)
            sd = torch.tensor(np.sqrt(var), dtype=torch.float32)

        def run_epoch(ep: int) -> dict[str, float]:
            net.train()
            rng = np.random.default_rng([self.seed, ep])
            batches = local_batches(bags, train, int(self.batch_bags), rng)
            if self.max_tiles is None or int(self.max_tiles) * int(self.batch_bags) > SCORE_TILES:  # huge bags: bound the padding
                shown = bags.sizes if self.max_tiles is None else np.minimum(bags.sizes, int(self.max_tiles))
                batches = [b for batch in batches for b in tile_budget_batches(shown, batch, int(self.batch_bags))]
            total, seen = 0.0, 0
            read = reader.read_batches(bags, batches, rng, self.max_tiles, float(self.tile_dropout))
            for sel, x, mask in read_ahead((sel, *pad(xs)) for sel, _, xs in read):  # decode + pad overlap training
                if sd is not None:
                    x = x + torch.randn(x.shape, generator=gen) * sd
                loss = loss_fn(net(x, mask)[0], torch.from_numpy(y[sel]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(sel)
                seen += len(sel)
            return {"train_loss": total / max(seen, 1)}

        return run_epoch

    def _logits(
        self, net: nn.Module, reader: BagReader, bags: Bags, which: np.ndarray
    ) -> tuple[torch.Tensor, list[np.ndarray], list[np.ndarray]]:
        import torch

        was = net.training
        net.eval()
        out, rows_out, att_out = [], [], []
        # scoring sees every tile; batches are bounded by padded tiles, so a few huge bags never pad a whole batch
        read = reader.read_batches(bags, tile_budget_batches(bags.sizes, which, int(self.batch_bags)))
        with torch.no_grad():
            for rows, x, mask in read_ahead((rows, *pad(xs)) for _, rows, xs in read):
                logits, a = net(x, mask)
                out.append(logits)
                rows_out += rows
                att_out += [a[i, : len(r)].numpy().astype(np.float64) for i, r in enumerate(rows)]
        net.train(was)
        k = len(self.classes_) if self.classes_ is not None else 0
        return (torch.cat(out) if out else torch.zeros(0, k)), rows_out, att_out

    def predict_proba(self, X: BagSet) -> np.ndarray:
        """Class probabilities per bag of ``X`` (columns = ``classes_``)."""
        return self.predict_bags(X)[0]

    def predict_bags(self, X: BagSet) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Class probabilities per bag of ``X`` (columns = ``classes_``), and per bag its store rows and tile weights
        (attention for abmil; 1/n for mean pooling)."""
        if self.net_ is None or self.classes_ is None:
            raise HeadError(f"this {self.name} head is not fitted yet")
        if X.reader.d != self.n_features_in_:
            raise HeadError(f"features have {X.reader.d} dims, the head was trained on {self.n_features_in_}")
        import torch

        with cpu_threads(int(X.bags.sizes[X.index].sum()) * X.reader.d, reserve=1):
            logits, rows, att = self._logits(self.net_, X.reader, X.bags, X.index)
        return torch.softmax(logits, 1).numpy().astype(np.float64), rows, att

    # -- save / load
    @classmethod
    def load(cls, path: str | Path) -> MILHead:
        """A head written by ``save`` (load_mil_head)."""
        return load_mil_head(path)

    def save(self, path: str | Path) -> None:
        """head.json (options, classes, width, weight hash) and model.safetensors."""
        from safetensors.torch import save_file

        if self.net_ is None or self.classes_ is None:
            raise HeadError(f"this {self.name} head is not fitted yet")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net_.state_dict().items()}, str(path / MODEL_FILE))
        meta = {
            "head": self.name,
            "level": "slide",
            "params": self.params(),
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "state": {"file": MODEL_FILE, "best_epoch": int(self.best_epoch_), "epochs_run": len(self.history_)},
            "sha256": {MODEL_FILE: file_sha256(path / MODEL_FILE)},
            "mito_version": __version__,
        }
        (path / HEAD_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def mil_param_help(name: str) -> list[str]:
    """One line per option of the slide-level head ``name`` (from MIL_PARAMS)."""
    return describe_params(MIL_PARAMS, lookup("slide", name)().params())


def make_mil_head(name: str, **params: Any) -> MILHead:
    """A slide-level head by name; unknown options or values out of range are one-line HeadErrors."""
    head: MILHead = make("slide", name, **params)
    return head


@register("slide", "mean-linear")
@dataclass
class MeanLinear(MILHead):
    """Mean pooling of the tile features, then one linear layer."""

    name: str = "mean-linear"


@register("slide", "mean-mlp")
@dataclass
class MeanMLP(MILHead):
    """Mean pooling, then one hidden layer (ReLU, dropout) and a linear classifier."""

    name: str = "mean-mlp"


@register("slide", "abmil")
@dataclass
class ABMIL(MILHead):
    """Gated attention pooling over tile embeddings (Ilse et al. 2018), then a linear classifier."""

    name: str = "abmil"


def load_mil_head(path: str | Path) -> MILHead:
    """Load a head written by MILHead.save; damaged files are one-line HeadErrors naming them."""
    from safetensors.torch import load_file

    path = Path(path)
    f = path / HEAD_FILE
    meta = read_json_file(f, "head description")
    try:
        head = make_mil_head(meta["head"], **meta["params"])
        head.classes_ = np.asarray(meta["classes"])
        head.n_features_in_ = int(meta["n_features_in"])
        head.best_epoch_ = int(meta.get("state", {}).get("best_epoch", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise HeadError(f"{f} is not a valid slide-level head description: {type(e).__name__} {e}") from None
    for name, want in (meta.get("sha256") or {}).items():
        check_sha256(path / name, want)
    net = head.build(head.n_features_in_, len(head.classes_))
    try:
        net.load_state_dict(load_file(str(path / MODEL_FILE)))
    except Exception as e:  # safetensors / torch errors on a damaged file become one line
        raise HeadError(
            f"cannot load the {head.name} weights in {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    net.eval()
    head.net_ = net
    return head


def pad(xs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of bags as one zero-padded float32 tensor (bags x max tiles x dims) and its mask."""
    import torch

    n = max(len(x) for x in xs)
    d = xs[0].shape[1]
    out = np.zeros((len(xs), n, d), np.float32)
    mask = np.zeros((len(xs), n), bool)
    for i, x in enumerate(xs):
        out[i, : len(x)] = x
        mask[i, : len(x)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)
