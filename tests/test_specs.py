"""Job specs (issue 21 parts 1, 2, 5): --config FILE.yaml and --set on every job command, precedence (command-line
option > --set > file > default), one line with file:line for a wrong key or value, `mito spec init` templates that
load back for every job, `mito spec show`, one head-parameter grammar, preflight instead of machine-bound validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mito.cli import JOB_COMMANDS, app
from mito.core.spec import SpecError, load_spec, parse_sets, spec_template

runner = CliRunner()


def _fit(store: Path, out: Path, *args: str) -> dict:
    r = runner.invoke(app, ["fit-head", *args, "--json", "--overwrite"] + (["--store", str(store)] if store else []) + ["--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout[r.stdout.index("{") :])
    for k in ("train_seconds", "total_seconds", "model_dir"):  # the clock and the folder differ, nothing else may
        m.pop(k)
    return m


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_gives_the_same_model_as_the_flags(amibr_store: Path, tmp_path: Path) -> None:
    flags = ["--head", "mlp", "--hidden", "32", "--epochs", "5", "--split-column", "none", "--test-fraction", "0.3", "--seed", "3"]
    by_flags = _fit(amibr_store, tmp_path / "a", *flags)
    spec = _write(
        tmp_path / "fit.yaml",
        f"job: fit\nstore: {amibr_store}\nhead: mlp\nhead_params: {{hidden: 32, epochs: 5}}\n"
        "split_column: null\ntest_fraction: 0.3\nseed: 3\n",
    )
    by_file = _fit(None, tmp_path / "b", "--config", str(spec))  # type: ignore[arg-type]
    assert by_file == by_flags
    assert "test 0.3" in by_file["split"]
    a = json.loads((tmp_path / "a" / "config.json").read_text())
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {k: v for k, v in a.items() if k != "created"} == {k: v for k, v in b.items() if k != "created"}


def test_precedence_flag_over_set_over_file_over_default(amibr_store: Path, tmp_path: Path) -> None:
    spec = _write(tmp_path / "fit.yaml", f"store: {amibr_store}\nhead: logreg\nsplit_column: null\ntest_fraction: 0.3\n")
    base = ["--config", str(spec)]
    assert "test 0.3" in _fit(None, tmp_path / "m", *base)["split"]  # type: ignore[arg-type]
    assert "test 0.4" in _fit(None, tmp_path / "m", *base, "--set", "test_fraction=0.4")["split"]  # type: ignore[arg-type]
    got = _fit(None, tmp_path / "m", *base, "--set", "test_fraction=0.4", "--test-fraction", "0.25")  # type: ignore[arg-type]
    assert "test 0.25" in got["split"]
    assert "val 0.2 " in got["split"] + " "  # a key in neither: the default


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("store: S\nhead: mlp\nhaed: linear\n", "fit.yaml:3: haed:", "unknown key (did you mean head?"),
        ("store: S\n\nhead: mpl\n", "fit.yaml:3: head:", "unknown head 'mpl'; choose one of"),
        ("store: S\npca: 0\n", "fit.yaml:2: pca:", "pca must be >= 1 components (got 0)"),
        ("store: S\nhead_params:\n  hidden: 8\ncalibrate: sometimes\n", "fit.yaml:4: calibrate:", "'temperature'"),
        ("store: S\nseed: [1, 2\n", "fit.yaml:2: not valid YAML", ""),
    ],
)
def test_a_wrong_key_or_value_is_one_line_with_file_and_line(tmp_path: Path, text: str, where: str, what: str) -> None:
    spec = _write(tmp_path / "fit.yaml", text)
    r = runner.invoke(app, ["fit-head", "--config", str(spec), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and where in lines[0] and what in lines[0], r.output
    assert not (tmp_path / "m").exists()


def test_set_and_flag_errors_name_the_set_key_or_the_option(tmp_path: Path) -> None:
    spec = _write(tmp_path / "lora.yaml", "job: lora\nsource: tiles\nout: runs/x\nn_folds: 1\n")
    r = runner.invoke(app, ["lora", "--config", str(spec)])
    assert r.exit_code == 2 and "lora.yaml:4: n_folds: Input should be greater than or equal to 2" in r.output, r.output
    r = runner.invoke(app, ["lora", "--config", str(spec), "--set", "n_folds=0"])
    assert r.exit_code == 2 and "--set n_folds: Input should be greater than or equal to 2" in r.output, r.output
    r = runner.invoke(app, ["lora", "--config", str(spec), "--folds", "1"])  # the renamed field speaks as its option
    assert r.exit_code == 2 and "--folds: Input should be greater than or equal to 2 (got 1)" in r.output, r.output
    r = runner.invoke(app, ["lora", "--config", str(spec), "--folds", "5", "--run-folds", "0"])
    assert r.exit_code == 2 and "--run-folds: Input should be greater than or equal to 1" in r.output, r.output
    r = runner.invoke(app, ["lora", "--config", str(spec), "--set", "bogus"])
    assert r.exit_code == 2 and "--set takes KEY=VALUE" in r.output, r.output
    r = runner.invoke(app, ["bench", "--config", str(spec), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "a spec of job 'lora'; this command runs bench or bench-slide" in r.output, r.output


@pytest.mark.parametrize("job", list(JOB_COMMANDS))
def test_spec_init_writes_a_template_that_loads_back_and_validates(job: str, tmp_path: Path) -> None:
    out = tmp_path / f"{job}.yaml"
    r = runner.invoke(app, ["spec", "init", job, "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    raw = load_spec(out)
    assert raw.job == job
    from mito.cli_spec import job_model

    model = job_model(job)
    assert set(raw.values) == set(model.model_fields)  # every key, none unknown
    for name, info in model.model_fields.items():
        assert info.description and info.description.split()[0] in text, name  # a sentence per key
    shown = runner.invoke(app, ["spec", "show", str(out)])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.stdout)["job"] == job
    again = runner.invoke(app, ["spec", "init", job, "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_extract_template_keeps_the_command_defaults() -> None:
    r = runner.invoke(app, ["spec", "init", "extract"])
    assert r.exit_code == 0
    data = yaml.safe_load(r.stdout)
    assert data["zooms"] == [1.0, 2.0] and data["colors"] == ["rgb", "gray"]  # what `mito extract` does, not the model's


def test_spec_show_reads_run_yaml_of_an_output_and_says_when_there_is_none(tmp_path: Path) -> None:
    r = runner.invoke(app, ["spec", "show", str(tmp_path)])
    assert r.exit_code == 2 and "has no run.yaml" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    run = {"job": "bench", "spec": {"store": "s.zarr", "tasks": ["mitosis"], "n_folds": 3}, "versions": {"mito": "x"}}
    _write(tmp_path / "run.yaml", yaml.safe_dump(run))
    r = runner.invoke(app, ["spec", "show", str(tmp_path)])
    assert r.exit_code == 0, r.output
    shown = yaml.safe_load(r.stdout)
    assert '# versions: {"mito": "x"}' in r.stdout.splitlines()
    assert shown["job"] == "bench" and shown["n_folds"] == 3 and shown["n_boot"] == 1000 and shown["tasks"] == ["mitosis"]
    slide = {"job": "fit-head", "spec": {"store": "s.zarr", "task": "label", "bag_column": "slide"}}  # the command's name
    _write(tmp_path / "run.yaml", yaml.safe_dump(slide))
    r = runner.invoke(app, ["spec", "show", str(tmp_path / "run.yaml")])
    assert r.exit_code == 0 and yaml.safe_load(r.stdout)["job"] == "fit-slide" and "head: abmil" in r.stdout, r.output
    run["spec"]["n_foldz"] = 3  # type: ignore[index]
    _write(tmp_path / "run.yaml", yaml.safe_dump(run))
    r = runner.invoke(app, ["spec", "show", str(tmp_path)])
    assert r.exit_code == 2 and "run.yaml:" in r.output and "n_foldz: unknown key (did you mean n_folds?" in r.output, r.output


def test_one_head_parameter_grammar(amibr_store: Path, tmp_path: Path) -> None:
    short = _fit(amibr_store, tmp_path / "a", "--head", "mlp", "-p", "hidden=16", "-p", "epochs=3", "--seed", "1")
    full = _fit(amibr_store, tmp_path / "b", "--head", "mlp", "-p", "mlp.hidden=16", "--param", "mlp.epochs=3", "--seed", "1")
    assert short == full
    assert json.loads((tmp_path / "b" / "config.json").read_text())["head"]["params"]["hidden"] == 16
    r = runner.invoke(app, ["fit-head", "--store", str(amibr_store), "--out", str(tmp_path / "c"), "-p", "lightgbm.num_leaves=4"])
    assert r.exit_code == 2 and "--param names lightgbm, but fit-head trains mlp" in r.output, r.output
    r = runner.invoke(app, ["bench", "--store", str(amibr_store), "--out", str(tmp_path / "d"), "--param", "hidden=4"])
    assert r.exit_code == 2 and "--param takes HEAD.KEY=VALUE" in r.output, r.output


def test_core_spec_parts(tmp_path: Path) -> None:
    assert parse_sets(["a.b=1e-3", "c=[1, 2]", "d=auto", "e=yes", "f=true"]) == {
        ("a", "b"): 1e-3,
        ("c",): [1, 2],
        ("d",): "auto",
        ("e",): "yes",
        ("f",): True,
    }
    with pytest.raises(SpecError, match="--set takes KEY=VALUE"):
        parse_sets(["=1"])
    spec = _write(tmp_path / "s.yaml", "job: fit\nstore: x\nhead_params:\n  hidden: 3\n")
    raw = load_spec(spec)
    assert raw.job == "fit" and raw.lines[("head_params", "hidden")] == 4 and raw.values["head_params"] == {"hidden": 3}
    from mito.heads import FitConfig

    assert "# required" in spec_template(FitConfig) and "head: mlp" in spec_template(FitConfig)


def test_extract_memory_checks_are_a_preflight_not_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A spec valid on one machine validates on another: free memory is checked by preflight(), before the job."""
    import mito.extract.extractor as ex
    from mito.extract import ExtractConfig, ExtractError

    monkeypatch.setattr(ex, "available_memory", lambda: 64 << 20)
    cfg = ExtractConfig(source="tiles", store=str(tmp_path / "s.zarr"), chunk_rows=1 << 20, batch_size=4096)  # validates
    with pytest.raises(ExtractError, match="more than a quarter"):
        cfg.preflight()
    with pytest.raises(ExtractError, match="more than a quarter"):
        ex.extract(cfg)
    assert not (tmp_path / "s.zarr").exists()


