"""End-to-end extraction into real Zarr and HDF5 stores: determinism, resume, kill -9, corrupt images, refusals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mito.extract import ExtractConfig, ExtractError, extract
from mito.store import StoreError, open_store

FAST = dict(task="mitosis", input_size=64, chunk_rows=8, batch_size=8, num_workers=0, progress=False)


def _cfg(src: Path, store: Path, **kw: object) -> ExtractConfig:
    return ExtractConfig(source=str(src), store=str(store), **{**FAST, **kw})


def test_zarr_and_hdf5_hold_the_same_embeddings_and_provenance(amibr_dir: Path, tmp_path: Path) -> None:
    extract(_cfg(amibr_dir, tmp_path / "a.zarr", colors=["rgb", "gray"]))
    extract(_cfg(amibr_dir, tmp_path / "a.h5", colors=["rgb", "gray"]))
    z, h = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "a.h5")
    keys = ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z1:gray"]
    assert z.variants == keys and h.variants == keys and z.verify() == [] and h.verify() == []
    a, b = z.read(keys), h.read(keys)
    assert a.shape == (48, 2560) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:, :1280], a[:, 1280:])  # gray differs from rgb
    info = z.variant_info(keys[1])
    assert info["weights_sha256"].startswith("579344248a93")
    assert info["preprocessing"]["color"] == "gray" and info["preprocessing"]["input_size"] == 64
    assert info["versions"]["torch"] and z.meta["tile_list_sha256"] and z.meta["created"]
    assert z.tiles["tile_id"].tolist() == h.tiles["tile_id"].tolist()


def test_deterministic_and_adding_a_variant_extracts_only_what_is_missing(amibr_dir: Path, tmp_path: Path) -> None:
    s1 = extract(_cfg(amibr_dir, tmp_path / "a.zarr"))
    again = extract(_cfg(amibr_dir, tmp_path / "a.zarr"))
    assert again["backbones"]["efficientnet_lite0"]["rows"] == 0
    before = open_store(tmp_path / "a.zarr").read(["efficientnet_lite0:z1:rgb"])
    more = extract(_cfg(amibr_dir, tmp_path / "a.zarr", zooms=[1.0, 2.0]))
    assert s1["backbones"]["efficientnet_lite0"]["rows"] == 48 and s1["backbones"]["efficientnet_lite0"]["batch_size"] == 8
    assert more["backbones"]["efficientnet_lite0"]["variants"] == ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z2:rgb"]
    s = open_store(tmp_path / "a.zarr")
    np.testing.assert_array_equal(s.read(["efficientnet_lite0:z1:rgb"]), before)
    extract(_cfg(amibr_dir, tmp_path / "b.zarr", zooms=[2.0]))
    np.testing.assert_allclose(
        open_store(tmp_path / "b.zarr").read(["efficientnet_lite0:z2:rgb"]), s.read(["efficientnet_lite0:z2:rgb"]), atol=2e-3
    )


def test_refuses_other_tiles_or_other_preprocessing(amibr_dir: Path, tmp_path: Path) -> None:
    extract(_cfg(amibr_dir, tmp_path / "a.zarr", limit=16))
    with pytest.raises(StoreError, match="different tile list"):
        extract(_cfg(amibr_dir, tmp_path / "a.zarr", limit=24))
    with pytest.raises(StoreError, match="made differently.*preprocessing"):
        extract(_cfg(amibr_dir, tmp_path / "a.zarr", limit=16, fit="pad"))
    with pytest.raises(ExtractError, match="fixed crops"):
        extract(_cfg(amibr_dir, tmp_path / "c.zarr", zooms=[0.5, 1.0]))
    assert not (tmp_path / "c.zarr").exists()
    assert open_store(tmp_path / "a.zarr").verify() == []


def test_corrupt_images_are_skipped_listed_and_never_stop_the_run(amibr_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(amibr_dir, src)
    (src / "Normal" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    victim = sorted((src / "Atypical").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    summary = extract(_cfg(src, tmp_path / "a.zarr"))
    assert sorted(summary["unreadable"]) == sorted([f"Atypical/{victim.name}", "Normal/zz_broken.jpg"])
    s = open_store(tmp_path / "a.zarr")
    x = s.read(["efficientnet_lite0:z1:rgb"])
    bad = s.unreadable
    assert bad.sum() == 2 and np.isnan(x[bad]).all() and np.isfinite(x[~bad]).all()
    assert s.verify() == [] and s.meta["unreadable_tiles"] == summary["unreadable"]


def _done(store: Path) -> int:
    try:
        s = open_store(store)
        return int(s.done_chunks(s.variants[0]).sum()) if s.variants else 0
    except (StoreError, IndexError, KeyError, FileNotFoundError, ValueError):
        return 0


@pytest.mark.slow
def test_resume_after_kill_9_matches_an_uninterrupted_run(amibr_dir: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed.zarr"
    args = [
        sys.executable,
        "-m",
        "mito",
        "extract",
        str(amibr_dir),
        "--store",
        str(killed),
        "--task",
        "mitosis",
        "--zooms",
        "1",
        "--colors",
        "rgb",
        "--input-size",
        "128",
        "--chunk-rows",
        "4",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--quiet",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while _done(killed) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = _done(killed)
    assert 3 <= n_before < 12, "the run should have been killed part-way"
    s = open_store(killed)
    assert any("not written" in p for p in s.verify())
    resumed = extract(_cfg(amibr_dir, killed, input_size=128, chunk_rows=4, batch_size=4))
    assert resumed["backbones"]["efficientnet_lite0"]["skipped_chunks"] >= n_before
    extract(_cfg(amibr_dir, tmp_path / "full.zarr", input_size=128, chunk_rows=4, batch_size=4))
    a = open_store(killed).read(["efficientnet_lite0:z1:rgb"])
    b = open_store(tmp_path / "full.zarr").read(["efficientnet_lite0:z1:rgb"])
    assert open_store(killed).verify() == []
    for i in range(len(a)):  # row by row, to float16 rounding
        np.testing.assert_allclose(a[i], b[i], rtol=2e-3, atol=2e-3, err_msg=f"row {i}")


def test_slide_with_points_at_three_zooms(tmp_path: Path) -> None:
    import pandas as pd
    import tifffile

    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (768, 768, 3), dtype=np.uint8)
    slide = tmp_path / "slide.tif"
    with tifffile.TiffWriter(slide) as tw:
        tw.write(img, tile=(256, 256), subifds=1, photometric="rgb")
        tw.write(img[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
    pts = tmp_path / "pts.csv"
    pd.DataFrame({"x": [100, 400, 700], "y": [300, 384, 50], "label": ["a", "b", "a"], "scanner": "S1"}).to_csv(pts, index=False)
    cfg = ExtractConfig(
        source=str(slide),
        points=str(pts),
        store=str(tmp_path / "s.zarr"),
        zooms=[0.5, 1, 2],
        tile_size=64,
        input_size=64,
        chunk_rows=2,
        batch_size=2,
        num_workers=0,
        progress=False,
        task="kind",
    )
    extract(cfg)
    s = open_store(tmp_path / "s.zarr")
    assert s.variants == [f"efficientnet_lite0:z{z}:rgb" for z in ("0.5", "1", "2")]
    assert s.tiles["kind"].tolist() == ["a", "b", "a"] and set(s.tiles["scanner"]) == {"S1"}
    x = s.read(s.variants)
    assert x.shape == (3, 3 * 1280) and np.isfinite(x).all() and s.verify() == []
    assert not np.allclose(x[:, :1280], x[:, 1280:2560], atol=1e-2)  # more context is a different input


def test_store_rows_are_the_backbone_applied_to_preprocess(amibr_store: Path) -> None:
    """uint8 crops cross to the model and are normalised there: the same numbers as preprocess() then embed()."""
    import torch
    from PIL import Image

    from mito.backbones import create_backbone, get_backbone
    from mito.extract import Preprocess, preprocess

    spec = get_backbone("efficientnet_lite0")
    enc = create_backbone("efficientnet_lite0")
    with open_store(amibr_store) as s:
        rows = np.array([0, 5, 17, 40])
        for zoom, color in ((1.0, "rgb"), (2.0, "gray")):
            stored = s.read([f"efficientnet_lite0:z{zoom:g}:{color}"], rows)
            prep = Preprocess(128, spec.mean, spec.std, zoom=zoom, color=color)
            imgs = [np.asarray(Image.open(s.tiles["path"].iloc[r]).convert("RGB")) for r in rows]
            with torch.inference_mode():
                direct = enc.embed(torch.stack([preprocess(im, prep) for im in imgs])).numpy()
            np.testing.assert_allclose(stored, direct.astype(np.float16).astype(np.float32), rtol=1e-2, atol=1e-2)
            assert not np.allclose(stored[0], stored[1], atol=1e-2)


@pytest.mark.slow
def test_compiled_extraction_matches_eager_with_a_ragged_last_batch(amibr_dir: Path, tmp_path: Path) -> None:
    """torch.compile (static shapes, the last batch of 20 rows padded to 8s) writes what eager writes."""
    extract(_cfg(amibr_dir, tmp_path / "eager.zarr", limit=20))
    s = extract(_cfg(amibr_dir, tmp_path / "compiled.zarr", limit=20, compile=True))
    assert s["backbones"]["efficientnet_lite0"]["rows"] == 20
    key = ["efficientnet_lite0:z1:rgb"]
    a, b = open_store(tmp_path / "eager.zarr").read(key), open_store(tmp_path / "compiled.zarr").read(key)
    assert a.shape == (20, 1280)
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2)


def test_compile_failure_falls_back_to_eager_with_a_warning(amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def broken(fn: object, **kw: object) -> object:
        def call(*a: object) -> object:
            raise RuntimeError("no C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    extract(_cfg(amibr_dir, tmp_path / "eager.zarr", limit=12))
    with pytest.warns(UserWarning, match="torch.compile failed, running eager: RuntimeError: no C"):
        extract(_cfg(amibr_dir, tmp_path / "fallback.zarr", limit=12, compile=True))
    key = ["efficientnet_lite0:z1:rgb"]
    np.testing.assert_array_equal(open_store(tmp_path / "fallback.zarr").read(key), open_store(tmp_path / "eager.zarr").read(key))


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Count, in this process (workers=0), every preprocessing per zoom and the size of every forward."""
    import mito.extract.extractor as ex

    seen: dict[str, list[int]] = {"prepare": [], "forward": []}
    real_prepare, real_create = ex.prepare, ex.create_backbone

    def prepare(img: np.ndarray, p: object) -> object:
        seen["prepare"].append(p.zoom)  # type: ignore[attr-defined]
        return real_prepare(img, p)  # type: ignore[arg-type]

    def create(*a: object, **kw: object) -> object:
        enc = real_create(*a, **kw)  # type: ignore[arg-type]
        embed = enc.embed

        def counted(x: object) -> object:
            seen["forward"].append(int(x.shape[0]))  # type: ignore[attr-defined]
            return embed(x)  # type: ignore[arg-type]

        enc.embed = counted  # type: ignore[method-assign]
        return enc

    monkeypatch.setattr(ex, "prepare", prepare)
    monkeypatch.setattr(ex, "create_backbone", create)
    return seen


