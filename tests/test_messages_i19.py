"""One clear line where a user used to get a bare class name, a wrong hint, Python's warning paragraphs or a
picture from outside the folder (issue 19, item 28)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mito.cli import app, friendly
from mito.store import create_store

runner = CliRunner()
KEY = "synth:z1:rgb"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 tiles of 16 random dims in 6 slides, two classes (real Zarr store)."""
    path = tmp_path_factory.mktemp("msg") / "s.zarr"
    rng = np.random.default_rng(0)
    n = 60
    table = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(n)],
            "slide": [f"s{i % 6}" for i in range(n)],
            "group": [f"s{i % 6}" for i in range(n)],
            "label": np.where(np.arange(n) % 2 == 1, "pos", "neg"),
        }
    )
    s = create_store(path, table, {"tasks": ["label"]}, chunk_rows=32)
    s.ensure_variant(KEY, 16, {"backbone": "synth", "weights_sha256": "0" * 64, "preprocessing": {"zoom": 1.0, "color": "rgb"}})
    x = rng.standard_normal((n, 16)).astype(np.float32) + (np.arange(n) % 2 == 1)[:, None] * 0.3
    for c in range(s.n_chunks):
        a, b = s.chunk_rows_range(c)
        s.write_chunk(KEY, c, x[a:b].astype(np.float16))
    s.close()
    return path


def test_a_slide_read_error_is_printed_with_its_text() -> None:
    from mito.core.errors import os_error_line
    from mito.wsi.reader import SlideReadError

    err = SlideReadError("no such slide file: /data/gone.svs")
    assert os_error_line(err) == "no such slide file: /data/gone.svs"
    assert os_error_line(OSError(28, "No space left on device", "/x")) == "no space left on the device: /x"  # errno'd ones as before
    one = typer.Typer()

    @one.command()
    @friendly
    def read() -> None:
        raise err

    res = runner.invoke(one, [])
    assert res.exit_code == 2 and res.output.strip() == "error: no such slide file: /data/gone.svs", res.output


def test_a_validation_label_no_training_row_has_names_the_fix_and_bench_folds_avoid_it() -> None:
    from mito.bench.cv import make_folds
    from mito.heads.base import HeadError, make_head

    X = np.random.default_rng(0).standard_normal((20, 4))
    with pytest.raises(HeadError, match=r"the validation rows hold label '1.0', which no training row has .*fewer folds"):
        make_head("logreg").fit(X[:16], np.array(["0.0", "2.0"] * 8), eval_set=(X[16:], np.array(["1.0"] * 4)))
    # the bench accepted 2 folds (class 1.0 on 2 slides), then carved a fold's only 1.0 slide out for early stopping
    groups = np.repeat([f"g{i}" for i in range(8)], 10)
    y = np.where(np.isin(groups, ["g0", "g1"]), 1.0, 0.0)
    tiles = pd.DataFrame({"tile_id": [str(i) for i in range(80)], "group": groups})
    for seed in range(12):
        for f in make_folds(tiles, pd.Series(y), n_folds=2, seed=seed).folds:
            assert set(y[f.val]) <= set(y[f.train]), (seed, f.index)
            assert len(np.intersect1d(f.train, f.val)) == 0 and len(f.train) + len(f.val) + len(f.test) == 80


def test_fit_head_out_linking_to_the_store_gets_one_refusal_without_an_overwrite_hint(store: Path, tmp_path: Path) -> None:
    link = tmp_path / "model"
    os.symlink(store, link)
    for extra in ([], ["--overwrite"]):
        res = runner.invoke(app, ["fit-head", "--store", str(store), "--head", "logreg", "--out", str(link), *extra])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and "--overwrite" not in out and "Traceback" not in out, out
        assert f"would replace or sit inside {store}, an input of this command" in out, out


def test_a_qc_folder_that_holds_the_store_is_named_so(store: Path) -> None:
    tmp = tempfile.gettempdir()
    assert Path(store).resolve().is_relative_to(Path(tmp).resolve())  # pytest's folders lie in the system temp folder
    res = runner.invoke(app, ["slides", "qc", str(store), "--out", tmp])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and f"{tmp} holds {store}, an input of this command" in out and "sit inside" not in out, out


def test_library_warnings_are_one_line_once(store: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["fit-head", "--store", str(store), "--head", "logreg", "--param", "max_iter=1", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "converge" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: lbfgs failed to converge") and "from scikit-learn" in lines[0], res.output
    assert "site-packages" not in res.output and "scikit-learn.org" not in res.output


def test_tifffile_notes_on_a_broken_ome_series_stay_off_the_terminal(tmp_path: Path) -> None:
    import subprocess
    import sys

    import tifffile

    desc = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
        '<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="10" SizeY="10" SizeC="3" SizeZ="1" SizeT="1" '
        'PhysicalSizeX="0.25"><Channel ID="Channel:0:0" SamplesPerPixel="3"/><TiffData IFD="5" PlaneCount="1"/></Pixels></Image></OME>'
    )
    path = tmp_path / "odd.ome.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb", description=desc, metadata=None)
    code = (
        "import sys; from mito.wsi.reader import open_slide, close_slide; s = open_slide(sys.argv[1]); "
        "print(s.dimensions); close_slide(s)"
    )  # a plain process: no test harness catches the log records
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "(512, 512)", p.stderr
    assert "OME series" not in p.stderr and "tifffile" not in p.stderr, p.stderr


def test_the_report_inlines_only_umaps_mito_wrote_in_its_folder(store: Path, tmp_path: Path) -> None:
    import base64

    from PIL import Image

    from mito.report.umap import PNG_SOFTWARE, _scatter

    d = tmp_path / "bench"
    res = runner.invoke(
        app, ["bench", "--store", str(store), "--out", str(d), "--heads", "logreg", "--folds", "2", "--no-umap", "--jobs", "1"]
    )
    assert res.exit_code == 0, res.output
    ours = _scatter(np.random.default_rng(0).standard_normal((30, 2)), pd.Series(["a", "b"] * 15), "ours", d / "umap.png")
    secret = tmp_path / "secret.png"  # a file outside the folder, reached by a link named like a UMAP
    Image.new("RGB", (5, 5), (255, 0, 0)).save(secret)
    os.symlink(secret, d / "umap_secret.png")
    Image.new("RGB", (6, 6), (0, 0, 255)).save(d / "umap_user.png")  # a picture mito did not write
    res = runner.invoke(app, ["report", str(d)])
    assert res.exit_code == 0, res.output
    page = (d / "report.html").read_text()
    with Image.open(ours) as im:
        assert im.info["Software"] == PNG_SOFTWARE
    assert base64.b64encode(ours.read_bytes()).decode() in page
    assert base64.b64encode(secret.read_bytes()).decode() not in page and "umap_secret.png" not in page
    assert base64.b64encode((d / "umap_user.png").read_bytes()).decode() not in page