def test_extract_from_a_spec_makes_the_same_store_as_the_flags(amibr_dir: Path, tmp_path: Path) -> None:
    """extract's own conversions (comma lists, --zooms numbers, --weights NAME=PATH, --quiet) give the file's values."""
    import numpy as np

    from mito.store import open_store

    flags = ["--zooms", "1,2", "--colors", "rgb", "--input-size", "64", "--sample", "6", "--seed", "2"]
    flags += ["--chunk-rows", "4", "--batch-size", "4", "--workers", "0", "-q", "--task", "mitosis"]
    a = runner.invoke(app, ["extract", str(amibr_dir), "--store", str(tmp_path / "a.zarr"), *flags])
    assert a.exit_code == 0, a.output
    spec = _write(
        tmp_path / "extract.yaml",
        f"job: extract\nsource: {amibr_dir}\nstore: {tmp_path / 'b.zarr'}\nzooms: [1, 2]\ncolors: [rgb]\ninput_size: 64\n"
        "sample: 6\nseed: 2\nchunk_rows: 4\nbatch_size: 4\nnum_workers: 0\nprogress: false\ntask: mitosis\n",
    )
    b = runner.invoke(app, ["extract", "--config", str(spec)])
    assert b.exit_code == 0, b.output
    with open_store(tmp_path / "a.zarr") as sa, open_store(tmp_path / "b.zarr") as sb:
        assert sa.variants == sb.variants == ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z2:rgb"]
        assert sa.tiles["path"].tolist() == sb.tiles["path"].tolist()
        np.testing.assert_array_equal(sa.read(sa.variants), sb.read(sb.variants))


