"""--noise-mode views / view-cov: heads trained on a tile's augmented views (real AMi-Br tile table, synthetic features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mito.heads import HeadError, fit_on_rows, make_head
from mito.heads.view_noise import augment_with_views, pick_views, view_cov_noise
from mito.heads.views import read_views
from mito.store import create_store, open_store
from tests.heads.conftest import PROV, amibr_tiles

VIEWS = ("hed0", "hed1", "flip")


@pytest.fixture(scope="module")
def view_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~300 real AMi-Br tiles; fakenet:z1:rgb and gray (16 dims) and three views of rgb (the tile's rgb plus its own noise)."""
    tiles = amibr_tiles(300)
    path = tmp_path_factory.mktemp("views") / "v.zarr"
    rng = np.random.default_rng(0)
    y = (tiles["mitosis"] == "Atypical").to_numpy()
    d = 16
    X = rng.normal(size=(len(tiles), d)) + y[:, None] * np.r_[np.full(3, 0.7), np.zeros(d - 3)]
    s = create_store(path, tiles, {"tasks": ["mitosis"]}, chunk_rows=64)
    arrays = {"fakenet:z1:rgb": X, "fakenet:z1:gray": X[:, ::-1] + rng.normal(size=X.shape)}
    arrays.update({f"fakenet:z1:rgb:{v}": X + 0.3 * rng.normal(size=X.shape) for v in VIEWS})
    for key, A in arrays.items():
        color = key.split(":")[2]
        s.ensure_variant(key, d, {**PROV, "preprocessing": {**PROV["preprocessing"], "color": color}})
        for c in range(s.n_chunks):
            a, b = s.chunk_rows_range(c)
            s.write_chunk(key, c, A[a:b].astype(np.float16))
    s.close()
    return path


def _fit(store: Path, keys: list[str], head: str = "mlp", **params) -> np.ndarray:
    with open_store(store) as s:
        tiles = s.tiles
        y = tiles["mitosis"].to_numpy()
        tr, te = np.flatnonzero(tiles["split"] == "train"), np.flatnonzero(tiles["split"] == "test")
        h = make_head(head, **{**({"epochs": 8, "seed": 0} if head == "mlp" else {}), **params})
        res = fit_on_rows(s, keys, {"train": tr, "test": te}, y, h)
    assert not hasattr(h, "train_views_")  # the views are not kept with the model
    return res.scored["test"][1]


def test_view_modes_train_and_are_seeded(view_store: Path) -> None:
    keys = ["fakenet:z1:rgb"]
    plain = _fit(view_store, keys)
    for mode in ("views", "view-cov"):
        a = _fit(view_store, keys, noise_mode=mode)
        np.testing.assert_array_equal(a, _fit(view_store, keys, noise_mode=mode))
        assert not np.array_equal(a, _fit(view_store, keys, noise_mode=mode, seed=1))
        assert not np.allclose(a, plain) and np.isfinite(a).all()
    # rgb+gray: the rgb part takes its views, gray (no views) stays itself; a copy head trains on rows + views
    _fit(view_store, ["fakenet:z1:rgb", "fakenet:z1:gray"], noise_mode="views")
    assert _fit(view_store, keys, head="logreg", noise_mode="views").shape[1] == 2


def test_read_views_aligns_rows_and_falls_back_to_the_tile(view_store: Path) -> None:
    rows = np.array([7, 3, 250])
    with open_store(view_store) as s:
        v = read_views(s, ["fakenet:z1:rgb", "fakenet:z1:gray"], rows)
        assert v.shape == (3, 3, 32)
        np.testing.assert_array_equal(v[2, :, :16], s.read(["fakenet:z1:rgb:flip"], rows).astype(np.float16))
        np.testing.assert_array_equal(v[0, :, 16:], s.read(["fakenet:z1:gray"], rows).astype(np.float16))
        with pytest.raises(HeadError, match="--augment hed:4,flip --augment-colors gray"):  # the default rgb would add none
            read_views(s, ["fakenet:z1:gray"], rows)
        with pytest.raises(HeadError, match="no-stream"):
            fit_on_rows(
                s,
                ["fakenet:z1:rgb"],
                {"train": np.arange(100)},
                s.tiles["mitosis"].to_numpy(),
                make_head("mlp", noise_mode="views", epochs=1),
                stream=True,
            )


def test_pick_views_draws_each_rows_own_images() -> None:
    g = torch.Generator().manual_seed(0)
    stack = torch.arange(4 * 5 * 2, dtype=torch.float32).reshape(4, 5, 2)  # [V+1, n, d]
    idx = torch.tensor([4, 0, 2, 2, 1] * 40)
    out = pick_views(stack, idx, g)
    chosen = [int(torch.nonzero((stack[:, i] == o).all(1))[0]) for o, i in zip(out, idx)]  # which image each row got
    assert set(chosen) == {0, 1, 2, 3}  # the tile itself and every view


def test_view_cov_noise_has_the_views_covariance() -> None:
    """Brute force: the empirical covariance of many draws equals scale^2 x the sample covariance of the tile's images."""
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(5, 1, 3)) * np.array([1.0, 0.3, 2.0])  # V+1 = 5 images of one tile, d = 3
    stack = torch.from_numpy(imgs).float()
    g = torch.Generator().manual_seed(0)
    n = 40000
    draws = view_cov_noise(stack, torch.zeros(n, dtype=torch.long), g, scale=0.5).numpy()
    np.testing.assert_allclose(draws.mean(0), imgs[0, 0], atol=0.03)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), 0.25 * np.cov(imgs[:, 0], rowvar=False), atol=0.03)
    X, y = imgs[0], np.array([1])
    Xa, ya = augment_with_views(X, y, imgs[1:], "views", 0, 1.0, 0)
    assert Xa.shape == (5, 3) and (ya == 1).all()


def test_incomplete_views_say_finish_not_add(tmp_path: Path) -> None:
    """Views that exist but lack rows (an append run without --augment) used to get 'add them with --augment'."""
    tiles = amibr_tiles(40)
    s = create_store(tmp_path / "i.zarr", tiles, {"tasks": ["mitosis"]}, chunk_rows=16)
    for key in ("fakenet:z1:rgb", "fakenet:z1:rgb:flip"):
        s.ensure_variant(key, 4, {**PROV, "preprocessing": {**PROV["preprocessing"], "color": "rgb"}})
        for c in range(s.n_chunks if key == "fakenet:z1:rgb" else 1):
            a, b = s.chunk_rows_range(c)
            s.write_chunk(key, c, np.ones((b - a, 4), np.float16))
    s.close()
    with open_store(tmp_path / "i.zarr") as s, pytest.raises(HeadError, match="fakenet:z1:rgb:flip in .* lack some tiles"):
        read_views(s, ["fakenet:z1:rgb"], np.arange(5))
