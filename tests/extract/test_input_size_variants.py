"""``<backbone>@<px>``: the same CNN at another input size is a backbone of its own, from extract to predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.store import open_store

runner = CliRunner()
SMALL = "efficientnet_lite0@96"


@pytest.fixture(scope="module")
def sized_store(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("sized") / "s.zarr"
    args = ["extract", str(amibr_dir), "--store", str(store), "--task", "mitosis", "--zooms", "2", "--colors", "rgb"]
    r = runner.invoke(app, [*args, "--backbone", f"efficientnet_lite0,{SMALL}", "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    return store


def test_a_sized_backbone_has_its_own_variant_embedded_at_its_size(sized_store: Path) -> None:
    import torch
    from PIL import Image

    from mito.backbones import create_backbone, get_backbone
    from mito.extract import Preprocess, preprocess

    with open_store(sized_store) as s:
        assert set(s.variants) == {"efficientnet_lite0:z2:rgb", f"{SMALL}:z2:rgb"}
        prov = s.variant_info(f"{SMALL}:z2:rgb")["preprocessing"]
        assert prov["input_size"] == 96 and s.variant_info("efficientnet_lite0:z2:rgb")["preprocessing"]["input_size"] == 224
        rows = np.array([0, 7, 30])
        small, full = s.read([f"{SMALL}:z2:rgb"], rows), s.read(["efficientnet_lite0:z2:rgb"], rows)
        imgs = [np.asarray(Image.open(s.tiles["path"].iloc[r]).convert("RGB")) for r in rows]
    spec = get_backbone(SMALL)
    enc = create_backbone(SMALL)
    prep = Preprocess(96, spec.mean, spec.std, zoom=2.0, color="rgb")
    with torch.inference_mode():
        direct = enc.embed(torch.stack([preprocess(im, prep) for im in imgs])).numpy()
    np.testing.assert_allclose(small, direct.astype(np.float16).astype(np.float32), rtol=1e-2, atol=1e-2)
    assert not np.allclose(small, full, atol=1e-2)  # 96 px is another embedding of the same crops


def test_a_model_on_a_sized_backbone_predicts_new_crops_at_that_size(sized_store: Path, amibr_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    r = runner.invoke(
        app, ["fit-head", "--store", str(sized_store), "--features", f"{SMALL}:z2:rgb", "--head", "logreg", "--out", str(model)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["predict", str(amibr_dir), "--model", str(model), "--out", str(tmp_path / "p.csv"), "--device", "cpu", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    from_images = pd.read_csv(tmp_path / "p.csv").set_index("path")
    r = runner.invoke(app, ["predict", "--store", str(sized_store), "--model", str(model), "--out", str(tmp_path / "s.csv"), "--quiet"])
    assert r.exit_code == 0, r.output
    from_store = pd.read_csv(tmp_path / "s.csv").set_index("path").loc[from_images.index]
    col = next(c for c in from_images.columns if c.startswith("p_"))
    np.testing.assert_allclose(from_images[col], from_store[col], atol=0.02)  # re-embedded at 96 px, not 224


def test_bad_sizes_and_vit_sizes_are_one_line(tmp_path: Path, amibr_dir: Path) -> None:
    for name, says in (("efficientnet_lite0@abc", "is not an input side"), ("uni@128", "input-size variants are for CNN")):
        r = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(tmp_path / "x.zarr"), "--backbone", name, "--quiet"])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "x.zarr").exists()


def test_input_size_cannot_override_the_size_a_name_promises(tmp_path: Path, amibr_dir: Path) -> None:
    args = ["extract", str(amibr_dir), "--store", str(tmp_path / "x.zarr"), "--backbone", SMALL, "--input-size", "128", "--quiet"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "efficientnet_lite0@128" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.zarr").exists()
