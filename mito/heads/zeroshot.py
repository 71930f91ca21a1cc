"""Zero-shot tile classification with a vision-language backbone: prompts -> class text embeddings -> cosine x scale.

Text embeddings are computed once per (backbone, weights, prompts) and cached beside the store as JSON
(``<store>.text/<backbone>-<key>.json``, with the tokenizer and weights sha256), one entry per distinct prompt context.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field

from mito.core.io import write_json
from mito.core.metrics import classification_metrics
from mito.core.sections import OutputSection, PositiveSection, StoreSection
from mito.core.tasks import choose_positive, default_task, resolve_task, task_labels
from mito.datasets import PROXY_TASKS
from mito.heads.base import HeadError
from mito.store import open_store

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts"
DEFAULT_PROMPTS = {"mitosis": "mitosis.json", "tissue": "tissue.json"}


# ------------------------------------------------------------------ prompts
def load_prompts(path: str | Path) -> dict[str, list[str]]:
    """Prompt templates per class from a JSON object ``{"class": ["prompt", ...]}``; a shipped set by name (mitosis, tissue)."""
    p = Path(path)
    if not p.exists() and str(path) in DEFAULT_PROMPTS:
        p = PROMPTS_DIR / DEFAULT_PROMPTS[str(path)]
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadError(f"prompts file {p} does not exist (or name a shipped set: {', '.join(DEFAULT_PROMPTS)})") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HeadError(f"prompts file {p} is not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or len(doc) < 2:
        raise HeadError(f"prompts file {p} must map at least two class names to lists of prompts")
    out: dict[str, list[str]] = {}
    for c, prompts in doc.items():
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(t, str) and t.strip() for t in prompts):
            raise HeadError(f"prompts file {p}: class {c!r} needs a non-empty list of prompt strings")
        out[str(c)] = [t.strip() for t in prompts]
    return out


def default_prompts(task: str | None) -> Path | None:
    """The shipped prompt set for a task (mitosis), if there is one."""
    name = DEFAULT_PROMPTS.get(task or "")
    return PROMPTS_DIR / name if name else None


def with_context(prompt: str, context: str) -> str:
    """A prompt with its tile's context: ``{context}`` in the prompt is replaced, else the context is appended."""
    if not context:
        return prompt.replace("{context}", "").strip()
    return prompt.replace("{context}", context) if "{context}" in prompt else f"{prompt}, {context}"


def tile_contexts(tiles: pd.DataFrame, template: str | None) -> list[str]:
    """The context text of every tile: ``template`` formatted with its tile-table columns ('' without a template)."""
    if not template:
        return [""] * len(tiles)
    import string

    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [n for n in names if n not in tiles]
    if missing:
        raise HeadError(
            f"--prompt-context names column {missing[0]!r}, which the tile table lacks (it has: {', '.join(map(str, tiles.columns))})"
        )
    out = []
    for row in tiles[names].itertuples(index=False) if names else [()] * len(tiles):
        vals = dict(zip(names, row))
        if any(v is None or (isinstance(v, float) and math.isnan(v)) or v == "" for v in vals.values()):
            out.append("")  # a tile without the metadata gets the plain prompts
        else:
            out.append(template.format(**{k: str(v) for k, v in vals.items()}))
    return out