def test_bench_from_a_spec_ranks_as_the_flags(amibr_store: Path, tmp_path: Path) -> None:
    import pandas as pd

    flags = ["--task", "mitosis", "--features", "efficientnet_lite0:z1:rgb", "--heads", "logreg,knn", "--folds", "2"]
    flags += ["--n-boot", "0", "--jobs", "1"]
    a = runner.invoke(
        app, ["bench", "--store", str(amibr_store), "--out", str(tmp_path / "a"), "--no-umap", *flags, "--param", "knn.n_neighbors=3"]
    )
    assert a.exit_code == 0, a.output
    spec = _write(
        tmp_path / "bench.yaml",
        f"job: bench\nstore: {amibr_store}\ntasks: [mitosis]\nfeatures: ['efficientnet_lite0:z1:rgb']\nheads: [logreg, knn]\n"
        "n_folds: 3\nn_boot: 0\nn_jobs: 1\nhead_params: {knn: {n_neighbors: 3}}\n",
    )
    b = runner.invoke(app, ["bench", "--config", str(spec), "--set", "n_folds=2", "--out", str(tmp_path / "b"), "--no-umap"])
    assert b.exit_code == 0, b.output
    cols = ["task", "features", "head", "balanced_accuracy", "auroc"]
    ra, rb = (pd.read_csv(tmp_path / d / "leaderboard.csv")[cols] for d in ("a", "b"))
    pd.testing.assert_frame_equal(ra, rb)
    assert len(ra) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["fit-head", "--set", "features=efficientnet_lite0:z1:rgb,efficientnet_lite0:z2:gray"],
        ["fit-head", "--set", "features=efficientnet_lite0:z1:rgb"],
        ["bench", "--set", "tasks=mitosis", "--set", "noise=0.1"],
    ],
)
def test_set_takes_a_list_field_as_its_option_does(tmp_path: Path, args: list[str]) -> None:
    """--set features=a,b (or one item) is the list --features a,b gives, not a validation error."""
    missing = tmp_path / "missing.zarr"
    r = runner.invoke(app, [*args, "--store", str(missing), "--out", str(tmp_path / "out")])
    assert r.exit_code != 0
    assert "valid list" not in r.output, r.output
    assert str(missing) in r.output, r.output


