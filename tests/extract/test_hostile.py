"""Hostile and unusual inputs through the real CLI: 16-bit PNGs, a decompression bomb, a non-UTF-8 file name,
broken manifests, symlinked sources, and every bad option value."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mito.cli import app
from mito.store import open_store

runner = CliRunner()
FAST = ["--zooms", "1", "--colors", "rgb", "--input-size", "64", "--workers", "0", "--batch-size", "8", "-q"]
KEY = ["efficientnet_lite0:z1:rgb"]


def _run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def _one_line_error(code: int, out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in out and len(lines) == 1, out
    return lines[0]


def _png(path: Path, a: np.ndarray, bits: int = 16) -> None:
    """A real PNG of ``bits`` per sample written byte by byte (PIL cannot write 16-bit RGB), rows streamed."""
    h, w = a.shape[:2]
    ctype = 0 if a.ndim == 2 else {3: 2, 4: 6}[a.shape[2]]
    dt = ">u2" if bits == 16 else "u1"
    z = zlib.compressobj()
    data = b"".join(z.compress(b"\x00" + np.ascontiguousarray(a[y], dtype=dt).tobytes()) for y in range(h)) + z.flush()

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, ctype, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _bomb(path: Path, side: int = 20000) -> None:
    """A 20,000 x 20,000 grey PNG of a few hundred KB (PIL refuses to decode it: a decompression bomb)."""
    z = zlib.compressobj(1)
    row = b"\x00" * (side + 1)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def test_16_bit_pngs_embed_like_their_8_bit_originals(amibr_dir: Path, tmp_path: Path) -> None:
    crop = np.asarray(Image.open(sorted((amibr_dir / "Normal").glob("*.jpg"))[0]).convert("RGB"))
    gray = np.asarray(Image.fromarray(crop).convert("L"))
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(crop).save(src / "a_rgb8.png")
    Image.fromarray(gray).save(src / "b_gray8.png")
    # full-range 16 bits: v * 257 maps 0..255 onto 0..65535, and >> 8 gives v back
    _png(src / "c_rgb16.png", crop.astype(np.uint16) * 257)
    _png(src / "d_rgba16.png", np.dstack([crop, np.full(crop.shape[:2], 255, np.uint8)]).astype(np.uint16) * 257)
    _png(src / "e_gray16.png", gray.astype(np.uint16) * 257)
    Image.fromarray(gray.astype(np.uint16) * 257).save(src / "f_gray16_pil.png")
    Image.fromarray((gray.astype(np.uint16) * 257).astype(">u2")).save(src / "g_gray16_big_endian.tif")
    modes = {f.name: Image.open(f).mode for f in sorted(src.iterdir())}
    assert modes["e_gray16.png"] == "I;16" and modes["g_gray16_big_endian.tif"] == "I;16B"
    assert modes["c_rgb16.png"] == "RGB" and modes["d_rgba16.png"] == "RGBA"  # PIL reduces 16-bit colour itself

    code, out = _run("extract", src, "--store", tmp_path / "s.zarr", *FAST)
    assert code == 0, out
    s = open_store(tmp_path / "s.zarr")
    ids = s.tiles["tile_id"].tolist()
    x = s.read(KEY)
    assert not s.unreadable.any() and np.isfinite(x).all()
    row = {i: x[ids.index(i)] for i in ids}
    for f in ("c_rgb16.png", "d_rgba16.png"):
        np.testing.assert_allclose(row[f], row["a_rgb8.png"], atol=1e-2, err_msg=f)
    for f in ("e_gray16.png", "f_gray16_pil.png", "g_gray16_big_endian.tif"):
        np.testing.assert_allclose(row[f], row["b_gray8.png"], atol=1e-2, err_msg=f)
    assert not np.allclose(row["e_gray16.png"], row["a_rgb8.png"], atol=1e-2)  # the rows can tell images apart


def test_a_decompression_bomb_and_a_non_utf8_name_never_stop_the_run(amibr_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "Normal").mkdir(parents=True)
    crops = sorted((amibr_dir / "Normal").glob("*.jpg"))[:3]
    for f in crops:
        shutil.copy(f, src / "Normal" / f.name)
    _bomb(src / "Normal" / "bomb.png")
    with open(os.path.join(os.fsencode(src / "Normal"), b"bad\xff.jpg"), "wb") as fh:
        fh.write(crops[0].read_bytes())
    store = tmp_path / "s.zarr"
    code, out = _run("extract", src, "--store", store, *FAST)
    assert code == 0, out
    assert "1 unreadable tile skipped: Normal/bomb.png" in out
    s = open_store(store)
    ids = s.tiles["tile_id"].tolist()
    assert "Normal/bad\\xff.jpg" in ids and len(ids) == 5
    x = s.read(KEY)
    bad = s.unreadable
    assert bad.tolist() == [i == "Normal/bomb.png" for i in ids]
    np.testing.assert_allclose(x[ids.index("Normal/bad\\xff.jpg")], x[ids.index(f"Normal/{crops[0].name}")], atol=1e-3)
    assert s.tiles["path"][ids.index("Normal/bad\\xff.jpg")].endswith("Normal/bad\\xff.jpg")
    assert s.verify() == [] and s.meta["unreadable_tiles"] == ["Normal/bomb.png"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,label\n{a},x\n,y\n", "line 3: empty path"),
        ("path,label\n{a},x,1\n{b},y,2\n", "line 2: 3 fields, the header has 2"),
        ("path,label\n{a},x\n{b},y,\n", "line 3: 3 fields, the header has 2"),
    ],
)
def test_a_broken_manifest_gets_one_line_naming_file_and_line(text: str, message: str, amibr_dir: Path, tmp_path: Path) -> None:
    a, b = sorted((amibr_dir / "Normal").glob("*.jpg"))[:2]
    man = tmp_path / "m.csv"
    man.write_text(text.format(a=a, b=b))
    code, out = _run("extract", man, "--store", tmp_path / "s.zarr", *FAST)
    line = _one_line_error(code, out)
    assert str(man) in line.replace("\n", "") and message in line, line
    assert not (tmp_path / "s.zarr").exists()


def test_paths_are_as_given_and_a_no_op_run_keeps_the_last_run_record(amibr_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "Normal").mkdir(parents=True)
    files = sorted((amibr_dir / "Normal").glob("*.jpg"))[:4]
    for f in files[:3]:
        shutil.copy(f, real / "Normal" / f.name)
    (real / "Normal" / "linked.jpg").symlink_to(files[3])
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    store = tmp_path / "s.zarr"
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out = _run("extract", "link", "--store", store, *FAST)
    finally:
        os.chdir(old)
    assert code == 0, out
    s = open_store(store)
    assert s.tiles["path"].tolist() == [str(tmp_path / "link" / "Normal" / n) for n in sorted([f.name for f in files[:3]] + ["linked.jpg"])]
    assert s.meta["source"]["path"] == str(tmp_path / "link")
    first = s.meta["last_run"]
    assert first["backbones"]["efficientnet_lite0"]["rows"] == 4
    code, out = _run("extract", tmp_path / "link", "--store", store, *FAST)
    assert code == 0 and "nothing left to do" in out
    assert open_store(store).meta["last_run"] == first

    man = tmp_path / "m.csv"
    man.write_text("path\nlink/Normal/linked.jpg\n")
    code, out = _run("extract", man, "--store", tmp_path / "m.zarr", *FAST)
    assert code == 0, out
    assert open_store(tmp_path / "m.zarr").tiles["path"].tolist() == [str(tmp_path / "link" / "Normal" / "linked.jpg")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zooms", "nan"], "--zooms: zooms must be positive numbers"),
        (["--zooms", "inf"], "--zooms: zooms must be positive numbers"),
        (["--zooms", "1,-2"], "--zooms: zooms must be positive numbers"),
        (["--zooms", "1,65"], "--zooms: zooms must lie between 0.015625 and 64"),
        (["--chunk-rows", "999999999999"], "--chunk-rows: Input should be less than or equal to 1048576"),
        (["--chunk-rows", "0"], "--chunk-rows: Input should be greater than or equal to 1"),
        (["--chunk-rows", "1048576"], "--chunk-rows 1048576 x 5120 dims x 4 bytes = 20.0 GiB, more than a quarter of the 8.0 GiB"),
        (["--input-size", "-3"], "--input-size: Input should be greater than or equal to 16"),
        (["--input-size", "0"], "--input-size: Input should be greater than or equal to 16"),
        (["--input-size", "100000"], "--input-size: Input should be less than or equal to 4096"),
        (["--workers", "-1"], "--workers: Input should be greater than or equal to 0"),
        (["--workers", "1000"], "--workers: Input should be less than or equal to 64"),
        (["--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1"),
        (["--batch-size", "60000", "--input-size", "1024"], "--batch-size 60000 at 1024 px needs about"),
        (["--batch-size", "4096"], "--batch-size 4096 at 224 px needs about 36.8 GiB for one forward, more than half the 8.0 GiB"),
        (["--limit", "-5"], "--limit: Input should be greater than or equal to 1"),
        (["--limit", "0"], "--limit: Input should be greater than or equal to 1"),
        (["--tile-size", "100000", "--points", "{pts}"], "--tile-size: Input should be less than or equal to 16384"),
        (["--tile-size", "16000", "--zooms", "0.125", "--points", "{pts}"], "reads 128000 x 128000 px regions"),
        (["--weights", "resnet50=/x.pth"], "--weights names resnet50, which is not among --backbone (efficientnet_lite0)"),
    ],
)
def test_every_bad_option_value_is_one_line_and_writes_nothing(
    args: list[str], message: str, amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mito.extract.extractor as ex

    monkeypatch.setattr(ex, "available_memory", lambda: 8 << 30)  # sizes are bounded by the machine: fix the machine
    pts = tmp_path / "pts.csv"
    pts.write_text("x,y\n10,10\n")
    argv = [a.replace("{pts}", str(pts)) for a in args]
    code, out = _run("extract", amibr_dir, "--store", tmp_path / "a.zarr", "-q", *argv)
    line = _one_line_error(code, out)
    assert message in line, line
    assert not (tmp_path / "a.zarr").exists()
