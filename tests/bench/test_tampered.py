"""A tampered leaderboard folder is refused on load by compare and report: one line naming the file and the defect,
exit 2, never a traceback and never statistics computed from impossible probabilities."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mito.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def clean_bench(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tamper") / "bench"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(amibr_store),
            "--task",
            "mitosis",
            "--out",
            str(out),
            "--features",
            "efficientnet_lite0:z1:rgb",
            "--heads",
            "logreg,knn",
            "--folds",
            "2",
            "--jobs",
            "1",
            "--n-boot",
            "20",
            "--no-umap",
        ],
    )
    assert r.exit_code == 0, r.output
    return out


def _npz(fn: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        with np.load(d / "predictions.npz") as z:
            arrays = {k: z[k] for k in z.files}
        fn(arrays)
        np.savez(d / "predictions.npz", **arrays)

    return go


def _json(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        doc = json.loads((d / "leaderboard.json").read_text())
        fn(doc)
        (d / "leaderboard.json").write_text(json.dumps(doc))

    return go


def _each(suffix: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, np.ndarray]], None]:
    def go(a: dict[str, np.ndarray]) -> None:
        for k in list(a):
            if k.endswith(suffix):
                a[k] = fn(a[k])

    return go


def _drop(suffix: str) -> Callable[[dict[str, np.ndarray]], None]:
    def go(a: dict[str, np.ndarray]) -> None:
        for k in [k for k in a if k.endswith(suffix)]:
            del a[k]

    return go


def _rows(**set_: object) -> Callable[[dict], None]:
    def go(doc: dict) -> None:
        for r in doc["rows"]:
            r.update(set_)

    return go


def _first_cm(doc: dict) -> None:
    doc["rows"][0]["confusion_matrix"] = [[1, 2], [3]]


def _nan_at_every_fifth(p: np.ndarray, v: float) -> np.ndarray:
    return np.where(np.arange(p.size).reshape(p.shape) % 5 == 0, v, p)


TAMPER = {
    "probabilities -1": (_npz(_each(".proba", lambda p: np.full_like(p, -1.0))), "predictions.npz", "not probabilities"),
    "NaN": (_npz(_each(".proba", lambda p: _nan_at_every_fifth(p, np.nan))), "predictions.npz", "NaN or infinite"),
    "inf": (_npz(_each(".proba", lambda p: _nan_at_every_fifth(p, np.inf))), "predictions.npz", "NaN or infinite"),
    "short arrays": (_npz(_each(".proba", lambda p: p[:-3])), "predictions.npz", "rows for"),
    "strings": (_npz(_each(".proba", lambda p: p.astype(str))), "predictions.npz", "must be a 2-D array of probabilities"),
    "labels as strings": (_npz(_each(".y", lambda y: y.astype(str))), "predictions.npz", "'y' must be a 1-D array of whole numbers"),
    "missing key": (_npz(_drop(".y")), "predictions.npz", "lacks its 'y' array"),
    "classes 7": (_json(_rows(classes=7)), "leaderboard.json", "classes must be a list"),
    "classes null": (_json(_rows(classes=None)), "leaderboard.json", "classes must be a list"),
    "ragged confusion matrix": (_json(_first_cm), "leaderboard.json", "confusion_matrix is ragged"),
    "shots on every row": (_json(_rows(shots=4)), "leaderboard.json", "K-shot row"),
    "shots and draws on every row": (_json(_rows(shots=4, draws=2)), "leaderboard.json", "only K-shot rows"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_folder_is_refused_in_one_line(case: str, clean_bench: Path, tmp_path: Path) -> None:
    tamper, file, defect = TAMPER[case]
    d = tmp_path / "b"
    shutil.copytree(clean_bench, d)
    tamper(d)
    for args in (["compare", "--bench", str(d), "--rows", "1,2"], ["report", str(d)]):
        r = runner.invoke(app, args, env={"COLUMNS": "300"})
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.exit_code == 2 and "Traceback" not in r.output and len(lines) == 1, (args[0], r.output)
        assert str(d / file) in lines[0] and defect in lines[0], (args[0], lines[0])


def test_untampered_folder_still_loads(clean_bench: Path, tmp_path: Path) -> None:
    d = tmp_path / "b"
    shutil.copytree(clean_bench, d)
    assert runner.invoke(app, ["compare", "--bench", str(d), "--rows", "1,2"]).exit_code == 0
    assert runner.invoke(app, ["report", str(d)]).exit_code == 0
