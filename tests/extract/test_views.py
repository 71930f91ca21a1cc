"""Augmented views in the store (extract --augment) and the hema colour mode, on real AMi-Br crops."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mito.extract import ExtractConfig, extract
from mito.extract.augment import apply_view, parse_augment, tile_rng
from mito.extract.colors import to_gray, to_hema
from mito.extract.errors import ExtractError
from mito.store import is_view, open_store, parse_variant, views_of

BB = "efficientnet_lite0"
SMALL = dict(input_size=128, chunk_rows=16, batch_size=16, num_workers=0, progress=False, task="mitosis")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def views_store(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The session store (z1/z2 x rgb/gray) copied, then extract --augment hed:2,flip --colors rgb,hema at z1 added."""
    path = tmp_path_factory.mktemp("views") / "v.zarr"
    shutil.copytree(amibr_store, path)
    with open_store(amibr_store) as s:
        source = s.meta["source"]["path"]
    summary = extract(ExtractConfig(source=source, store=str(path), zooms=[1.0], colors=["rgb", "hema"], augment="hed:2,flip", **SMALL))
    return path, summary


def test_adding_views_embeds_only_the_new_arrays(views_store: tuple[Path, dict], amibr_store: Path) -> None:
    path, summary = views_store
    rows = summary["backbones"][BB]["variant_rows"]
    new = [f"{BB}:z1:rgb:hed0", f"{BB}:z1:rgb:hed1", f"{BB}:z1:rgb:flip", f"{BB}:z1:hema"]
    assert {k for k, n in rows.items() if n} == set(new) and rows[f"{BB}:z1:rgb"] == 0
    with open_store(path) as s, open_store(amibr_store) as old:
        assert s.verify() == []
        assert views_of(s.variants, f"{BB}:z1:rgb") == new[:3]
        np.testing.assert_array_equal(s.read([f"{BB}:z1:rgb"]), old.read([f"{BB}:z1:rgb"]))
        info = s.variant_info(f"{BB}:z1:rgb:hed0")["view"]
        assert info["kind"] == "hed" and info["seed"] == 0 and info["alpha"] == [0.95, 1.05]
        assert s.variant_info(f"{BB}:z1:rgb:flip")["view"] == {"name": "flip", "kind": "flip"}
    again = extract(
        ExtractConfig(source=_source(path), store=str(path), zooms=[1.0], colors=["rgb", "hema"], augment="hed:2,flip", **SMALL)
    )
    assert again["backbones"][BB]["rows"] == 0  # re-running resumes: nothing left to do
    with pytest.raises(Exception, match="made differently"):  # another jitter seed is another view
        extract(
            ExtractConfig(source=_source(path), store=str(path), zooms=[1.0], colors=["rgb"], augment="hed:2,flip", augment_seed=1, **SMALL)
        )


def _source(path: Path) -> str:
    with open_store(path) as s:
        return s.meta["source"]["path"]


def test_views_are_aligned_with_their_tiles(views_store: tuple[Path, dict], tmp_path: Path) -> None:
    """Row i of the flip / hed0 arrays is the embedding of tile i's flipped / jittered image, made independently."""
    path, _ = views_store
    with open_store(path) as s:
        tiles = s.tiles
        pick = [0, 5, 17, 30]
        flip, hed0 = s.read([f"{BB}:z1:rgb:flip"], pick), s.read([f"{BB}:z1:rgb:hed0"], pick)
        rgb = s.read([f"{BB}:z1:rgb"], pick)
    hed_view, flip_view = parse_augment("hed:1,flip")
    for name, view in (("flip", flip_view), ("hed", hed_view)):
        for r in pick:
            img = np.asarray(Image.open(tiles["path"][r]).convert("RGB"))
            out = tmp_path / name / "x" / f"{r:03d}.png"  # png: lossless, so the model sees exactly the view
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(apply_view(img, view, 0, str(tiles["tile_id"][r]))).save(out)
        extract(
            ExtractConfig(
                source=str(tmp_path / name), store=str(tmp_path / f"{name}.zarr"), zooms=[1.0], colors=["rgb"], **{**SMALL, "task": None}
            )
        )
    with open_store(tmp_path / "flip.zarr") as f, open_store(tmp_path / "hed.zarr") as h:
        got_flip, got_hed = f.read([f"{BB}:z1:rgb"]), h.read([f"{BB}:z1:rgb"])
    assert np.all(_cos(flip, got_flip) > 0.999) and np.all(_cos(hed0, got_hed) > 0.999)
    assert np.all(_cos(flip, rgb) < 0.99)  # and the view is not the tile itself
    assert _cos(flip[[0]], got_flip[[1]])[0] < 0.99  # a row shift would show