def test_run_record_keeps_overwrite_off() -> None:
    """A run made with --overwrite records overwrite: false, so its run.yaml given to --config never replaces it."""
    from mito.core.runrecord import run_record

    rec = run_record("fit-head", {"store": "s.zarr", "out": "model", "overwrite": True, "seed": 1})
    assert rec["spec"]["overwrite"] is False and rec["spec"]["seed"] == 1


def test_spec_show_prints_a_stores_runs_and_an_exports_spec(amibr_store: Path, tmp_path: Path) -> None:
    """`mito spec show` of any output: a store (its recorded extract runs, no run.yaml) and an export folder (a job
    with no spec model) print their specs instead of an error."""
    from mito.core.runrecord import write_run_record

    r = runner.invoke(app, ["spec", "show", str(amibr_store)])
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    assert doc["job"] == "extract" and doc["store"] == str(amibr_store) and doc["zooms"] == [1.0, 2.0]
    folder = tmp_path / "export"
    folder.mkdir()
    write_run_record(folder, "export", {"store": str(amibr_store), "format": "clam", "feature": None})
    r = runner.invoke(app, ["spec", "show", str(folder)])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout) == {"job": "export", "store": str(amibr_store), "format": "clam", "feature": None}


@pytest.mark.parametrize("sets", [["positive=1"], ["task=2024-01-01"], ["positive=1", "task=0x10"]])
def test_set_keeps_text_fields_as_text(tmp_path: Path, sets: list[str]) -> None:
    """--set positive=1 (a 0/1 label) or task=2024-01-01 is the text, as --positive 1 is; not 'Input should be a valid
    string'."""
    missing = tmp_path / "missing.zarr"
    args = [a for s in sets for a in ("--set", s)]
    r = runner.invoke(app, ["fit-head", *args, "--store", str(missing), "--out", str(tmp_path / "out")])
    assert r.exit_code != 0
    assert "valid string" not in r.output, r.output
    assert str(missing) in r.output, r.output