# ------------------------------------------------------------------ scoring
def ensemble(prompt_embeddings: np.ndarray) -> np.ndarray:
    """Prompt ensembling: the mean of L2-normalised prompt embeddings [n, D], renormalised to unit length [D]."""
    e = np.asarray(prompt_embeddings, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    m = e.mean(axis=0)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def zero_shot_logits(features: np.ndarray, text: np.ndarray, scale: float) -> np.ndarray:
    """``scale`` x cosine similarity of each feature row [n, D] with each class text embedding [k, D] -> [n, k]."""
    X = np.asarray(features, dtype=np.float64)
    T = np.asarray(text, dtype=np.float64)
    if X.shape[1] != T.shape[1]:
        raise HeadError(f"features have {X.shape[1]} dims, the text embeddings {T.shape[1]}: use one variant of the same backbone")
    X = X / np.linalg.norm(X, axis=1, keepdims=True).clip(1e-12)
    T = T / np.linalg.norm(T, axis=1, keepdims=True).clip(1e-12)
    return scale * X @ T.T


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zero_shot_proba(features: np.ndarray, text: np.ndarray, scale: float, context_index: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities; ``text`` is [k, D], or [n_contexts, k, D] with each row's ``context_index``."""
    text = np.asarray(text)
    if text.ndim == 2:
        return softmax(zero_shot_logits(features, text, scale))
    if context_index is None:
        raise HeadError(f"{text.shape[0]} text matrices (one per context) need each row's context_index")
    out = np.zeros((len(features), text.shape[1]))
    for c in np.unique(context_index):
        rows = context_index == c
        out[rows] = softmax(zero_shot_logits(features[rows], text[c], scale))
    return out


# ------------------------------------------------------------------ the text-embedding cache
@dataclass
class TextEmbeddings:
    """Class text embeddings of one (backbone, weights, prompts), per prompt context ('' = the plain prompts)."""

    backbone: str
    weights_sha256: str
    prompts: dict[str, list[str]]
    logit_scale: float = 100.0
    tokenizer: str = ""
    tokenizer_sha256: str = ""
    contexts: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Class names in prompt-file order."""
        return list(self.prompts)

    def matrix(self, context: str = "", classes: list[str] | None = None) -> np.ndarray:
        """[k, D] unit-length class embeddings for ``classes`` (default: all, in prompt order)."""
        rows = self.contexts[context]
        idx = [self.classes.index(c) for c in (classes or self.classes)]
        return np.asarray([rows[i] for i in idx], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able document."""
        return {
            "kind": "mito text embeddings",
            "backbone": self.backbone,
            "weights_sha256": self.weights_sha256,
            "tokenizer": self.tokenizer,
            "tokenizer_sha256": self.tokenizer_sha256,
            "logit_scale": self.logit_scale,
            "classes": self.classes,
            "prompts": self.prompts,
            "contexts": self.contexts,
        }


def cache_key(backbone: str, weights_sha256: str, prompts: dict[str, list[str]]) -> str:
    """Identifies a text-embedding file: backbone, weights and the prompts themselves."""
    doc = json.dumps({"backbone": backbone, "weights": weights_sha256, "prompts": prompts}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def cache_path(store: str | Path, backbone: str, weights_sha256: str, prompts: dict[str, list[str]]) -> Path:
    """Where the text embeddings of a store's backbone live: ``<store>.text/<backbone>-<key>.json`` beside the store."""
    s = Path(str(store).rstrip("/"))
    return s.parent / (s.name + ".text") / f"{backbone}-{cache_key(backbone, weights_sha256, prompts)}.json"


def read_text_embeddings(path: str | Path) -> TextEmbeddings:
    """Read a text-embedding file written by mito zero-shot (or bench --zero-shot); bad files are one-line errors."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        te = TextEmbeddings(
            backbone=str(doc["backbone"]),
            weights_sha256=str(doc["weights_sha256"]),
            prompts=dict(doc["prompts"]),
            logit_scale=float(doc["logit_scale"]),
            tokenizer=str(doc.get("tokenizer", "")),
            tokenizer_sha256=str(doc.get("tokenizer_sha256", "")),
            contexts=dict(doc["contexts"]),
        )
    except FileNotFoundError:
        raise HeadError(f"text embeddings {p} do not exist: run mito zero-shot (it writes them and prints the path)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HeadError(f"{p} is not a mito text-embedding file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if "" not in te.contexts and not te.contexts:
        raise HeadError(f"{p} holds no text embeddings")
    return te


def write_text_embeddings(te: TextEmbeddings, path: Path) -> Path:
    """Write (atomically) a text-embedding file."""

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, te.to_json(), indent=None)


def text_embeddings(
    store: str,
    backbone: str,
    weights_sha256: str,
    prompts: dict[str, list[str]],
    contexts: list[str],
    encoder_factory: Any,
    progress: bool = False,
) -> tuple[TextEmbeddings, Path, bool]:
    """The cached text embeddings for ``contexts``, computing (and caching) only the missing ones.

    ``encoder_factory()`` builds the VLM encoder, called only on a cache miss. Returns (embeddings, file, computed).
    """
    from mito.backbones.vlm import encode_texts, logit_scale, tokenizer_for  # loads torch: only when zero-shot runs

    path = cache_path(store, backbone, weights_sha256, prompts)
    te = read_text_embeddings(path) if path.is_file() else TextEmbeddings(backbone, weights_sha256, prompts)
    todo = [c for c in dict.fromkeys(contexts) if c not in te.contexts]
    if not todo:
        return te, path, False

    enc = encoder_factory()
    tok = tokenizer_for(enc)
    classes = te.classes
    texts = [with_context(p, ctx) for ctx in todo for c in classes for p in prompts[c]]
    emb = encode_texts(enc, tok, texts).numpy()
    pos = 0
    for ctx in todo:
        rows = []
        for c in classes:
            n = len(prompts[c])
            rows.append([round(float(v), 7) for v in ensemble(emb[pos : pos + n])])
            pos += n
        te.contexts[ctx] = rows
    te.logit_scale, te.tokenizer, te.tokenizer_sha256 = logit_scale(enc), tok.name, tok.sha256
    try:
        write_text_embeddings(te, path)
    except OSError:  # a read-only place beside the store: keep going without the cache
        pass
    return te, path, True


# ------------------------------------------------------------------ mito zero-shot
class ZeroShotConfig(PositiveSection, OutputSection, StoreSection):
    """One `mito zero-shot` run: a store's tiles scored against text prompts (validated; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(
        description="Store extracted with a vision-language backbone (conch, plip, quiltnet-b-32).", examples=["runs/vlm.zarr"]
    )
    backbone: str = Field(description="The vision-language backbone whose features and text tower to use.", examples=["plip"])
    prompts: str = Field(description="JSON {class: [prompt, ...]}, or a shipped set: mitosis, tissue.", examples=["mitosis"])
    out: str = Field(description="CSV to write: tile_id, path, label when known, pred, p_<class>.", examples=["zero-shot.csv"])
    weights: str | None = Field(None, description="Weight file or snapshot folder (as for mito extract).")
    task: str | None = Field(None, description="Label column or proxy task for metrics and the class set (default: the store's only task).")
    prompt_context: str | None = Field(None, description="Tile-table columns formatted into every prompt, e.g. '{dataset} scanner'.")
    variant: str | None = Field(None, description="Store variant to score, e.g. z1:rgb (default z1:rgb, else the backbone's first).")
    device: str = Field("auto", description="Text-tower device: auto, cpu or cuda.")


@dataclass
class ZeroShotResult:
    """Per-tile predictions, metrics on the labelled tiles (None without labels) and where the text embeddings are."""

    predictions: pd.DataFrame
    metrics: dict[str, Any] | None
    text_file: Path
    feature: str
    classes: list[str]
    computed: bool
    seconds: float


def pick_variant(variants: list[str], backbone: str, wanted: str | None = None) -> str:
    """The store key zero-shot scores: ``wanted``, else ``<backbone>:z1:rgb``, else the backbone's first variant."""
    own = [k for k in variants if k.split(":")[0] == backbone]
    if wanted:
        key = wanted if ":" in wanted else f"{backbone}:{wanted}"
        if key not in own:
            raise HeadError(f"variant {key!r} is not in the store (its {backbone} variants: {', '.join(own) or 'none'})")
        return key
    if not own:
        have = sorted({k.split(":")[0] for k in variants})
        raise HeadError(
            f"the store has no {backbone} features (it has: {', '.join(have) or 'none'}); run mito extract --backbone {backbone} first"
        )
    return f"{backbone}:z1:rgb" if f"{backbone}:z1:rgb" in own else own[0]


def task_classes(prompts: dict[str, list[str]], classes: list[str], where: str) -> None:
    """Every task class needs prompts."""
    missing = [c for c in classes if c not in prompts]
    if missing:
        raise HeadError(
            f"{where} has no prompts for class {missing[0]!r} (task classes: {', '.join(classes)}; prompt classes: {', '.join(prompts)})"
        )


def run_zero_shot(
    store: str,
    backbone: str,
    prompts_file: str,
    weights: str | None = None,
    task: str | None = None,
    context: str | None = None,
    variant: str | None = None,
    device: str = "cpu",
    progress: bool = False,
    positive: str | None = None,
) -> ZeroShotResult:
    """Score every tile of ``store`` against the prompts' classes with ``backbone``'s text tower (two classes: metrics
    of ``positive``, else of the minority class of the labelled tiles, as there are no training rows)."""
    from mito.backbones import create_backbone  # loads torch: only when zero-shot runs
    from mito.backbones.vlm import vlm_spec

    t0 = time.perf_counter()
    spec = vlm_spec(backbone)
    prompts = load_prompts(prompts_file)
    with open_store(store) as s:
        key = pick_variant([k for k in s.variants if s.is_complete(k)], backbone, variant)
        tiles = s.tiles
        unreadable = np.asarray(s.unreadable, dtype=bool)
        info = s.variant_info(key)
        y, classes, pos, pos_source = None, list(prompts), None, ""
        if task or s.tasks:
            spec_t = resolve_task(tiles, default_task(s.tasks, task), PROXY_TASKS)
            y, classes = task_labels(tiles, spec_t, min_per_class=1)
            task_classes(prompts, classes, str(prompts_file))
            pos, pos_source = choose_positive(y[~unreadable], classes, positive)
        ctx = tile_contexts(tiles, context)
        sha = _weights_sha(store, backbone, spec.name, key, str(info.get("weights_sha256") or ""), prompts, ctx, weights)
        te, tfile, computed = text_embeddings(
            store, backbone, sha, prompts, ctx, lambda: create_backbone(spec.name, weights=weights, device=device), progress
        )
        distinct = list(dict.fromkeys(ctx))
        cidx = np.array([distinct.index(c) for c in ctx]) if len(distinct) > 1 else np.zeros(len(ctx), int)
        T = np.stack([te.matrix(c, classes) for c in distinct])
        proba = np.zeros((s.n_tiles, len(classes)))
        for rows, X in s.iter_chunks([key]):
            proba[rows] = zero_shot_proba(X, T, te.logit_scale, cidx[rows])
    df = _scores_frame(tiles, ctx if context else None, y, classes, proba)[~unreadable].reset_index(drop=True)
    metrics = _zero_shot_metrics(df, proba[~unreadable], classes, pos, pos_source) if y is not None else None
    return ZeroShotResult(df, metrics, tfile, key, classes, computed, time.perf_counter() - t0)


def _weights_sha(store: str, backbone: str, name: str, key: str, stored: str, prompts: Any, ctx: list[str], weights: str | None) -> str:
    """The SHA-256 of the text tower's weights: the store's, or (when texts must be embedded, or weights were given)
    that of the weights file, checked against the store's."""
    from mito.backbones import get_backbone, resolve_weights
    from mito.backbones.registry import RANDOM_SHA, file_sha256

    cached = cache_path(store, backbone, stored, prompts)
    # the weights are needed only for texts not cached yet (or to check the ones given against the store)
    if weights is None and stored and cached.is_file() and set(ctx) <= set(read_text_embeddings(cached).contexts):
        return stored
    path = resolve_weights(get_backbone(name), weights)
    sha = file_sha256(path) if path is not None else RANDOM_SHA
    if stored and stored != sha:
        raise HeadError(f"{key} was extracted with other {backbone} weights (sha256 {stored[:12]}..., these are {sha[:12]}...)")
    return sha


def _scores_frame(tiles: pd.DataFrame, ctx: list[str] | None, y: pd.Series | None, classes: list[str], proba: np.ndarray) -> pd.DataFrame:
    """One row per tile: tile_id, where it is, its prompt context, label when known, pred and p_<class>."""
    df = pd.DataFrame({"tile_id": tiles["tile_id"].astype(str)})
    for col in ("path", "slide", "x", "y"):
        if col in tiles:
            df[col] = tiles[col].to_numpy()
    if ctx is not None:
        df["context"] = ctx
    if y is not None:
        df["label"] = y.to_numpy()
    df["pred"] = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    for j, c in enumerate(classes):
        df[f"p_{c}"] = proba[:, j]
    return df


def _zero_shot_metrics(df: pd.DataFrame, proba: np.ndarray, classes: list[str], pos: str | None, pos_source: str) -> dict[str, Any] | None:
    """Metrics over the labelled tiles (None when none is labelled)."""
    known = df["label"].notna().to_numpy()
    if not known.sum():
        return None
    metrics = classification_metrics(df["label"][known].astype(str).tolist(), proba[known], classes, pos)
    metrics["n"] = int(known.sum())
    if pos is not None:
        metrics["positive_source"] = pos_source.replace("training rows", "labelled tiles (no training rows)")
    return metrics