def test_views_reproducible_across_batch_sizes_and_seeded(amibr_dir: Path, tmp_path: Path) -> None:
    kw = {**SMALL, "limit": 12, "zooms": [1.0], "colors": ["rgb"], "augment": "hed:2"}
    a = extract(ExtractConfig(source=str(amibr_dir), store=str(tmp_path / "a.zarr"), **kw))
    extract(ExtractConfig(source=str(amibr_dir), store=str(tmp_path / "b.zarr"), **{**kw, "batch_size": 5, "chunk_rows": 7}))
    extract(ExtractConfig(source=str(amibr_dir), store=str(tmp_path / "c.zarr"), **kw, augment_seed=7))
    assert a["n_tiles"] == 12
    with open_store(tmp_path / "a.zarr") as sa, open_store(tmp_path / "b.zarr") as sb, open_store(tmp_path / "c.zarr") as sc:
        for v in ("hed0", "hed1"):
            xa, xb, xc = (s.read([f"{BB}:z1:rgb:{v}"]) for s in (sa, sb, sc))
            np.testing.assert_allclose(xa, xb, atol=2e-2, rtol=0)  # same jitter; only the kernels' batch rounding differs
            assert np.abs(xa - xc).max() > 10 * np.abs(xa - xb).max()  # another seed: other jitters
    img = np.asarray(Image.open(next((amibr_dir / "Normal").glob("*.jpg"))).convert("RGB"))
    view = parse_augment("hed:1:0.2")[0]
    np.testing.assert_array_equal(apply_view(img, view, 3, "t1"), apply_view(img, view, 3, "t1"))
    assert not np.array_equal(apply_view(img, view, 3, "t1"), apply_view(img, view, 3, "t2"))
    assert tile_rng(0, "t1", 0).uniform() != tile_rng(0, "t1", 1).uniform()


def test_hema_is_deterministic_and_differs_from_gray(views_store: tuple[Path, dict], amibr_dir: Path) -> None:
    img = np.asarray(Image.open(next((amibr_dir / "Atypical").glob("*.jpg"))).convert("RGB"))
    h = to_hema(img)
    np.testing.assert_array_equal(h, to_hema(img))
    assert h.shape == img.shape and h.dtype == np.uint8 and (h[..., 0] == h[..., 2]).all()
    assert np.abs(h.astype(int) - to_gray(img).astype(int)).mean() > 5
    path, _ = views_store
    with open_store(path) as s:
        assert s.variant_info(f"{BB}:z1:hema")["preprocessing"]["color"] == "hema"
        assert np.all(_cos(s.read([f"{BB}:z1:hema"]), s.read([f"{BB}:z1:gray"])) < 0.999)


def test_view_keys_parse_and_stay_out_of_default_features(views_store: tuple[Path, dict]) -> None:
    from mito.bench.leaderboard import all_feature_sets
    from mito.heads.train import backbone_variants, default_features

    v = parse_variant(f"{BB}:z1:rgb:hed0")
    assert (v.view, v.base, v.path) == ("hed0", f"{BB}:z1:rgb", f"{BB}/z1/rgb.hed0") and is_view(v.key)
    path, _ = views_store
    with open_store(path) as s:
        feats, default = backbone_variants(s), default_features(s)
        sets = all_feature_sets([k for k in s.variants if s.is_complete(k)])
    assert feats and not any(is_view(k) for k in feats) and f"{BB}:z1:hema" in feats
    zoom2 = [k for k in feats if parse_variant(k).zoom >= 2]
    assert default == (zoom2 or feats) and not any(is_view(k) for k in default)
    assert sets and not any(is_view(k) for fs in sets for k in fs.keys)
    with pytest.raises(ExtractError, match="unknown view"):
        parse_augment("hed:2,blur")


@pytest.mark.slow
def test_cli_extract_augment(amibr_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "cli.zarr"
    cmd = [
        sys.executable,
        "-m",
        "mito",
        "extract",
        str(amibr_dir),
        "--store",
        str(store),
        "--zooms",
        "1",
        "--colors",
        "rgb",
        "--augment",
        "flip,rot90",
        "--limit",
        "8",
        "--input-size",
        "96",
        "--workers",
        "0",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = subprocess.run([sys.executable, "-m", "mito", "cache", "info", str(store)], capture_output=True, text=True)
    assert f"{BB}:z1:rgb:flip" in info.stdout and f"{BB}:z1:rgb:rot90" in info.stdout
    bad = subprocess.run(cmd[:-9] + ["--augment", "hed:0", "-q"], capture_output=True, text=True)
    assert bad.returncode == 2 and "hed:K" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr
    assert "--augment: --augment" not in " ".join((bad.stderr + bad.stdout).split())  # the option is named once


def test_augment_colors_outside_colors_is_refused(amibr_dir: Path, tmp_path: Path) -> None:
    """--augment-colors gray with --colors rgb used to embed nothing and say 'nothing left to do'."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="--augment-colors gray is not among --colors"):
        ExtractConfig(
            source=str(amibr_dir),
            store=str(tmp_path / "a.zarr"),
            zooms=[1.0],
            colors=["rgb"],
            augment="flip",
            augment_colors=["gray"],
            **SMALL,
        )
    with pytest.raises(ValidationError, match="--augment-colors rgb is not among --colors"):
        ExtractConfig(source=str(amibr_dir), store=str(tmp_path / "b.zarr"), zooms=[1.0], colors=["gray"], augment="flip", **SMALL)
    ok = ExtractConfig(source=str(amibr_dir), store=str(tmp_path / "c.zarr"), zooms=[1.0], colors=["gray"], **SMALL)
    assert ok.augment is None  # no --augment: --augment-colors is not checked