def test_adding_a_zoom_computes_only_that_zoom_and_matches_a_one_shot_run(
    amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _counting(monkeypatch)
    extract(_cfg(amibr_dir, tmp_path / "inc.zarr", limit=20))
    assert sorted(set(seen["prepare"])) == [1.0] and len(seen["prepare"]) == 20
    seen["prepare"].clear()
    seen["forward"].clear()
    more = extract(_cfg(amibr_dir, tmp_path / "inc.zarr", limit=20, zooms=[1.0, 2.0]))
    b = more["backbones"]["efficientnet_lite0"]
    assert b["variant_rows"] == {"efficientnet_lite0:z1:rgb": 0, "efficientnet_lite0:z2:rgb": 20}
    assert seen["prepare"] == [2.0] * 20 and sum(seen["forward"]) == 20  # z1 neither preprocessed nor embedded again
    extract(_cfg(amibr_dir, tmp_path / "once.zarr", limit=20, zooms=[1.0, 2.0]))
    keys = ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z2:rgb"]
    np.testing.assert_array_equal(open_store(tmp_path / "inc.zarr").read(keys), open_store(tmp_path / "once.zarr").read(keys))


def test_forward_size_is_bounded_by_the_batch_whatever_the_number_of_variants(
    amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 variants at batch 8: no forward sees more than 8 tiles (it was batch x variants = 96 before)."""
    seen = _counting(monkeypatch)
    s = extract(_cfg(amibr_dir, tmp_path / "a.zarr", limit=16, zooms=[1.0, 1.5, 2.0, 3.0, 4.0, 6.0], colors=["rgb", "gray"]))
    assert s["backbones"]["efficientnet_lite0"]["rows"] == 16
    assert max(seen["forward"]) <= 8 and sum(seen["forward"]) == 16 * 12
    assert open_store(tmp_path / "a.zarr").verify() == []
