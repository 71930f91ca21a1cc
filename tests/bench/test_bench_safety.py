"""mito bench with hostile or awkward input: impossible tasks, existing outputs, path-like task names, tampered files, interrupts."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mito.cli import app
from mito.store import StoreError
from tests.heads.conftest import amibr_tiles, synthetic_store
from tests.interrupts import assert_one_interrupted_line, cpu_seconds, needs_proc, session_processes, start

runner = CliRunner()
QUICK = ["--features", "efficientnet_lite0:z1:rgb", "--heads", "knn", "--jobs", "1", "--n-boot", "0", "--no-umap"]


def _one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert text in result.output, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output


@pytest.fixture(scope="module")
def small_bench(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "lb"
    r = runner.invoke(app, ["bench", "--store", str(amibr_store), "--out", str(out), "--folds", "3", *QUICK])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def rare_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real AMi-Br tiles with synthetic features and a label column whose class 'A' lives on only two slides."""
    tiles = amibr_tiles(160)
    biggest = tiles["group"].value_counts().index[:2]  # >= 3 tiles of 'A', but on 2 slides: too few for 3 folds
    tiles["rare"] = ["A" if g in biggest else "B" for g in tiles["group"]]
    return synthetic_store(tmp_path_factory.mktemp("rare") / "s.zarr", tiles, {"fakenet:z1:rgb": 8})


def test_proxy_all_never_crashes_on_a_small_store(amibr_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"  # 48 crops: sklearn used to crash on the expert-label tasks (too few members per class)
    r = runner.invoke(app, ["bench", "--store", str(amibr_store), "--proxy", "all", "--out", str(out), *QUICK])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    ranked = set(pd.read_csv(out / "leaderboard.csv")["task"])
    skipped = json.loads((out / "leaderboard.json").read_text())["meta"]["skipped_tasks"]
    assert "mitosis" in ranked and ranked | set(skipped) == {"mitosis", "dataset", "phase", "atypia"}
    assert all("slides/groups" in why or "classes" in why for why in skipped.values()), skipped


def test_an_impossible_task_is_skipped_with_its_reason(rare_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(rare_store),
            "--proxy",
            "mitosis,rare",
            "--out",
            str(out),
            "--folds",
            "3",
            "--features",
            "fakenet:z1:rgb",
            "--heads",
            "knn",
            "--jobs",
            "1",
            "--n-boot",
            "0",
            "--no-umap",
        ],
    )
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "skipped task rare" in r.output
    assert "slides/groups" in json.loads((out / "leaderboard.json").read_text())["meta"]["skipped_tasks"]["rare"]
    assert set(pd.read_csv(out / "leaderboard.csv")["task"]) == {"mitosis"}


def test_a_single_impossible_task_is_one_line(rare_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(rare_store),
            "--task",
            "rare",
            "--out",
            str(tmp_path / "a"),
            "--folds",
            "3",
            "--features",
            "fakenet:z1:rgb",
            "--heads",
            "knn",
            "--jobs",
            "1",
            "--n-boot",
            "0",
            "--no-umap",
        ],
    )
    _one_line_error(r, "slides/groups")
    assert not (tmp_path / "a").exists()


