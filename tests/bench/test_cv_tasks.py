"""Folds keep slides together and are identical for every row; proxy tasks derive the right labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mito.bench import BenchError, all_feature_sets, available_tasks, make_folds, resolve_task
from mito.core.errors import TaskError
from mito.core.tasks import task_labels
from mito.datasets import PROXY_TASKS


def _tiles(n_slides: int = 20, per_slide: int = 6, n_test: int = 30, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_slides):
        for i in range(per_slide):
            rows.append(
                {"tile_id": f"s{s}_{i}", "group": f"slide{s}", "split": "train", "mitosis": "Atypical" if rng.random() < 0.3 else "Normal"}
            )
    for i in range(n_test):
        rows.append(
            {"tile_id": f"t{i}", "group": f"unknown-slide:t{i}", "split": "test", "mitosis": "Atypical" if i % 3 == 0 else "Normal"}
        )
    df = pd.DataFrame(rows)
    return df, df["mitosis"].astype(object)


def _groups(df: pd.DataFrame, rows: np.ndarray) -> set[str]:
    return set(df["group"].to_numpy()[rows])


@pytest.mark.parametrize("cv", ["kfold", "split"])
def test_folds_never_share_a_slide(cv: str) -> None:
    df, y = _tiles()
    plan = make_folds(df, y, n_folds=5, cv=cv, seed=0)
    assert plan.mode == cv and len(plan.folds) == 5
    for f in plan.folds:
        tr, va, te = _groups(df, f.train), _groups(df, f.val), _groups(df, f.test)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert len(f.train) and len(f.val) and len(f.test)
    if cv == "kfold":  # every labelled tile is tested exactly once
        tested = np.concatenate([f.test for f in plan.folds])
        assert sorted(tested) == list(range(len(df)))
    else:  # every model is scored on the whole test split and trained on train-split tiles only
        test_rows = np.flatnonzero(df["split"] == "test")
        for f in plan.folds:
            assert np.array_equal(f.test, test_rows)
            assert (df["split"].to_numpy()[np.concatenate([f.train, f.val])] == "train").all()


def test_auto_uses_split_only_when_both_sides_are_labelled() -> None:
    df, y = _tiles()
    assert make_folds(df, y, n_folds=3).mode == "split"
    y_train_only = y.where(df["split"] == "train", None)
    assert make_folds(df, y_train_only, n_folds=3).mode == "kfold"
    with pytest.raises(BenchError, match="cv=split needs"):
        make_folds(df, y_train_only, n_folds=3, cv="split")


def test_fingerprint_is_stable_and_sensitive() -> None:
    df, y = _tiles()
    a = make_folds(df, y, n_folds=5, seed=0)
    assert a.fingerprint == make_folds(df, y, n_folds=5, seed=0).fingerprint
    assert a.fingerprint != make_folds(df, y, n_folds=5, seed=1).fingerprint
    assert a.fingerprint != make_folds(df, y, n_folds=4, seed=0).fingerprint


def test_excluded_and_unlabelled_rows_are_left_out() -> None:
    df, y = _tiles()
    y = y.copy()
    y.iloc[0] = None
    exclude = np.zeros(len(df), bool)
    exclude[1] = True
    plan = make_folds(df, y, n_folds=5, cv="kfold", exclude=exclude)
    used = np.concatenate([np.concatenate([f.train, f.val, f.test]) for f in plan.folds])
    assert 0 not in used and 1 not in used


def test_too_few_slides_is_a_clear_error() -> None:
    df, y = _tiles(n_slides=3, n_test=0)
    with pytest.raises(BenchError, match="need at least 5 slides"):
        make_folds(df, y, n_folds=5)
    with pytest.raises(BenchError, match="cv must be"):
        make_folds(df, y, n_folds=2, cv="random")


def test_real_store_folds_never_share_a_slide(amibr_store) -> None:
    from mito.bench.leaderboard import task_plan
    from mito.store import open_store

    with open_store(amibr_store) as s:
        tiles = s.tiles
    _, y, classes, plan = task_plan(tiles, "mitosis", 3, "kfold", 0, None)
    assert classes == ["Atypical", "Normal"]
    slides = tiles["group"].to_numpy()
    for f in plan.folds:
        assert not set(slides[f.train]) & set(slides[f.test])
        assert not set(slides[f.val]) & (set(slides[f.test]) | set(slides[f.train]))


# ------------------------------------------------------------------ tasks
def _expert_tiles() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tile_id": list("abcdef"),
            "mitosis": ["Normal", "Normal", "Atypical", "Atypical", "Normal", None],
            "dataset": ["MIDOG21", "TUPAC16", "MIDOG21", "TUPAC16", "MIDOG21", "TUPAC16"],
            "expert1_label": ["NMF metaphase", "NMF prometaphase", "AMF segregation", "AMF other", "NMF metaphase", None],
            "expert2_label": ["NMF metaphase", "NMF metaphase", "AMF segregation", "AMF other", "NMF metaphase", None],
            "group": list("abcdef"),
            "scanner_score": [1, 2, 3, 4, 5, 6],
        }
    )


def test_proxy_tasks_derive_consensus_labels() -> None:
    df = _expert_tiles()
    phase = resolve_task(df, "phase", PROXY_TASKS).labels(df).tolist()
    assert phase == ["metaphase", None, None, None, "metaphase", None]  # b: experts disagree; c, d: atypical
    atypia = resolve_task(df, "atypia", PROXY_TASKS).labels(df).tolist()
    assert atypia == [None, None, "segregation", "other", None, None]
    assert resolve_task(df, "dataset", PROXY_TASKS).labels(df).tolist() == df["dataset"].tolist()
    assert resolve_task(df, "mitosis", PROXY_TASKS).labels(df).tolist()[-1] is None


def test_any_label_column_is_a_task_and_unknown_names_fail() -> None:
    df = _expert_tiles()
    assert resolve_task(df, "scanner_score", PROXY_TASKS).name == "scanner_score"
    assert available_tasks(df, ["mitosis", "scanner_score"], PROXY_TASKS) == ["mitosis", "phase", "atypia", "dataset", "scanner_score"]
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        resolve_task(df, "nope", PROXY_TASKS)
    with pytest.raises(TaskError, match="fewer than two classes"):
        task_labels(df, resolve_task(df, "phase", PROXY_TASKS))


def test_all_feature_sets() -> None:
    v = [f"lite0:z{z}:{c}" for z in (1, 2) for c in ("rgb", "gray")] + ["lite1:z1:rgb", "lite2:z1:rgb", "random_lite0:z1:rgb"]
    sets = {(fs.backbone, fs.name): fs.keys for fs in all_feature_sets(v)}
    assert sets[("lite0", "z1:rgb+gray")] == ("lite0:z1:rgb", "lite0:z1:gray")
    assert sets[("lite0", "z1+z2:rgb")] == ("lite0:z1:rgb", "lite0:z2:rgb")
    assert sets[("lite0", "z1+z2:rgb+gray")] == ("lite0:z1:rgb", "lite0:z1:gray", "lite0:z2:rgb", "lite0:z2:gray")
    assert sets[("lite0+lite1+lite2", "z1:rgb")] == ("lite0:z1:rgb", "lite1:z1:rgb", "lite2:z1:rgb")  # controls stay out
    assert ("random_lite0", "z1:rgb") in sets and ("lite1", "z1:rgb") in sets
    assert len(sets) == 4 + 2 + 2 + 1 + 3 + 1


def test_tiny_test_folds_get_a_note_and_ample_ones_none() -> None:
    from mito.bench.cv import MIN_TEST_PER_CLASS, small_test_note

    df, y = _tiles(n_test=30)  # test split: 10 Atypical, 20 Normal = the threshold exactly
    plan = make_folds(df, y, n_folds=3, cv="split", seed=0)
    labels = y.to_numpy()
    assert MIN_TEST_PER_CLASS == 10 and small_test_note(plan, labels, ["Atypical", "Normal"]) == ""
    df, y = _tiles(n_test=27)  # 9 Atypical
    note = small_test_note(make_folds(df, y, n_folds=3, cv="split", seed=0), y.to_numpy(), ["Atypical", "Normal"])
    assert note.startswith("too small to rank: the test split holds only 9 tiles of class 'Atypical'") and "\n" not in note
    df, y = _tiles(n_slides=12, per_slide=3, n_test=0)  # 36 tiles in 4 folds: ~3 Atypical per test fold, as trial19's atypia
    plan = make_folds(df, y, n_folds=4, cv="kfold", seed=0)
    smallest = min(int((y.to_numpy()[f.test] == "Atypical").sum()) for f in plan.folds)
    assert f"a test fold holds only {smallest} tiles of class 'Atypical'" in small_test_note(plan, y.to_numpy(), ["Atypical", "Normal"])
