"""The typed leaderboard row: it covers the leaderboard's columns and rows of folders written before it (the row producers:
test_row_kind_example.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mito.bench import load_leaderboard
from mito.bench.leaderboard import COLUMNS
from mito.bench.row import Row
from mito.core.metrics import CALIBRATION_NAMES, METRIC_NAMES

LEGACY_BENCH = Path(__file__).resolve().parents[1] / "assets" / "legacy" / "bench"


def test_row_fields_cover_the_leaderboard_columns() -> None:
    fields = set(Row.model_fields)
    assert {c for m in (*METRIC_NAMES, *CALIBRATION_NAMES) for c in (m, f"{m}_std")} <= fields
    assert set(COLUMNS) <= fields
    r = Row(task="t", backbone="b", features="f", head="h", row_id="x", main_metric="auroc", auroc=0.7)
    assert r.record() == {
        "task": "t",
        "backbone": "b",
        "features": "f",
        "head": "h",
        "noise": 0.0,
        "kind": "head",
        "row_id": "x",
        "auroc": 0.7,
        "main_metric": "auroc",
    }
    with pytest.raises(ValueError):
        Row(task="t", backbone="b", features="f", head="h", row_id="x", main_metric="auroc", n_train="many")


def test_rows_of_a_folder_written_before_the_row_model_validate_into_it() -> None:
    lb = load_leaderboard(LEGACY_BENCH)
    rows = [Row.from_record(r) for r in lb.rows.to_dict("records")]
    assert len(rows) == len(lb.rows) > 0
    assert [r.row_id for r in rows] == lb.rows["row_id"].tolist()
    assert [r.auroc for r in rows] == pytest.approx(lb.rows["auroc"].tolist(), nan_ok=True)


def test_a_cell_of_the_wrong_type_is_refused_in_one_line(tmp_path: Path) -> None:
    import json
    import shutil

    from mito.bench import BenchError

    d = tmp_path / "lb"
    shutil.copytree(LEGACY_BENCH, d)
    doc = json.loads((d / "leaderboard.json").read_text())
    doc["rows"][0]["keys"] = 5
    (d / "leaderboard.json").write_text(json.dumps(doc))
    with pytest.raises(BenchError, match=r"row 1 \(.*\): keys: Input should be a valid list") as e:
        load_leaderboard(d)
    assert "\n" not in str(e.value)
