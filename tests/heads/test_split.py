"""Train/val/test assignment on the real AMi-Br tile table: slides never leak, classes stay represented."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mito.heads import HeadError, make_split

from .conftest import amibr_tiles


@pytest.fixture(scope="module")
def tiles() -> pd.DataFrame:
    return amibr_tiles()


def _groups(t: pd.DataFrame, side: np.ndarray, name: str) -> set[str]:
    return set(t["group"][side == name])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_never_leaks_a_slide(tiles: pd.DataFrame, seed: int) -> None:
    train = tiles[tiles["split"] == "train"].reset_index(drop=True)
    usable = np.ones(len(train), bool)
    side = make_split(train, train["mitosis"], usable, val_fraction=0.2, test_fraction=0.2, seed=seed)
    assert set(side) == {"train", "val", "test"}
    g = {n: _groups(train, side, n) for n in ("train", "val", "test")}
    assert not g["train"] & g["val"] and not g["train"] & g["test"] and not g["val"] & g["test"]
    for name, frac in (("val", 0.2), ("test", 0.2)):
        part = train["mitosis"][side == name]
        assert abs(len(part) / len(train) - frac) < 0.07
        assert set(part) == {"Atypical", "Normal"}
        # stratified: the minority share stays near the whole set's
        assert abs((part == "Atypical").mean() - (train["mitosis"] == "Atypical").mean()) < 0.08


def test_split_column_carves_val_from_train_by_slide(tiles: pd.DataFrame) -> None:
    usable = np.ones(len(tiles), bool)
    usable[:5] = False
    side = make_split(tiles, tiles["mitosis"], usable, split_column="split", seed=0)
    assert (side[:5] == "").all()
    published_test = (tiles["split"] == "test").to_numpy() & usable
    assert ((side == "test") == published_test).all()
    assert not _groups(tiles, side, "train") & _groups(tiles, side, "val")
    assert 0.12 < (side == "val").sum() / (tiles["split"] == "train").sum() < 0.28


def test_split_column_with_val_values_and_errors(tiles: pd.DataFrame) -> None:
    t = tiles.head(40).copy()
    t["fold"] = ["Train"] * 20 + ["valid"] * 10 + ["test"] * 5 + [None] * 5
    side = make_split(t, t["mitosis"], np.ones(40, bool), split_column="fold")
    assert list(side) == ["train"] * 20 + ["val"] * 10 + ["test"] * 5 + [""] * 5
    t["fold"] = "holdout"
    with pytest.raises(HeadError, match="holds 'holdout'"):
        make_split(t, t["mitosis"], np.ones(40, bool), split_column="fold")
    with pytest.raises(HeadError, match="no split column 'nope'"):
        make_split(t, t["mitosis"], np.ones(40, bool), split_column="nope")
    with pytest.raises(HeadError, match="no group column 'slide_id'"):
        make_split(t, t["mitosis"], np.ones(40, bool), group_column="slide_id")
    # val_fraction is a share of the rows left after the test rows, so the two need not sum below 1; each must be a share
    with pytest.raises(HeadError, match=r"val_fraction \(1.0\) must be in \(0, 1\)"):
        make_split(t, t["mitosis"], np.ones(40, bool), val_fraction=1.0, test_fraction=0.2)
    with pytest.raises(HeadError, match=r"test_fraction \(1.0\) must be in \[0, 1\)"):
        make_split(t, t["mitosis"], np.ones(40, bool), val_fraction=0.2, test_fraction=1.0)
    one = t.assign(group="same-slide")
    with pytest.raises(HeadError, match="one slide"):
        make_split(one, one["mitosis"], np.ones(40, bool))


def test_ungrouped_split_uses_every_tile(tiles: pd.DataFrame) -> None:
    t = tiles.head(200)
    side = make_split(t, t["mitosis"], np.ones(200, bool), group_column=None, seed=0)
    assert (side != "").all() and 25 < (side == "val").sum() < 55


def test_tiles_without_a_group_are_groups_of_their_own(tmp_path) -> None:
    """An empty slide cell in a manifest used to crash fit-head and bench (pandas 3 keeps NaN through astype(str))."""
    from typer.testing import CliRunner

    from mito.cli import app
    from mito.core.tasks import group_ids
    from tests.heads.conftest import amibr_tiles, synthetic_store

    tiles = amibr_tiles(160)
    tiles.loc[tiles.index[:5], "group"] = None
    ids = group_ids(tiles)
    assert len(set(ids[:5])) == 5 and not set(ids[:5]) & set(ids[5:])
    store = synthetic_store(tmp_path / "s.zarr", tiles, {"fakenet:z1:rgb": 8})
    runner = CliRunner()
    r = runner.invoke(app, ["fit-head", "--store", str(store), "--head", "knn", "--split-column", "none", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--heads",
            "knn",
            "--folds",
            "2",
            "--cv",
            "kfold",
            "--jobs",
            "1",
            "--n-boot",
            "0",
            "--no-umap",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert r.exit_code == 0, r.output


def test_a_small_set_is_split_not_refused_with_a_traceback() -> None:
    """Eight slides, four per class (a slide-level head on a few slides): fewer parts than the 1/fraction asked for."""
    t = pd.DataFrame({"tile_id": [f"s{i}" for i in range(8)], "group": [f"s{i}" for i in range(8)], "y": ["a", "b"] * 4})
    side = make_split(t, t["y"], np.ones(8, bool), val_fraction=0.2, test_fraction=0.2, seed=0)
    assert set(side) == {"train", "val", "test"} and (side == "train").sum() >= 4
    with pytest.raises(HeadError, match="cannot split"):
        make_split(t.head(2), t["y"].head(2), np.ones(2, bool), val_fraction=0.2, test_fraction=0.2, seed=0)


def test_test_group_without_other_labelled_groups_is_one_line() -> None:
    from mito.heads.split import group_split

    tiles = pd.DataFrame({"dataset": ["A"] * 8 + [""] * 4, "group": [f"s{i}" for i in range(12)]})
    labels = pd.Series(["a", "b"] * 6)
    with pytest.raises(HeadError, match="no labelled tile has another value of dataset than 'A'"):
        group_split(tiles, labels, np.ones(12, bool), "dataset=A")
