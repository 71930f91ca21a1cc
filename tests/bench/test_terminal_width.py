"""Every table mito prints, piped at COLUMNS=80: each number of the leaderboard appears whole, or its column is named as
not shown; no line is wider than the terminal."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import mito.cli
from mito.cli import app
from mito.report.tables import number, p_value, seconds

NUM = re.compile(r"(?<![\d.])[+-]?\d+\.\d+")
runner = CliRunner()


def _mito80(*args: str) -> subprocess.CompletedProcess:
    """`mito ARGS` in a subprocess whose output is a pipe and whose terminal is 80 columns wide."""
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    env.pop("TERMINAL_WIDTH", None)
    return subprocess.run([sys.executable, "-m", "mito", *args], check=False, capture_output=True, text=True, timeout=600, env=env)


def _not_shown(out: str) -> str:
    """The columns a table named as left out (the note may wrap over lines)."""
    return " ".join(" ".join(re.findall(r"columns not shown at this width[^:]*:(.*?)(?:;|$)", " ".join(out.split()))).split())


@pytest.fixture
def console80(monkeypatch: pytest.MonkeyPatch) -> None:
    """mito's console at 80 columns, as a pipe gets it (rich reads COLUMNS when it is made)."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(mito.cli, "console", Console())


@pytest.fixture(scope="module")
def bench80(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two proxy tasks, shift rows held out by dataset and a learning curve: the widest leaderboard there is."""
    out = tmp_path_factory.mktemp("bench80") / "b"
    r = _mito80(
        "bench",
        "--store",
        str(amibr_store),
        "--proxy",
        "mitosis,dataset",
        "--shift-column",
        "dataset",
        "--out",
        str(out),
        "--features",
        "efficientnet_lite0:z1:rgb,efficientnet_lite0:z1:gray",
        "--heads",
        "logreg,knn",
        "--folds",
        "2",
        "--jobs",
        "1",
        "--n-boot",
        "50",
        "--no-umap",
        "--few-shot",
        "1,2,all",
        "--few-shot-draws",
        "2",
    )
    assert r.returncode == 0, r.stderr
    return out, r.stdout


# leaderboard.json column -> the header it is shown under, and how the table writes it
SHOWN = {
    "main": ("bal acc", number),
    "main_std": ("bal acc", number),
    "ci_low": ("95% CI", number),
    "ci_high": ("95% CI", number),
    "delta_vs_best": ("Δ #1", lambda v: number(v, signed=True)),
    "p_vs_best": ("p vs #1", p_value),
    "auroc": ("AUROC", number),
    "ece": ("ECE", number),
    "kappa": ("kappa", number),
    "weighted_f1": ("wF1", number),
    "train_seconds": ("train s", seconds),
    "gap": ("gap", lambda v: number(v, signed=True)),
}


def test_bench_table_never_cuts_a_number(bench80: tuple[Path, str]) -> None:
    out_dir, out = bench80
    assert max(len(x) for x in out.splitlines()) <= 80, out
    rows = [r for r in json.loads((out_dir / "leaderboard.json").read_text())["rows"] if str(r.get("shots")) == "all" and r["rank"] <= 20]
    assert {bool(r["held_out"]) for r in rows} == {True, False} and len({r["task"] for r in rows}) == 2
    table = out.split("leaderboard (ranked by", 1)[1].split("vs labelled tiles per class", 1)[0]
    got, dropped = Counter(NUM.findall(table)), _not_shown(table)
    assert dropped, table  # at 80 columns some columns must give way
    checked = 0
    for key, (header, fmt) in SHOWN.items():
        col = {"main": rows[0]["main_metric"], "main_std": rows[0]["main_metric"] + "_std"}.get(key, key)
        want = Counter(
            fmt(r[col])
            for r in rows
            if r.get(col) is not None
            and not (isinstance(r[col], float) and math.isnan(r[col]))
            and not (col in ("delta_vs_best", "p_vs_best") and r["rank"] == 1)
        )
        if header in dropped:
            continue
        assert not want - got, (header, want - got, table)
        checked += len(want)
    assert checked > 2 * len(rows)  # the main metric, its std and more


def test_learning_curve_table_shows_every_number(bench80: tuple[Path, str]) -> None:
    out_dir, out = bench80
    curve = out.split("vs labelled tiles per class", 1)[1]
    rows = [r for r in json.loads((out_dir / "leaderboard.json").read_text())["rows"] if str(r.get("shots")) not in ("all", "None")]
    assert rows
    got = Counter(NUM.findall(curve))
    want = Counter(number(r[c]) for r in rows for c in (r["main_metric"], "ci_low", "ci_high"))
    assert not want - got, want - got
    assert "columns not shown" not in curve  # the curve wraps its columns, it never drops a K


def test_compare_table_at_80_columns(bench80: tuple[Path, str]) -> None:
    out_dir, _ = bench80
    r = _mito80("compare", "--bench", str(out_dir), "--rows", "1,2", "--task", "mitosis")
    assert r.returncode == 0, r.stderr
    assert max(len(x) for x in r.stdout.splitlines()) <= 80, r.stdout
    rows = {
        x["rank"]: x
        for x in json.loads((out_dir / "leaderboard.json").read_text())["rows"]
        if x["task"] == "mitosis" and not x["held_out"] and str(x.get("shots")) == "all"
    }
    got = NUM.findall(r.stdout)
    for m in ("balanced_accuracy", "auroc", "kappa", "weighted_f1", "pr_auc"):
        assert number(rows[1][m], 4) in got and number(rows[2][m], 4) in got, (m, r.stdout)
    said = " ".join(r.stdout.split())  # its p is this pair's alone; the leaderboard's is Holm-adjusted: both said
    assert "two-sided p of this one pair, not adjusted (the leaderboard's p vs #1 is Holm-adjusted within the task" in said, said


def test_fit_head_cache_info_and_backbones_at_80_columns(amibr_store: Path, tmp_path: Path, console80: None) -> None:
    r = runner.invoke(app, ["fit-head", "--store", str(amibr_store), "--out", str(tmp_path / "m"), "--head", "logreg"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    got = NUM.findall(r.output)
    assert all(number(m[k]) in got for k in ("balanced_accuracy", "auroc", "kappa", "weighted_f1")) and seconds(m["train_seconds"]) in got
    info = runner.invoke(app, ["cache", "info", str(amibr_store)])
    assert info.exit_code == 0 and max(len(x) for x in info.output.splitlines()) <= 80, info.output
    assert "efficientnet_lite0:z1:rgb" in info.output.replace("\n", "").replace("│", "").replace(" ", "") or "feature" in _not_shown(
        info.output
    )
    bb = runner.invoke(app, ["backbones"])
    assert bb.exit_code == 0 and max(len(x) for x in bb.output.splitlines()) <= 80, bb.output
    from mito.backbones import list_backbones

    body = [x for x in bb.output.splitlines() if x.startswith("│")]
    assert len(body) == len(list_backbones()), bb.output  # one line per backbone
    assert "arch" in _not_shown(bb.output) and "--json" in bb.output


def test_feature_sets_break_at_plus_and_colon_piped_at_80_columns(amibr_store: Path, tmp_path: Path) -> None:
    """trial19: `COLUMNS=80 mito bench ... | cat` wrapped 'z2:rgb+gr' over 'ay' and the header 'train s' over two lines;
    and the p of each row against #1 is Holm-adjusted, which the terminal must say as report.html does."""
    e = "efficientnet_lite0"
    sets = [f"{e}:z2:rgb+{e}:z2:gray", f"{e}:z1:gray+{e}:z2:gray", f"{e}:z1:rgb+{e}:z2:rgb+{e}:z2:gray"]
    out = tmp_path / "b"
    r = _mito80(
        "bench",
        "--store",
        str(amibr_store),
        "--proxy",
        "mitosis,dataset",
        "--out",
        str(out),
        "--features",
        ",".join(sets),
        "--heads",
        "logreg,knn",
        "--folds",
        "2",
        "--jobs",
        "1",
        "--n-boot",
        "20",
        "--no-umap",
    )
    assert r.returncode == 0, r.stderr
    names = sorted({x["features"] for x in json.loads((out / "leaderboard.json").read_text())["rows"]})
    assert all("+" in n for n in names), names

    def runs(name: str) -> set[str]:
        toks = re.findall(r"[^+:,/ ]*[+:,/]|[^+:,/ ]+", name)
        return {"".join(toks[i:j]) for i in range(len(toks)) for j in range(i + 1, len(toks) + 1)}

    table = r.stdout.split("leaderboard (ranked by", 1)[1]
    header = next(x for x in table.splitlines() if "features" in x).split("┃")
    col = next(i for i, h in enumerate(header) if h.strip() == "features")
    cells = [parts[col].strip() for x in table.splitlines() if len(parts := x.split("│")) > col and parts[col].strip()]
    assert cells and all(any(c in runs(n) for n in names) for c in cells), r.stdout  # whole tokens only
    assert any(c not in names for c in cells), r.stdout  # at 80 columns some set does wrap (else this tests nothing)
    assert "train s" in r.stdout or "train s" in _not_shown(table), r.stdout
    said = " ".join(r.stdout.split())
    assert "p vs #1" in said and "Holm-adjusted within the task" in said, r.stdout
