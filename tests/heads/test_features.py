"""Feature selection from a store, metadata one-hots, the saved pipeline and the provenance check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mito.heads import FeaturePipeline, HeadError, select_features
from mito.heads.features import check_store_matches
from mito.store import open_store

RGB, GRAY = "fakenet:z1:rgb", "fakenet:z1:gray"


def test_select_features_fixed_order_rows_and_metadata(synth_store: Path) -> None:
    with open_store(synth_store) as s:
        both = select_features(s, [GRAY, RGB])
        np.testing.assert_array_equal(both[:, :32], s.read([GRAY]))
        np.testing.assert_array_equal(both[:, 32:], s.read([RGB]))
        rows = np.array([50, 3, 17, s.n_tiles - 7])
        np.testing.assert_array_equal(select_features(s, [RGB, GRAY], rows), s.read([RGB, GRAY], rows))
        half = select_features(s, [RGB], rows, dtype=np.float16)
        assert half.dtype == np.float16
        X = select_features(s, [RGB], rows, metadata_columns=["dataset", "split"])
        cats = sorted(set(s.tiles["dataset"]))
        assert X.shape == (4, 32 + len(cats) + 2)
        onehot = X[:, 32:]
        assert (onehot.sum(1) == 2).all()
        assert onehot[1, cats.index(s.tiles["dataset"][3])] == 1
        with pytest.raises(HeadError, match="listed twice"):
            select_features(s, [RGB, RGB])
        with pytest.raises(HeadError, match="no metadata column 'scanner'"):
            select_features(s, [RGB], metadata_columns=["scanner"])
        with pytest.raises(HeadError, match="must not repeat"):
            select_features(s, [RGB], np.array([1, 1]))


def test_pipeline_standardize_pca_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(500, 20)) * np.arange(1, 21) + 5).astype(np.float16)
    p = FeaturePipeline(standardize=True).fit(X)
    Z = p.transform(X)
    assert Z.dtype == np.float16 and np.abs(Z.astype(np.float32).mean(0)).max() < 0.02
    np.testing.assert_allclose(Z.astype(np.float32).std(0), 1, atol=0.02)
    inplace = X.copy()
    p.transform(inplace, out=inplace)
    np.testing.assert_array_equal(inplace, Z)
    q = FeaturePipeline(standardize=True, pca=5).fit(X)
    Zq = q.transform(X.astype(np.float32))
    assert Zq.shape == (500, 5) and 0 < q.explained_variance_ratio_ <= 1
    q.save(tmp_path)
    r = FeaturePipeline.load(tmp_path, q.config())
    np.testing.assert_array_equal(r.transform(X.astype(np.float32)), Zq)
    assert FeaturePipeline().transform(X) is X
    with pytest.raises(HeadError, match="pca must be between"):
        FeaturePipeline(pca=50).fit(X)


def test_provenance_check_names_the_difference(synth_store: Path) -> None:
    with open_store(synth_store) as s:
        want = {RGB: {k: v for k, v in s.variant_info(RGB).items() if k != "added"}}
        check_store_matches(s, want)
        with pytest.raises(HeadError, match="weights_sha256 is aaaa"):
            check_store_matches(s, {RGB: {**want[RGB], "weights_sha256": "b" * 64}})
        prep = {**want[RGB]["preprocessing"], "input_size": 224}
        with pytest.raises(HeadError, match="preprocessing differs in input_size"):
            check_store_matches(s, {RGB: {**want[RGB], "preprocessing": prep}})
        with pytest.raises(HeadError, match="has no fakenet:z2:rgb features"):
            check_store_matches(s, {"fakenet:z2:rgb": want[RGB]})
