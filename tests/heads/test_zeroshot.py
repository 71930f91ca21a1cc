"""Zero-shot scoring and the text-linear head, checked against brute force on real tile embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mito.heads import HEAD_NAMES, HeadError, load_head, make_head
from mito.heads.zeroshot import (
    TextEmbeddings,
    ensemble,
    load_prompts,
    softmax,
    tile_contexts,
    with_context,
    write_text_embeddings,
    zero_shot_logits,
    zero_shot_proba,
)
from mito.store import open_store

KEY = "efficientnet_lite0:z1:rgb"


def real_features(store: Path) -> tuple[np.ndarray, np.ndarray]:
    with open_store(store) as s:
        return s.read([KEY]).astype(np.float64), s.tiles["mitosis"].astype(str).to_numpy()


def test_text_equal_to_class_means_is_a_nearest_class_mean_classifier(amibr_store: Path) -> None:
    """Text embeddings = the ensembled (normalised-mean) tile embeddings of each class -> nearest normalised class mean."""
    X, y = real_features(amibr_store)
    classes = ["Atypical", "Normal"]
    T = np.stack([ensemble(X[y == c]) for c in classes])
    proba = zero_shot_proba(X, T, 100.0)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    means = np.stack([Xn[y == c].mean(0) for c in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    dist = ((Xn[:, None, :] - means[None]) ** 2).sum(-1)  # brute force: Euclidean distance to each unit class mean
    np.testing.assert_array_equal(proba.argmax(1), dist.argmin(1))
    assert (proba.argmax(1) == (y == "Normal")).mean() > 0.5  # class means of real features beat chance on their own tiles
    # and the probabilities are the softmax of scale x cosine
    np.testing.assert_allclose(proba, softmax(100.0 * (1 - dist / 2)), atol=1e-9)


def test_prompt_ensemble_is_the_renormalised_mean_of_unit_prompts() -> None:
    e = np.array([[3.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(ensemble(e), [2**-0.5, 2**-0.5])
    with pytest.raises(HeadError, match="512 dims, the text embeddings 2"):
        zero_shot_logits(np.ones((2, 512)), e, 1.0)


def test_prompts_files_and_contexts(tmp_path: Path) -> None:
    p = load_prompts("mitosis")
    assert set(p) == {"Atypical", "Normal"} and all(len(v) >= 3 for v in p.values())
    assert len(load_prompts("tissue")) == 9
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"A": []}))
    with pytest.raises(HeadError, match="at least two"):
        load_prompts(bad)
    bad.write_text(json.dumps({"A": ["x"], "B": []}))
    with pytest.raises(HeadError, match="'B' needs a non-empty list"):
        load_prompts(bad)
    import pandas as pd

    tiles = pd.DataFrame({"dataset": ["MIDOG", None], "scanner": ["Aperio", "Leica"]})
    assert tile_contexts(tiles, "{dataset} tissue scanned on {scanner}") == ["MIDOG tissue scanned on Aperio", ""]
    assert with_context("a mitosis", "on Aperio") == "a mitosis, on Aperio"
    assert with_context("a mitosis {context} here", "on Aperio") == "a mitosis on Aperio here"
    with pytest.raises(HeadError, match="'tumour'"):
        tile_contexts(tiles, "{tumour}")


def _text_file(tmp_path: Path, T: np.ndarray, classes: list[str], scale: float = 50.0) -> Path:
    te = TextEmbeddings("b", "sha", {c: ["x"] for c in classes}, logit_scale=scale, contexts={"": T.tolist()})
    return write_text_embeddings(te, tmp_path / "text.json")


def test_text_linear_starts_as_the_zero_shot_classifier_then_trains(amibr_store: Path, tmp_path: Path) -> None:
    from mito.heads.text_linear import TextLinearHead

    assert "text-linear" not in HEAD_NAMES  # needs text embeddings: not in the default set
    X, y = real_features(amibr_store)
    T = np.stack([ensemble(X[y == c]) for c in ("Normal", "Atypical")])  # file order differs from the head's classes
    f = _text_file(tmp_path, T, ["Normal", "Atypical"])
    h = make_head("text-linear", text_embeddings=str(f), epochs=5, seed=0)
    assert isinstance(h, TextLinearHead)
    h.classes_ = np.array(["Atypical", "Normal"])
    h._init = h.class_text()
    X2 = np.concatenate([X, 2 * X], axis=1)  # two blocks (e.g. two zooms) of the same backbone
    net = h._build(X2.shape[1], 2)
    with torch.no_grad():
        logits = net(torch.from_numpy(X2)).numpy()
    np.testing.assert_allclose(logits, zero_shot_logits(X, T[::-1], 50.0), rtol=1e-4, atol=1e-4)
    h = make_head("text-linear", text_embeddings=str(f), epochs=5, seed=0).fit(X2, y)
    h.save(tmp_path / "h")
    h2 = load_head(tmp_path / "h")
    np.testing.assert_array_equal(h2.predict_proba(X2), h.predict_proba(X2))
    with pytest.raises(HeadError, match="whole 1280-dim blocks"):
        make_head("text-linear", text_embeddings=str(f), epochs=1).fit(X2[:, :100], y)
    with pytest.raises(HeadError, match="no text embedding for class 'Atypical'"):
        make_head("text-linear", text_embeddings=str(_text_file(tmp_path, T, ["Normal", "Mitosis"])), epochs=1).fit(X, y)
    with pytest.raises(HeadError, match="needs text_embeddings"):
        make_head("text-linear").fit(X, y)
