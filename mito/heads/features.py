"""Feature selection from the store (fixed-order concatenation, metadata one-hots) and the saved preprocessing pipeline."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mito.heads.base import HeadError, check_sha256, column_moments, file_sha256, iter_blocks
from mito.store import Store, StoreError, open_store

PIPELINE_FILE = "pipeline.safetensors"
PCA_FIT_ROWS = 50_000


def _as_store(store: Store | str | os.PathLike) -> Store:
    return store if isinstance(store, Store) else open_store(store, "r")


def metadata_categories(tiles: pd.DataFrame, columns: Sequence[str]) -> dict[str, list[str]]:
    """Sorted distinct non-empty values of each metadata column (the one-hot vocabulary)."""
    out = {}
    for c in columns:
        if c not in tiles:
            raise HeadError(f"no metadata column {c!r} in the tile table (it has: {', '.join(tiles.columns)})")
        vals = tiles[c].dropna().astype(str)
        out[c] = sorted(set(vals[vals != ""]))
    return out


def one_hot(tiles: pd.DataFrame, rows: np.ndarray, categories: Mapping[str, Sequence[str]]) -> np.ndarray:
    """One 0/1 column per (column, category) in vocabulary order; unseen or missing values give all zeros."""
    blocks = []
    for c, cats in categories.items():
        if c not in tiles:
            raise HeadError(f"the model needs metadata column {c!r}, which this tile table lacks")
        vals = tiles[c].iloc[rows].astype(object).map(lambda v: None if v is None or v != v else str(v)).to_numpy()
        blocks.append((vals[:, None] == np.asarray(cats, dtype=object)[None, :]).astype(np.float32))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0), np.float32)


def feature_dims(store: Store, keys: Sequence[str]) -> list[int]:
    """Width of each chosen variant."""
    return [int(store.variant_info(k)["dim"]) for k in keys]


def select_features(
    store: Store | str | os.PathLike,
    keys: Sequence[str],
    rows: np.ndarray | None = None,
    metadata_columns: Sequence[str] = (),
    categories: Mapping[str, Sequence[str]] | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Features of ``keys`` concatenated in the given order, then metadata one-hots; read chunk by chunk into one array."""
    s = _as_store(store)
    keys = list(keys)
    if not keys:
        raise HeadError("choose at least one feature variant")
    if len(set(keys)) != len(keys):
        raise HeadError(f"a feature variant is listed twice: {', '.join(keys)}")
    rows = np.arange(s.n_tiles) if rows is None else np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    if len(np.unique(rows)) != len(rows):
        raise HeadError("rows must not repeat")
    if len(rows) and (rows.min() < 0 or rows.max() >= s.n_tiles):
        raise HeadError(f"row index out of range for a store of {s.n_tiles} tiles")
    if categories is None:
        categories = metadata_categories(s.tiles, metadata_columns) if metadata_columns else {}
    d = sum(feature_dims(s, keys))
    meta = one_hot(s.tiles, rows, categories) if categories else np.zeros((len(rows), 0), np.float32)  # no tile table read
    out = np.empty((len(rows), d + meta.shape[1]), dtype=dtype)
    where = np.full(s.n_tiles, -1, np.int64)
    where[rows] = np.arange(len(rows))
    for idx, block in s.iter_chunks(keys, rows, dtype=np.float16 if np.dtype(dtype) == np.float16 else np.float32):
        out[where[idx], :d] = block
    out[:, d:] = meta
    return out