def test_existing_out_needs_overwrite_and_must_be_a_bench_folder(amibr_store: Path, small_bench: Path, tmp_path: Path) -> None:
    args = ["bench", "--store", str(amibr_store), "--folds", "3", *QUICK]
    before = (small_bench / "leaderboard.json").read_bytes()
    _one_line_error(runner.invoke(app, [*args, "--out", str(small_bench)]), "--overwrite")
    assert (small_bench / "leaderboard.json").read_bytes() == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    _one_line_error(runner.invoke(app, [*args, "--out", str(foreign), "--overwrite"]), "did not write")
    assert (foreign / "thesis.tex").read_text() == "precious"
    _one_line_error(runner.invoke(app, [*args, "--out", str(amibr_store / "x"), "--overwrite"]), str(amibr_store))
    copy = tmp_path / "copy"
    shutil.copytree(small_bench, copy)  # files and the rows/ recipes
    (copy / "stale.png").write_bytes(b"old")
    r = runner.invoke(app, [*args, "--out", str(copy), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert not (copy / "stale.png").exists() and (copy / "report.html").is_file()


@pytest.mark.slow
def test_a_path_like_task_name_stays_inside_out(tmp_path: Path) -> None:
    tiles = amibr_tiles(120)
    tiles["../../x"] = tiles["mitosis"]
    with pytest.raises(StoreError, match="column '../../x' cannot be stored"):  # a store never holds such a column
        synthetic_store(tmp_path / "deep" / "bad.h5", tiles, {"fakenet:z1:rgb": 8})
    tiles = tiles.rename(columns={"../../x": "x:*?<>|"})  # the names a store keeps are still made safe as file names
    store = synthetic_store(tmp_path / "deep" / "s.h5", tiles, {"fakenet:z1:rgb": 8})
    out = tmp_path / "deep" / "a" / "b" / "out"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--task",
            "x:*?<>|",
            "--out",
            str(out),
            "--folds",
            "2",
            "--features",
            "fakenet:z1:rgb",
            "--heads",
            "knn",
            "--jobs",
            "1",
            "--n-boot",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    # the store's writer-lock file (".s.h5.lock") lives beside the store by design
    outside = {p for p in (tmp_path / "deep").rglob("*") if not p.is_relative_to(out) and not p.name.endswith(".lock")}
    assert outside == {tmp_path / "deep" / "s.h5", tmp_path / "deep" / "a", tmp_path / "deep" / "a" / "b"}, outside
    assert {p.name for p in out.iterdir()} >= {"x_bars.png", "umap_x.png", "report.html"}


def test_tampered_leaderboard_values_are_escaped_in_the_report(small_bench: Path, tmp_path: Path) -> None:
    d = tmp_path / "t"
    shutil.copytree(small_bench, d)  # files and the rows/ recipes
    doc = json.loads((d / "leaderboard.json").read_text())
    evil = "<script>alert(1)</script>"
    for k in ("features", "backbone", "head", "budget", "task", "cv"):
        doc["rows"][0][k] = evil
    doc["meta"]["store"] = {"path": evil, "n_tiles": evil}
    doc["meta"]["tasks"] = {evil: {"description": evil, "classes": [evil, "b"], "cv_description": evil, "fold_fingerprint": evil}}
    (d / "leaderboard.json").write_text(json.dumps(doc))
    r = runner.invoke(app, ["report", str(d)])
    assert r.exit_code == 0, r.output
    page = (d / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert all(p.parent == d for p in d.rglob("*.png"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "predictions.npz").write_bytes((d / "predictions.npz").read_bytes()[:200]), "predictions.npz"),
        (lambda d: (d / "leaderboard.json").write_text("[1, 2]"), "leaderboard.json is not a leaderboard"),
        (lambda d: (d / "leaderboard.json").write_text('{"rows": [{"task": "m", "balanced_accuracy": "high"}]}'), "leaderboard.json"),
        (lambda d: (d / "leaderboard.json").write_text("{"), "leaderboard.json is not valid JSON"),
    ],
)
def test_damaged_leaderboard_files_are_one_line(small_bench: Path, tmp_path: Path, damage, message: str) -> None:
    d = tmp_path / "t"
    shutil.copytree(small_bench, d)  # files and the rows/ recipes
    damage(d)
    _one_line_error(runner.invoke(app, ["report", str(d)]), message)


LONG_MLP = ["--heads", "mlp", "--param", "mlp.epochs=100000000", "--param", "mlp.patience=100000000"]
AS_TIMEOUT = "timeout"  # GNU `timeout -s SIG`: the signal goes to the command, then to its whole process group


def _send(run, signals: list[int], to: str) -> None:
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.2)
        if to == AS_TIMEOUT:
            run.signal(sig, group=False)
        run.signal(sig, group=to != "parent")


def _interrupted_cleanly(run, signals: list[int], out: Path, tmp_path: Path) -> None:
    seconds = run.finish(timeout=120)
    left = run.leftovers()
    line = assert_one_interrupted_line(run.stderr)
    assert "nothing was written" in line and "resume" not in line
    assert not left, f"processes left behind: {left}"
    assert seconds < 60, f"took {seconds:.0f} s to exit"
    assert run.proc.returncode == 128 + signals[0], line  # 130 for SIGINT, 143 for SIGTERM, as a shell reports
    assert not out.exists() and not list(tmp_path.glob(".o.*"))


