"""Tile sources on real files: AMi-Br folders, CSV manifests, and a pyramidal TIFF written with tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from mito.extract import ExtractError, Preprocess, open_source, preprocess
from mito.extract.colors import to_gray
from mito.extract.variants import fit_to


def test_folder_labels_metadata_and_published_split(amibr_dir: Path) -> None:
    src = open_source(amibr_dir, task="mitosis")
    t = src.tiles
    assert len(t) == 48 and set(t["mitosis"]) == {"Atypical", "Normal"}
    assert (t["tile_id"].str.split("/").str[0] == t["mitosis"]).all()
    assert set(t["split"]) == {"train", "test"}
    train = t[t["split"] == "train"]
    assert train["slide"].notna().all() and (train["group"] == train["slide"]).all()
    assert set(t["dataset"]) <= {"MIDOG21", "TUPAC16"}
    img = src.read(0)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8


def test_manifest_keeps_metadata_and_resolves_paths(amibr_dir: Path, tmp_path: Path) -> None:
    files = sorted(amibr_dir.glob("*/*.jpg"))[:4]
    man = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(f.relative_to(amibr_dir)) for f in files], "grade": ["a", "b", "a", "b"], "scanner": "XR"}).to_csv(
        man, index=False
    )
    (tmp_path / "Atypical").symlink_to(amibr_dir / "Atypical")
    (tmp_path / "Normal").symlink_to(amibr_dir / "Normal")
    src = open_source(man, task="atypia", label_column="grade")
    assert list(src.tiles["atypia"]) == ["a", "b", "a", "b"] and set(src.tiles["scanner"]) == {"XR"}
    assert src.read(3).shape == (128, 128, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.jpg,a\n")
    with pytest.raises(ExtractError, match="needs a 'path' column"):
        open_source(bad)


def _slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1024, 1536, 3), dtype=np.uint8)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(img, tile=(256, 256), subifds=1, photometric="rgb")
        tw.write(img[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
    return path, img


def test_slide_points_read_centred_crops_lazily(tmp_path: Path) -> None:
    path, img = _slide(tmp_path)
    pts = tmp_path / "points.csv"
    pd.DataFrame({"x": [400, 1520], "y": [300, 20], "label": ["mitosis", "imposter"]}).to_csv(pts, index=False)
    src = open_source(path, points=pts, task="mitosis", tile_size=64)
    assert src.tiles["tile_id"].tolist() == ["slide.ome.tif:400:300", "slide.ome.tif:1520:20"]
    np.testing.assert_array_equal(src.read(0), img[268:332, 368:432])
    assert src.kind == "slides" and src.tiles["level"].tolist() == [0, 0]  # the one slide reader, level 0 as it is
    wide = src.read(0, context=2.0)  # twice the field, same output size, read from level 1 (img[::2, ::2])
    assert wide.shape == (64, 64, 3)
    np.testing.assert_array_equal(wide, img[236:364:2, 336:464:2])
    np.testing.assert_array_equal(wide[16:48, 16:48], img[268:332:2, 368:432:2])
    edge = src.read(1)  # 12 px above and 16 px right of the slide read as white glass
    assert (edge[:12] == 255).all() and (edge[:, -16:] == 255).all()
    np.testing.assert_array_equal(edge[12:, :48], img[0:52, 1488:1536])
    outside = tmp_path / "out.csv"
    pd.DataFrame({"x": [5000], "y": [1]}).to_csv(outside, index=False)
    with pytest.raises(ExtractError, match="outside the 1536x1024 slide"):
        open_source(path, points=outside)
    with pytest.raises(ExtractError, match="pass --points"):
        open_source(path)


def test_empty_or_missing_sources_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractError, match="no images"):
        open_source(tmp_path / "empty")
    with pytest.raises(ExtractError, match="no such file"):
        open_source(tmp_path / "nothing")


def test_variants_zoom_colour_and_fit(amibr_dir: Path) -> None:
    img = open_source(amibr_dir).read(0)
    half = (0.5, 0.5, 0.5)
    z2 = preprocess(img, Preprocess(64, half, half, zoom=2.0, fit="pad"))
    np.testing.assert_allclose(((z2 * 0.5 + 0.5) * 255).round().permute(1, 2, 0).numpy(), img[32:96, 32:96], atol=0.6)
    g = preprocess(img, Preprocess(96, half, half, color="gray"))
    assert g.shape == (3, 96, 96) and (g[0] == g[1]).all() and (g[1] == g[2]).all()
    assert to_gray(img).shape == img.shape
    white = fit_to(img[:50, :50], 100, "pad", "white")
    assert white.shape == (100, 100, 3) and (white[:25] == 255).all()
    np.testing.assert_array_equal(white[25:75, 25:75], img[:50, :50])
    refl = fit_to(img[:50, :50], 100, "pad", "reflect")
    np.testing.assert_array_equal(refl[24, 25:75], img[1, :50])
    big = fit_to(img, 224, "resize", "reflect")
    assert big.shape == (224, 224, 3)
    wide = fit_to(img[:64], 128, "resize", "white")  # aspect kept: 128 x 64 region -> 128 x 64 + white bands
    assert wide.shape == (128, 128, 3) and (wide[:32] == 255).all()


def test_normalize_matches_preprocess_and_leaves_its_input_alone() -> None:
    import torch

    from mito.extract.variants import normalize, prepare

    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    p = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    u8 = prepare(img, p)
    assert u8.dtype == torch.uint8 and tuple(u8.shape) == (3, 32, 32)
    assert torch.equal(normalize(u8, p.mean, p.std), preprocess(img, p))
    f = u8.float()
    before = f.clone()
    normalize(f, p.mean, p.std)
    assert torch.equal(f, before)
