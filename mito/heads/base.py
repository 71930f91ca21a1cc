"""What every head shares: the error type, label encoding, input checks, feature noise and save/load."""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from mito.core.io import file_sha256
from mito.core.resources import available_memory, idle_cores  # noqa: F401  (re-exported; tests patch idle_cores here)
from mito.core.version import __version__
from mito.heads import model as model_registry
from mito.heads.errors import HeadError
from mito.heads.model import Callback, Model
from mito.heads.params import COMMON, Param, check_options, check_params, describe_params
from mito.heads.view_noise import VIEW_NOISE_MODES, augment_with_views

HEAD_FILE = "head.json"
_ROWS_PER_BLOCK = 16384
SMALL_DATA = 50_000_000  # rows x dims below which one thread is fastest (thread sync costs more, worse on a shared CPU)


# ---------------------------------------------------------------- registry (views of mito.heads.model's, level "tile")
# built-in tile heads, imported on first use (mito.heads.model.BUILTIN); heads that need more than features (class text
# embeddings, OPTIONAL_HEADS such as text-linear) are usable by name, left out of the default set (HEAD_NAMES)
BUILTIN_HEADS: dict[str, str] = {n: m for (lv, n), m in model_registry.BUILTIN.items() if lv == "tile"}
OPTIONAL_HEADS: dict[str, str] = {n: m for (lv, n), m in model_registry.OPTIONAL.items() if lv == "tile"}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: make a tile head available to make_head/load_head under ``name`` (duplicates fail)."""
    return model_registry.register("tile", name)


def head_class(name: str) -> type[Head]:
    """The tile head class registered under ``name`` (a built-in head's module is imported on first use)."""
    cls: type[Head] = model_registry.lookup("tile", name)
    return cls


def head_modules(names: Iterable[str]) -> tuple[str, ...]:
    """The modules the built-in heads ``names`` live in (what a worker imports before training them)."""
    return tuple(sorted({m for n in names if (m := model_registry.module_of("tile", n))}))


def head_names() -> tuple[str, ...]:
    """Built-in tile head names, the optional ones (text-linear), then any registered by other code, in registration order."""
    return model_registry.names("tile")


def head_param_help(name: str) -> list[str]:
    """One line per option of the tile head ``name``: allowed values, default and purpose (from its declaration)."""
    cls = head_class(name)
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    return describe_params(cls.param_spec, defaults)


def not_streamable(name: str) -> HeadError:
    """The error for a head that cannot train from a FeatureStream, naming those that can."""
    can = ", ".join(n for n in head_names() if head_class(n).supports_stream)
    return HeadError(f"the {name} head needs its features in memory; --stream works with {can}")


def make_head(name: str, **params: Any) -> Head:
    """Build a tile head by name; unknown or invalid options raise HeadError."""
    head: Head = model_registry.make("tile", name, **params)
    return head


def read_json_file(f: Path, what: str = "file") -> dict[str, Any]:
    """A JSON object from ``f``; a missing, empty or invalid file is a one-line HeadError naming it."""
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadError(f"{f} is missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadError(f"{f} is not a valid {what}: {str(e).splitlines()[0] or type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise HeadError(f"{f} is not a valid {what}: expected a JSON object")
    return doc


def check_sha256(f: Path, want: str | None) -> None:
    """Refuse a file whose SHA-256 is not the one recorded when it was written (nothing recorded: nothing checked)."""
    if want is None:
        return
    if not f.is_file():
        raise HeadError(f"{f} is missing")
    if file_sha256(f) != want:
        raise HeadError(f"{f} was changed or damaged after it was saved (SHA-256 mismatch); re-train or restore it")


def load_head(path: str | os.PathLike) -> Head:
    """Load a bare head saved with ``head.save(path)``; damaged files are one-line HeadErrors naming the file.

    For a model directory written by fit-head, ``mito.heads.load_head`` (mito.heads.predict.load_head) also
    applies the saved standardise/PCA pipeline.
    """
    path = Path(path)
    f = path / HEAD_FILE
    if not f.is_file():
        raise HeadError(f"no saved head in {path} (missing {HEAD_FILE})")
    meta = read_json_file(f, "head description")
    try:
        head = make_head(meta["head"], **meta["params"])
        classes = np.asarray(meta["classes"])
        n_features = int(meta["n_features_in"])
        state = meta.get("state", {})
        if classes.ndim != 1 or len(classes) < 2 or n_features < 1 or not isinstance(state, dict):
            raise ValueError("classes, n_features_in or state out of range")
    except (KeyError, TypeError, ValueError) as e:
        raise HeadError(f"{f} is not a valid head description: {type(e).__name__} {e}") from None
    for name, want in (meta.get("sha256") or {}).items():
        check_sha256(path / name, want)
    head.classes_ = classes
    head.n_features_in_ = n_features
    try:
        head._load_state(path, state)
    except HeadError:
        raise
    except Exception as e:  # any library's error on a damaged weight file (safetensors, LightGBM, torch) becomes one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HeadError(f"cannot load the {head.name} weights in {path}: {msg}") from None
    return head


# ---------------------------------------------------------------- the shared contract
@dataclass(frozen=True)
class FitArgs:
    """What Head.fit hands a head's ``_fit`` beside the rows: the training rows' augmented views (noise modes views and
    view-cov) and the epoch callbacks; held only while fitting."""

    views: np.ndarray | None = None
    callbacks: Sequence[Callback] = ()


class FittedHead(Model, Protocol):
    """The tile-level refinement of the one contract (mito.heads.model.Model): a fitted Head, or an Ensemble of heads
    (mito.heads.ensemble), which also tell their input width and options."""

    @property
    def classes_(self) -> np.ndarray: ...

    @property
    def n_features_in_(self) -> int: ...

    def predict_proba(self, X: Any) -> np.ndarray: ...

    def get_params(self) -> dict[str, Any]: ...

    def save(self, path: str | Path) -> None: ...


class Head(ClassifierMixin, BaseEstimator):
    """Shared plumbing for heads: sklearn-style params, label encoding, predict, save; subclasses add the model."""

    level: ClassVar[str] = "tile"
    name: str = ""
    supports_stream: bool = False  # True when the head can train from a FeatureStream (fit_stream)
    param_spec: ClassVar[dict[str, Param]] = dict(COMMON)  # every option, declared once (mito.heads.params)

    @classmethod
    def create(cls, **params: Any) -> Head:
        """This head with ``params``; unknown or invalid options raise HeadError."""
        check_options(cls.name, cls._get_param_names(), params)
        head = cls(**params)
        head._validate_params()
        return head

    def _validate_params(self) -> None:
        """One-line HeadError naming the head, the option and its allowed values (from ``param_spec``)."""
        check_params(self.name, self.param_spec, self.get_params())

    # -- subclasses implement these

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None, extra: FitArgs) -> None:
        raise NotImplementedError

    def _proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _save_state(self, path: Path) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _fit_stream(self, train: Any, y: np.ndarray, val: Any, y_val: np.ndarray | None, callbacks: Sequence[Callback] = ()) -> None:
        raise NotImplementedError

    # -- the public interface (mito.heads.model.Model)
    def fit(
        self, X: Any, y: Any = None, *, eval_set: Any = None, views: np.ndarray | None = None, callbacks: Sequence[Callback] = ()
    ) -> Head:
        """Train on (X, y): X rows x dims, or a FeatureStream (features read from the store chunk by chunk, its labels
        as y; only heads with ``supports_stream``). ``eval_set`` (X_val, y_val), or a validation FeatureStream, drives
        early stopping; ``views`` (V, n, d): the training rows' augmented views, for the noise modes views and
        view-cov (held only while fitting); ``callbacks`` are told after every epoch. Returns self."""
        self._validate_params()
        if is_stream(X):
            return self._fit_from_stream(X, eval_set, callbacks)
        X = check_X(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise HeadError(f"y must be one label per row of X ({len(X)} rows), got shape {y.shape}")
        yi = self._learn_classes(y)
        self.n_features_in_ = X.shape[1]
        X_val, yv = self._eval_rows(eval_set)
        with cpu_threads(X.size, self._requested_threads()):
            self._fit(X, yi.astype(np.int64), X_val, yv, FitArgs(views, tuple(callbacks)))
        return self

    def _eval_rows(self, eval_set: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The validation rows of ``eval_set`` (X_val, y_val), checked and encoded; (None, None) when there are none."""
        if eval_set is None:
            return None, None
        if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2 or eval_set[0] is None or eval_set[1] is None:
            raise HeadError("eval_set must be a pair (X_val, y_val)")
        X_val = check_X(eval_set[0], self.n_features_in_)
        yv = self._encode(eval_set[1])
        if len(yv) != len(X_val):
            raise HeadError(f"y_val has {len(yv)} labels for {len(X_val)} rows")
        return (None, None) if len(yv) == 0 else (X_val, yv)

    def _fit_from_stream(self, train: Any, val: Any, callbacks: Sequence[Callback]) -> Head:
        """Train from FeatureStreams (features read from the store chunk by chunk); only heads with ``supports_stream``."""
        if not self.supports_stream:
            raise not_streamable(self.name)
        y = np.asarray(train.labels)
        if len(y) == 0:
            raise HeadError("no rows to work on")
        yi = self._learn_classes(y)
        self.n_features_in_ = train.d
        yv = None
        if val is not None:
            if val.d != train.d:
                raise HeadError(f"validation features have {val.d} dims, training features {train.d}")
            yv = self._encode(val.labels)
            if len(yv) == 0:
                val, yv = None, None
        # one core stays with the thread that reads and decompresses the next shuffle buffer
        with cpu_threads(train.n * train.d, self._requested_threads(), reserve=1):
            self._fit_stream(train, yi.astype(np.int64), val, yv, callbacks)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per entry of ``classes_``; X rows x dims, or a FeatureStream (every row, in
        row order, predicted block by block)."""
        self._check_fitted()
        if is_stream(X):
            with cpu_threads(X.n * X.d, self._requested_threads()):  # set up once, not per block
                return X.map(lambda b: np.asarray(self._proba(check_X(b, self.n_features_in_)), dtype=np.float64))
        X = check_X(X, self.n_features_in_)
        with cpu_threads(X.size, self._requested_threads()):
            return np.asarray(self._proba(X), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Head:
        """A head saved with ``save`` (mito.heads.base.load_head)."""
        return load_head(path)

    def save(self, path: str | os.PathLike) -> None:
        """Write the head to a folder: head.json plus the model file (safetensors or native)."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self._save_state(path)
        files = [state["file"]] if isinstance(state.get("file"), str) else []
        meta = {
            "head": self.name,
            "params": self.get_params(),
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "state": state,
            "sha256": {name: file_sha256(path / name) for name in files},
            "mito_version": __version__,
        }
        (path / HEAD_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    # -- helpers
    def _learn_classes(self, y: np.ndarray) -> np.ndarray:
        """Set ``classes_`` from training labels (no missing ones, at least two classes); the labels as class indices."""
        if len(y) and _has_missing(y):
            raise HeadError("y holds missing labels; drop unlabelled rows before fitting")
        classes, yi = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise HeadError(f"need at least two classes to train, got {len(classes)} ({', '.join(map(str, classes))})")
        self.classes_ = classes
        return yi

    def _requested_threads(self) -> int | None:
        return getattr(self, "n_threads", None)

    def _encode(self, y: Any) -> np.ndarray:
        y = np.asarray(y)
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        try:
            return np.array([index[v] for v in y.tolist()], dtype=np.int64)
        except KeyError as e:
            raise HeadError(
                f"the validation rows hold label {e.args[0]!r}, which no training row has (training classes: "
                f"{', '.join(map(repr, self.classes_.tolist()))}): every slide/group with it fell on the validation side; "
                "give that class more slides or groups, use fewer folds, or set the split with a split column"
            ) from None

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise HeadError(f"this {self.name} head is not fitted yet; call fit first")

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


@dataclass(eq=False, repr=False)
class CopiesHead(Head):
    """The options of the whole-array heads (logreg, knn, lightgbm): they take feature noise as ``noise_copies`` noisy
    copies of the training rows (a fresh draw each). Heads declare their options as dataclass fields: the constructor's
    signature scikit-learn's get_params reads."""

    noise: float = 0.0
    noise_mode: str = "global"
    noise_copies: int = 4
    n_threads: int | None = None
    seed: int = 0

    def _with_copies(self, X: np.ndarray, y: np.ndarray, extra: FitArgs) -> tuple[np.ndarray, np.ndarray]:
        """The training rows plus their noisy copies (or their augmented views, noise modes views and view-cov)."""
        return augment_with_noise(X, y, self.noise, self.noise_mode, self.noise_copies, self.seed, extra.views)


def _has_missing(y: np.ndarray) -> bool:
    if y.dtype.kind == "f":
        return bool(np.isnan(y).any())
    if y.dtype.kind == "O":
        return any(v is None or (isinstance(v, float) and np.isnan(v)) for v in y.tolist())
    return False


@contextmanager
def cpu_threads(n_values: int, requested: int | None = None, reserve: int = 0) -> Iterator[None]:
    """Run torch and BLAS/OpenMP with ``requested`` threads, else a default (see default_threads) less ``reserve``
    cores kept for other work of this process (at least one thread), then restore."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # torch's own pool only matters once torch is in use; never import it for this
    available = torch.get_num_threads() if torch is not None else (os.cpu_count() or 1)
    n = requested or max(1, default_threads(n_values, available) - reserve)
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        if torch is not None and before is not None:
            torch.set_num_threads(before)


def default_threads(n_values: int, available: int) -> int:
    """One thread for small data; for big data, the cores other processes leave idle right now, at least one.

    Threads that wait on a core busy with another process stall every parallel step: on a shared 2-core
    machine two threads trained 3x slower than one.
    """
    if n_values < SMALL_DATA:
        return 1
    idle = idle_cores()
    if idle is None:
        try:
            idle = (os.cpu_count() or 1) - os.getloadavg()[0]
        except OSError:
            idle = available
    return int(max(1, min(available, round(idle))))


# ---------------------------------------------------------------- inputs
def is_stream(X: Any) -> bool:
    """True for a FeatureStream (mito.heads.stream): rows read from the store chunk by chunk, labels with them."""
    return hasattr(X, "shuffled") and hasattr(X, "map") and hasattr(X, "labels")


def iter_blocks(n: int, size: int = _ROWS_PER_BLOCK) -> Iterator[slice]:
    """Row slices of at most ``size`` rows covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def check_X(X: Any, n_features: int | None = None) -> np.ndarray:
    """A 2-D float array (float16 kept as is, to bound memory); NaN/inf or a wrong width raise HeadError."""
    if not isinstance(X, np.ndarray) or X.dtype.kind != "f":
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError):
            raise HeadError("features must be numbers") from None
    if X.ndim != 2:
        raise HeadError(f"features must be a 2-D array (rows x dims), got {X.ndim}-D")
    if X.shape[0] == 0:
        raise HeadError("no rows to work on")
    if n_features is not None and X.shape[1] != n_features:
        raise HeadError(f"features have {X.shape[1]} dims, the head was trained on {n_features}")
    for s in iter_blocks(len(X)):
        if not np.isfinite(X[s]).all():
            raise HeadError("features hold NaN or infinite values (unreadable tiles?); drop those rows first")
    return X


def stat_block_rows(d: int) -> int:
    """Rows per block for float64 column statistics: about 16 MiB per block whatever the width."""
    return max(64, (1 << 21) // max(1, d))


def column_moments(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and variance of row blocks, accumulated in float64 (one pass, no full-size temporary)."""
    n, total, sq = 0, None, None
    for block in blocks:
        d = block.shape[1]
        for s in iter_blocks(len(block), stat_block_rows(d)):
            b = block[s].astype(np.float64)
            total = b.sum(axis=0) if total is None else total + b.sum(axis=0)
            sq = np.square(b).sum(axis=0) if sq is None else sq + np.square(b).sum(axis=0)
        n += len(block)
    if not n or total is None or sq is None:
        raise HeadError("no rows to compute feature statistics on")
    mean = total / n
    return mean, np.maximum(sq / n - mean**2, 0.0)


def column_variance(X: np.ndarray) -> np.ndarray:
    """Per-column variance computed block by block in float64 (no full-size temporary)."""
    return column_moments([X])[1]


# ---------------------------------------------------------------- feature noise
def noise_variance(X: np.ndarray, noise: float, mode: str) -> np.ndarray:
    """Per-dimension variance of the training noise.

    ``global``: one sigma for every dimension, ``noise`` times the root-mean-square spread of the features;
    ``per-dim``: dimension j gets ``noise`` times its own standard deviation;
    ``absolute``: ``noise`` is the sigma itself, in feature units.
    """
    return noise_variance_from(lambda: column_variance(X), X.shape[1], noise, mode)


def noise_variance_from(variance: Callable[[], np.ndarray], d: int, noise: float, mode: str) -> np.ndarray:
    """noise_variance with the features' per-column variance given by a callable (called only when a mode needs it)."""
    if noise == 0:
        return np.zeros(d)
    if mode == "absolute":
        return np.full(d, float(noise) ** 2)
    var = variance()
    if mode == "per-dim":
        return noise**2 * var
    return np.full(d, noise**2 * float(var.mean()))


def augment_with_noise(
    X: np.ndarray, y: np.ndarray, noise: float, mode: str, copies: int, seed: int, views: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Training set plus ``copies`` noisy copies (a fresh draw each): feature noise for heads without batches.
    ``views`` (V, n, d): the rows' augmented views, for the noise modes ``views`` and ``view-cov``."""
    if mode in VIEW_NOISE_MODES:
        if views is None:
            raise HeadError(f"noise_mode {mode} needs the tiles' augmented views: train through fit-head or bench")
        return augment_with_views(X, y, views, mode, copies, float(noise) or 1.0, seed)
    if noise == 0 or copies == 0:
        return X, y
    sd = np.sqrt(noise_variance(X, noise, mode)).astype(np.float32)
    rng = np.random.default_rng(seed)
    X32 = X.astype(np.float32, copy=False)
    noisy = [X32 + rng.standard_normal(X.shape, dtype=np.float32) * sd for _ in range(copies)]
    return np.concatenate([X32, *noisy]), np.concatenate([y] * (copies + 1))


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights n / (k * n_c), mean 1 over the training rows."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return len(y) / (n_classes * np.maximum(counts, 1.0))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (no warning when a class is absent)."""
    present = np.unique(y)
    return float(np.mean([(pred[y == c] == c).mean() for c in present]))