@pytest.mark.parametrize(
    ("signals", "to"),
    [
        ([signal.SIGINT], "group"),  # Ctrl-C in a terminal: the whole process group, workers included
        ([signal.SIGINT, signal.SIGINT], "group"),  # Ctrl-C twice in quick succession: the second lands in the cleanup
        ([signal.SIGTERM], "parent"),  # `kill PID`: only the parent hears it, the workers keep training
        ([signal.SIGTERM], AS_TIMEOUT),
    ],
    ids=["sigint", "double-sigint", "sigterm-parent", "sigterm-timeout"],
)
@pytest.mark.slow
def test_interrupted_bench_exits_in_seconds_with_one_line_and_no_process_left(
    amibr_store: Path, tmp_path: Path, signals: list[int], to: str
) -> None:
    needs_proc()
    out = tmp_path / "o"
    run = start(
        [
            "bench",
            "--store",
            str(amibr_store),
            "--out",
            str(out),
            "--features",
            "efficientnet_lite0:z1:rgb",
            *LONG_MLP,
            "--folds",
            "2",
            "--jobs",
            "2",
            "--n-boot",
            "0",
            "--no-umap",
        ]
    )
    try:

        def workers_busy() -> bool:  # both loky workers exist and train (they would train "forever")
            workers = [p for p, cmd in session_processes(run.proc.pid).items() if "LokyProcess" in cmd]
            return len(workers) >= 2 and all(cpu_seconds(p) > 1.0 for p in workers)

        run.wait_for(workers_busy, what="two busy workers")
        _send(run, signals, to)
        _interrupted_cleanly(run, signals, out, tmp_path)
    finally:
        run.kill_session()


@pytest.mark.slow
def test_few_shot_bench_interrupted_as_timeout_does_leaves_nothing_and_says_one_line(amibr_store: Path, tmp_path: Path) -> None:
    """`timeout -s INT` on a few-shot bench (issue 19): many short jobs, workers that have read the store."""
    needs_proc()
    out = tmp_path / "o"
    # FORCE_COLOR: rich draws its live bars into the pipe, so the stage is seen as it starts
    run = start(
        [
            "bench",
            "--store",
            str(amibr_store),
            "--out",
            str(out),
            "--features",
            "efficientnet_lite0:z1:rgb",
            "--heads",
            "knn,logreg",
            "--few-shot",
            "1,2",
            "--folds",
            "2",
            "--jobs",
            "2",
            "--n-boot",
            "0",
            "--no-umap",
        ],
        env={"FORCE_COLOR": "1"},
    )
    try:
        run.wait_for(lambda: "scoring few-shot rows" in run.stderr, what="the few-shot scoring stage")
        _send(run, [signal.SIGINT], AS_TIMEOUT)
        _interrupted_cleanly(run, [signal.SIGINT], out, tmp_path)
    finally:
        run.kill_session()


def _has_module(name: str) -> bool:
    import sys

    return name in sys.modules


def test_workers_import_the_heads_they_will_train_before_their_first_job() -> None:
    """loky measures a worker's memory after its first job and restarts a worker that then grows 300 MB ('A worker
    stopped ... memory leak' in the demo): a torch head's module is imported up front, and only when one is planned."""
    from joblib import Parallel, delayed

    from mito.bench.rows import run_parallel
    from mito.heads import head_modules

    torch_heads = "mito.heads.torch_heads"
    assert head_modules(["logreg", "knn"]) == ("mito.heads.sklearn_heads",)
    assert torch_heads in head_modules(["logreg", "mlp"])
    calls = [delayed(_has_module)(torch_heads) for _ in range(2)]
    assert run_parallel(Parallel, calls, 2, 2, False, "x", preload=head_modules(["mlp"])) == [True, True]
    assert run_parallel(Parallel, calls, 2, 2, False, "x", preload=head_modules(["logreg"])) == [False, False]