@dataclass
class FeaturePipeline:
    """Optional standardisation then PCA of the embedding columns, fitted on training rows and saved with the model."""

    standardize: bool = False
    pca: int | None = None
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    components_: np.ndarray | None = None
    pca_mean_: np.ndarray | None = None
    explained_variance_ratio_: float | None = field(default=None)

    @property
    def active(self) -> bool:
        """True when the pipeline changes the features."""
        return self.standardize or bool(self.pca)

    def out_dim(self, d: int) -> int:
        """Width after the pipeline for d input dims."""
        return int(self.pca) if self.pca else d

    def fit(self, X: np.ndarray, seed: int = 0) -> FeaturePipeline:
        """Learn the mean/scale (all rows, in blocks) and PCA (on at most PCA_FIT_ROWS rows)."""
        n, d = X.shape
        mean, var = column_moments([X]) if self.standardize else (None, None)

        def sample(k: int) -> np.ndarray:
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(n, k, replace=False)) if n > k else slice(None)
            return X[pick].astype(np.float32)

        return self.fit_from(n, d, mean, var, sample, seed)

    def fit_from(
        self,
        n: int,
        d: int,
        mean: np.ndarray | None,
        var: np.ndarray | None,
        sample: Callable[[int], np.ndarray],
        seed: int = 0,
    ) -> FeaturePipeline:
        """Fit from column moments of the n x d training features and ``sample(k)``, k random rows of them (for PCA)."""
        if self.pca is not None and not 1 <= self.pca <= min(n, d):
            raise HeadError(f"pca must be between 1 and min(rows, dims) = {min(n, d)}, got {self.pca}")
        if self.standardize:
            if mean is None or var is None:
                raise HeadError("standardize needs the column mean and variance")
            sd = np.sqrt(var)
            self.mean_ = mean.astype(np.float32)
            self.scale_ = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        if self.pca:
            from sklearn.decomposition import PCA

            rows = self._standardized(sample(PCA_FIT_ROWS).astype(np.float32, copy=False))
            p = PCA(n_components=self.pca, random_state=seed, svd_solver="auto").fit(rows)
            self.components_ = p.components_.astype(np.float32)
            self.pca_mean_ = p.mean_.astype(np.float32)
            self.explained_variance_ratio_ = float(p.explained_variance_ratio_.sum())
        return self

    def _standardized(self, b: np.ndarray) -> np.ndarray:
        if self.standardize:
            b = (b - self.mean_) / self.scale_
        return b

    def transform(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Apply block by block into ``out`` (may be X itself when the width is unchanged) or a new array of X's dtype."""
        if not self.active:
            return X
        n, d = X.shape
        if out is None:
            out = np.empty((n, self.out_dim(d)), dtype=X.dtype)
        for s in iter_blocks(n):
            b = self._standardized(X[s].astype(np.float32))
            if self.pca:
                assert self.components_ is not None and self.pca_mean_ is not None, "transform before fit"
                b = (b - self.pca_mean_) @ self.components_.T
            out[s] = b
        return out

    def config(self) -> dict[str, Any]:
        """Settings for config.json."""
        return {"standardize": self.standardize, "pca": self.pca, "pca_explained_variance": self.explained_variance_ratio_}

    def save(self, path: Path) -> str | None:
        """Write the fitted arrays to pipeline.safetensors (nothing when inactive); return the file's SHA-256."""
        from safetensors.numpy import save_file

        arrays = {k: getattr(self, k) for k in ("mean_", "scale_", "components_", "pca_mean_") if getattr(self, k) is not None}
        if not arrays:
            return None
        save_file({k.rstrip("_"): np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / PIPELINE_FILE))
        return file_sha256(path / PIPELINE_FILE)

    @classmethod
    def load(cls, path: Path, cfg: Mapping[str, Any]) -> FeaturePipeline:
        """Rebuild from config.json settings and pipeline.safetensors."""
        from safetensors.numpy import load_file

        pca = cfg.get("pca")
        if pca is not None and (not isinstance(pca, int) or isinstance(pca, bool) or pca < 1):
            raise HeadError(f"{path / 'config.json'} has an invalid pipeline setting pca={pca!r}")
        p = cls(standardize=bool(cfg.get("standardize")), pca=pca)
        p.explained_variance_ratio_ = cfg.get("pca_explained_variance")
        if p.active:
            f = path / PIPELINE_FILE
            if not f.is_file():
                raise HeadError(f"{path} lacks {PIPELINE_FILE} for its standardize/pca settings")
            check_sha256(f, cfg.get("sha256"))
            try:
                arrays = load_file(str(f))
            except Exception as e:  # safetensors' error on a damaged file becomes one line naming it
                raise HeadError(f"cannot load {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            unknown = set(arrays) - {"mean", "scale", "components", "pca_mean"}
            if unknown:
                raise HeadError(f"{f} holds unexpected arrays {', '.join(sorted(unknown))}")
            for k, v in arrays.items():
                setattr(p, k + "_", v)
            if p.standardize and (p.mean_ is None or p.scale_ is None):
                raise HeadError(f"{f} lacks the standardisation arrays")
            if p.pca and (p.components_ is None or p.pca_mean_ is None or p.components_.shape[0] != p.pca):
                raise HeadError(f"{f} lacks the PCA arrays for pca={p.pca}")
        return p

    @property
    def in_dim(self) -> int | None:
        """Width of the raw features the fitted pipeline expects (None when inactive)."""
        for a in (self.mean_, self.pca_mean_):
            if a is not None:
                return int(a.shape[-1])
        return None


def check_store_matches(store: Store, variants: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a store whose variants were made with another backbone, weights or preprocessing than the model's."""
    for key, want in variants.items():
        try:
            have = store.variant_info(key)
        except StoreError:
            raise HeadError(
                f"{store.path} has no {key} features, which the model needs (it has: {', '.join(store.variants) or 'none'})"
            ) from None
        for field_ in ("backbone", "weights_sha256", "dim", "preprocessing", "slide_tiling"):
            if have.get(field_) != want.get(field_):
                if field_ == "preprocessing":
                    diff = sorted(
                        k
                        for k in set(have.get(field_) or {}) | set(want.get(field_) or {})
                        if (have.get(field_) or {}).get(k) != (want.get(field_) or {}).get(k)
                    )
                    detail = f"preprocessing differs in {', '.join(diff)}"
                else:
                    detail = f"{field_} is {_short(have.get(field_))}, the model's is {_short(want.get(field_))}"
                raise HeadError(f"{store.path} was made differently from the model's training store for {key}: {detail}")


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] + "..." if len(s) > 16 else s
