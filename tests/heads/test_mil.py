"""Slide-level (MIL) heads: bags from real AMi-Br stores, per-batch reading, ABMIL attention, reproducibility, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mito.cli import app
from mito.core.errors import OutputError
from mito.heads.bags import BagReader, BagSet, bag_table, make_bags
from mito.heads.base import HeadError
from mito.heads.mil import load_mil_head, make_mil_head
from mito.store import create_store, open_store

runner = CliRunner()
KEY = "synth:z1:rgb"


def planted_store(
    path: Path, slides: int = 120, tiles: int = 20, dims: int = 16, seed: int = 0, unreadable_slides: tuple[int, ...] = ()
) -> tuple[Path, np.ndarray]:
    """Bags of Gaussian tiles; odd slides are positive and hold ONE planted tile far along a fixed direction.
    Every tile of ``unreadable_slides`` is written as the extractor writes a tile it could not read (NaN, flagged).
    Returns the store and the store row of each slide's planted tile (-1 for negatives)."""
    rng = np.random.default_rng(seed)
    n = slides * tiles
    slide = np.repeat(np.arange(slides), tiles)
    pos = np.arange(slides) % 2 == 1
    table = pd.DataFrame(
        {"tile_id": [f"t{i}" for i in range(n)], "slide": [f"s{s:03d}" for s in slide], "label": np.where(pos[slide], "tumour", "normal")}
    )
    s = create_store(path, table, {"tasks": ["label"]}, chunk_rows=tiles)
    s.ensure_variant(KEY, dims, {"backbone": "synth", "weights_sha256": "0" * 64, "preprocessing": {"zoom": 1.0, "color": "rgb"}})
    x = rng.standard_normal((n, dims)).astype(np.float32)
    planted = np.full(slides, -1)
    for i in np.flatnonzero(pos):
        planted[i] = i * tiles + rng.integers(tiles)
        x[planted[i], :4] += 4.0
    bad = np.isin(slide, unreadable_slides)
    x[bad] = np.nan
    for c in range(s.n_chunks):
        a, b = s.chunk_rows_range(c)
        s.write_chunk(KEY, c, x[a:b].astype(np.float16), bad[a:b])
    s.close()
    return path, planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    return planted_store(tmp_path_factory.mktemp("mil") / "planted.zarr")


# ------------------------------------------------------------------ bags
def test_bags_from_real_amibr_store(amibr_store: Path) -> None:
    """dataset is constant per slide; any:Atypical is 'yes' exactly when a crop of the slide is Atypical (brute force)."""
    with open_store(amibr_store) as s:
        tiles = s.tiles
    train = tiles[tiles["slide"].notna()]
    bags = make_bags(tiles, "dataset", min_per_class=1)
    assert len(bags) == train["slide"].nunique() and bags.sizes.sum() == len(train)
    for name, label in zip(bags.names, bags.labels):
        assert set(train.loc[train["slide"] == name, "dataset"]) == {label}
    assert set(bags.classes) == {"MIDOG21", "TUPAC16"}
    anyb = make_bags(tiles, "mitosis", bag_label="any:Atypical", min_per_class=1)
    want = train.groupby("slide")["mitosis"].apply(lambda v: "yes" if (v == "Atypical").any() else "no")
    assert dict(zip(anyb.names, anyb.labels)) == want.to_dict()
    assert anyb.classes == ["no", "yes"] and "at least one tile labelled 'Atypical'" in anyb.description
    for i in range(len(anyb)):  # rows of a bag are its slide's tiles, sorted
        r = anyb.bag_rows(i)
        assert (np.diff(r) > 0).all() and (tiles["slide"].iloc[r] == anyb.names[i]).all()


def test_bag_table_reads_only_the_columns_bags_need_and_gives_the_same_bags(amibr_store: Path) -> None:
    with open_store(amibr_store) as s:
        few = bag_table(s, "mitosis", "slide", "dataset")
        assert list(few.columns) == ["mitosis", "slide", "dataset"] and len(few) == s.n_tiles
        assert len(s.tile_column_names) > 4
        missing = bag_table(s, "no_such_task", "slide")  # a missing column: the whole table, so errors list every column
        assert list(missing.columns) == s.tile_column_names
        tiles = s.tiles
    for task, label in (("dataset", None), ("mitosis", "any:Atypical")):
        a = make_bags(tiles, task, "slide", label, min_per_class=1)
        b = make_bags(few, task, "slide", label, min_per_class=1)
        assert (a.names == b.names).all() and (a.labels == b.labels).all() and (a.rows == b.rows).all()


def test_bag_label_must_be_constant() -> None:
    tiles = pd.DataFrame(
        {"tile_id": list("abcdef"), "slide": ["s1", "s1", "s2", "s2", "s3", "s3"], "grade": ["G1", "G2", "G1", "G1", "G2", "G2"]}
    )
    with pytest.raises(HeadError, match="bag 's1' mixes 'grade' labels"):
        make_bags(tiles, "grade", min_per_class=1)
    with pytest.raises(HeadError, match="no tile of task 'grade' has the label 'G9'"):
        make_bags(tiles, "grade", bag_label="any:G9", min_per_class=1)
    with pytest.raises(HeadError, match="any:VALUE"):
        make_bags(tiles, "grade", bag_label="all:G1")
    b = make_bags(tiles, "grade", bag_label="any:G2", min_per_class=1)
    assert dict(zip(b.names, b.labels)) == {"s1": "yes", "s2": "no", "s3": "yes"}
    tiles["patient"] = ["p1", "p1", "p1", "p1", "p2", "p3"]
    with pytest.raises(HeadError, match="bag 's3' spans several 'patient' values"):
        make_bags(tiles, "grade", bag_label="any:G2", group_column="patient", min_per_class=1)
    tiles["patient"] = ["p1", "p1", "p1", "p1", "p2", "p2"]
    b = make_bags(tiles, "grade", bag_label="any:G2", group_column="patient", min_per_class=1)
    assert list(b.groups) == ["p1", "p1", "p2"] and list(b.table()["group"]) == ["p1", "p1", "p2"]


def test_reading_is_per_batch_of_bags(planted: tuple[Path, np.ndarray]) -> None:
    """Without the chunk cache, a batch of 4 one-chunk bags holds exactly 4 chunks: memory follows the batch."""
    path, _ = planted
    with open_store(path) as s:
        bags = make_bags(s.tiles, "label")
        reader = BagReader(s, [KEY], cache_bytes=0)
        n = 0
        for sel, rows, xs in reader.batches(bags, np.arange(len(bags)), 4):
            n += 1
            assert [len(x) for x in xs] == [20] * len(sel)
            direct = s.read([KEY], np.concatenate(rows), dtype=np.float16)
            assert np.array_equal(np.concatenate(xs), direct)
        assert n == 30 and reader.peak_chunk_rows == 4 * 20 and reader.chunks_read == 120
        # --max-tiles: 5 random tiles of each bag, seeded
        a = [r for _, rs, _ in reader.batches(bags, np.arange(6), 3, np.random.default_rng(1), 5) for r in rs]
        b = [r for _, rs, _ in reader.batches(bags, np.arange(6), 3, np.random.default_rng(1), 5) for r in rs]
        assert all(len(r) == 5 for r in a) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ heads
def test_abmil_attends_to_the_planted_tile(planted: tuple[Path, np.ndarray]) -> None:
    path, where = planted
    with open_store(path) as s:
        bags = make_bags(s.tiles, "label")
        reader = BagReader(s, [KEY])
        idx = np.arange(len(bags))
        train, val = idx[idx % 5 != 0], idx[idx % 5 == 0]
        head = make_mil_head("abmil", epochs=40, patience=40, lr=1e-3, hidden=32, attention=16, dropout=0.0).fit(
            BagSet(reader, bags, train), eval_set=BagSet(reader, bags, val)
        )
        proba, rows, att = head.predict_bags(BagSet(reader, bags, val))
    y = (bags.labels[val] == "tumour").astype(int)
    assert ((proba[:, 1] > 0.5).astype(int) == y).mean() >= 0.9
    pos = [i for i, b in enumerate(val) if where[b] >= 0]
    hits = [rows[i][int(np.argmax(att[i]))] == where[val[i]] for i in pos]
    assert len(hits) == 12 and np.mean(hits) >= 0.9
    assert all(abs(a.sum() - 1) < 1e-5 for a in att)


def test_same_seed_same_weights_and_save_load(planted: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = planted
    with open_store(path) as s:
        bags = make_bags(s.tiles, "label")
        reader = BagReader(s, [KEY])
        idx = np.arange(len(bags))
        opts = dict(epochs=3, max_tiles=7, tile_dropout=0.2, noise=0.5, loss="focal")
        fits = [
            make_mil_head(h, seed=s_, **opts).fit(BagSet(reader, bags, idx[:80]), eval_set=BagSet(reader, bags, idx[80:]))
            for h, s_ in (("abmil", 3), ("abmil", 3), ("abmil", 4), ("mean-mlp", 0))
        ]
        a, b, c = (f.net_.state_dict() for f in fits[:3])
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)
        for head in (fits[0], fits[3]):
            head.save(tmp_path / head.name)
            back = load_mil_head(tmp_path / head.name)
            p1, _, w1 = head.predict_bags(BagSet(reader, bags))
            p2, _, w2 = back.predict_bags(BagSet(reader, bags))
            assert np.array_equal(p1, p2) and all(np.array_equal(x, y) for x, y in zip(w1, w2))
            assert back.params() == head.params()
    with pytest.raises(HeadError, match="has no option"):
        make_mil_head("abmil", C=1)
    with pytest.raises(HeadError, match="tile_dropout must be"):
        make_mil_head("abmil", tile_dropout=1.0)


# ------------------------------------------------------------------ CLI
def test_cli_fit_predict_bench_slide_level(amibr_store: Path, tmp_path: Path) -> None:
    model, out = tmp_path / "m", tmp_path / "slides.csv"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(amibr_store),
            "--level",
            "slide",
            "--task",
            "mitosis",
            "--bag-label",
            "any:Atypical",
            "--head",
            "abmil",
            "--epochs",
            "3",
            "--test-fraction",
            "0.25",
            "--out",
            str(model),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["level"] == "slide" and m["classes"] == ["no", "yes"] and m["n_train"] > m["n_test"] > 0
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["level"] == "slide" and cfg["bag_label"] == "any:Atypical" and (model / "model.safetensors").is_file()
    assert m["positive"] == cfg["positive"] == "yes" and cfg["positive_source"].startswith(
        "--bag-label any:Atypical"
    )  # the bags it defines

    pics = tmp_path / "pics"
    r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(amibr_store), "--out", str(out), "--heatmaps", str(pics)])
    assert r.exit_code == 0, r.output
    slides = pd.read_csv(out)
    tiles = pd.read_csv(tmp_path / "slides.tiles.csv")
    with open_store(amibr_store) as s:
        n_bags = s.tiles["slide"].nunique()
    assert len(slides) == n_bags and {"slide", "n_tiles", "label", "pred", "p_no", "p_yes"} <= set(slides.columns)
    assert np.allclose(slides[["p_no", "p_yes"]].sum(axis=1), 1)
    assert len(tiles) == slides["n_tiles"].sum()
    assert np.allclose(tiles.groupby("slide")["attention"].sum(), 1, atol=1e-5)
    assert sorted(p.name for p in pics.iterdir() if p.name != "mito.json") == sorted(
        f"{n.replace('/', '_')}.topk.png" for n in slides["slide"]
    )
    assert json.loads((pics / "mito.json").read_text())["kind"] == "slide-pictures"
    from PIL import Image

    assert (slides["n_tiles"] < 3).any()  # small bags: their picture must still be wide enough for the title line
    for p in pics.glob("*.png"):
        with Image.open(p) as im:
            assert im.width >= 440, (p.name, im.size)

    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(amibr_store),
            "--level",
            "slide",
            "--task",
            "dataset",
            "--heads",
            "mean-linear,abmil",
            "--folds",
            "2",
            "--n-boot",
            "50",
            "--param",
            "abmil.epochs=3",
            "--param",
            "mean-linear.epochs=3",
            "--out",
            str(tmp_path / "lb"),
        ],
    )
    assert r.exit_code == 0, r.output
    lb = pd.read_csv(tmp_path / "lb" / "leaderboard.csv")
    assert sorted(lb["head"]) == ["abmil", "mean-linear"] and (lb["n_folds"] == 2).all()
    assert lb["ci_low"].le(lb["balanced_accuracy"]).all() and lb["balanced_accuracy"].le(lb["ci_high"]).all()
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert doc["meta"]["level"] == "slide" and len(doc["meta"]["tasks"]["dataset"]["fold_fingerprint"]) == 64
    with open_store(amibr_store) as s:  # the positive class of a bag task: the minority of the bags (every bag trains in some fold)
        per_bag = s.tiles.dropna(subset=["slide"]).groupby("slide")["dataset"].first().value_counts()
    minority = sorted(per_bag.index)[1] if per_bag.iloc[0] == per_bag.iloc[-1] else per_bag.idxmin()
    assert doc["meta"]["tasks"]["dataset"]["positive"] == minority and f"positive class: {minority}" in r.output
    assert (tmp_path / "lb" / "report.html").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit-head", "--level", "slide", "--task", "dataset", "--pca", "8"], "--pca does not apply to --level slide"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--ensemble", "3"], "--ensemble does not apply to --level slide"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--noise-mode", "views"], "views and view-cov are for tile-level heads"),
        (
            ["fit-head", "--level", "slide", "--task", "dataset", "--calibrate", "temperature"],
            "--calibrate does not apply to --level slide",
        ),
        (["fit-head", "--level", "slide", "--task", "dataset", "--test-group", "dataset=TUPAC16"], "--test-group does not apply"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--split-column", "split"], "--split-column does not apply"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--bag-label", "Atypical"], "any:VALUE"),
        (["fit-head", "--level", "slide", "--task", "mitosis"], "mixes 'mitosis' labels"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--bag-column", "nope"], "no bag column 'nope'"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--head", "knn"], "unknown slide-level head 'knn'"),
        (["fit-head", "--level", "pixel", "--task", "dataset"], "--level must be tile or slide"),
        (["fit-head", "--task", "dataset", "--bag-label", "any:x"], "go with --level slide"),
        (["bench", "--level", "slide", "--task", "dataset", "--heads", "mlp"], "unknown slide-level head 'mlp'"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--ensemble", "3"], "--ensemble does not apply to --level slide"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--calibrate", "temperature"], "--calibrate does not apply"),
        (["fit-head", "--level", "slide", "--task", "dataset", "--test-group", "dataset=x"], "--test-group does not apply"),
        (["bench", "--level", "slide", "--task", "dataset", "--shift-column", "dataset"], "--shift-column does not apply"),
        (["bench", "--level", "slide", "--task", "dataset", "--few-shot", "1,2"], "--few-shot does not apply"),
        (["bench", "--level", "slide", "--task", "dataset", "--zero-shot", "mitosis"], "--zero-shot does not apply"),
    ],
)
def test_cli_bad_slide_options_one_line(amibr_store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, [*args, "--store", str(amibr_store), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert message in text and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_attention_heatmaps_on_a_slide_store(tmp_path: Path) -> None:
    """A store extracted from real (synthetic-mosaic) slides: predict draws attention over each slide's thumbnail."""
    from PIL import Image

    from mito.app.predict import predict_slides
    from mito.core.io import write_json
    from mito.extract import ExtractConfig, extract
    from tests.extract.slide_data import slide_folder

    slide_folder(tmp_path / "slides")
    store = tmp_path / "s.zarr"
    extract(
        ExtractConfig(
            source=str(tmp_path / "slides" / "a.svs"),
            store=str(store),
            mpp=0.5,
            tile_px=64,
            input_size=64,
            zooms=[1.0],
            colors=["rgb"],
            chunk_rows=32,
            batch_size=32,
            num_workers=0,
            progress=False,
        )
    )
    key = "efficientnet_lite0:z1:rgb"
    with open_store(store) as s:
        tiles = s.tiles.copy()
        # training bags: quarters of the slide, labelled by their side (only to get a fitted head on these features)
        tiles["region"] = [f"{int(x) // 2000}-{int(y) // 2000}" for x, y in zip(tiles["x"], tiles["y"])]
        tiles["side"] = np.where(tiles["x"].astype(float) < tiles["x"].astype(float).median(), "left", "right")
        tiles["region"] = tiles["side"] + tiles["region"]
        bags = make_bags(tiles, "side", "region", min_per_class=1)
        head = make_mil_head("abmil", epochs=2, hidden=16, attention=8).fit(BagSet(BagReader(s, [key]), bags))
        variants = {key: {f: v for f, v in s.variant_info(key).items() if f != "added"}}
    model = tmp_path / "m"
    head.save(model)
    write_json(
        model / "config.json",
        {
            "level": "slide",
            "task": "side",
            "bag_column": "slide",
            "bag_label": None,
            "features": [key],
            "variants": variants,
            "classes": list(bags.classes),
        },
    )
    slides, per_tile = predict_slides(model, store, tmp_path / "slides.csv", tmp_path / "heat")
    assert list(slides["slide"]) == ["a.svs"] and len(per_tile) == slides["n_tiles"].iat[0] > 4
    png = tmp_path / "heat" / "a.svs.attention.png"
    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    assert a.shape[0] > 200 and a.std() > 20  # a drawn thumbnail with a colour map, not a blank canvas
    with pytest.raises(OutputError, match="already exists"):  # nothing written over without --overwrite
        predict_slides(model, store, tmp_path / "slides.csv", None)


def test_bags_left_out_are_named_with_the_reason() -> None:
    tiles = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in range(14)],
            "slide": np.repeat(["s1", "s2", "s3", "s4", "s5", "s6", "s7"], 2),
            "grade": ["G1", "G1", "G2", "G2", "G1", "G1", "G2", "G2", None, None, "G3", "G3", "G2", "G2"],
        }
    )
    unreadable = np.zeros(14, bool)
    unreadable[[2, 3]] = True  # every tile of s2
    b = make_bags(tiles, "grade", exclude=unreadable, min_per_class=2)
    assert list(b.names) == ["s1", "s3", "s4", "s7"] and b.dropped == {
        "s2": "no readable tile",
        "s5": "no tile with a 'grade' label",
        "s6": "class 'G3' has fewer than 2 bags",
    }
    from mito.heads.bags import left_out, left_out_line

    meta = {"slides": {"slides": [{"slide": "s9", "n_tiles": 0}, {"slide": "s1", "n_tiles": 2}]}}
    gone = left_out(b, meta)
    assert gone == {**b.dropped, "s9": "no tile on tissue"}
    assert left_out_line(gone) == (
        "4 bags left out: s2 (no readable tile); s5 (no tile with a 'grade' label); "
        "s6 (class 'G3' has fewer than 2 bags); s9 (no tile on tissue)"
    )
    assert left_out(b, meta, "patient") == b.dropped  # bags by another column: the slide records do not apply


def test_slides_with_no_readable_tile_are_reported_by_fit_predict_and_bench(tmp_path: Path) -> None:
    """A slide whose tiles are all unreadable is not a bag; fit-head, predict and bench --level slide say so."""
    store, _ = planted_store(tmp_path / "p.zarr", slides=40, unreadable_slides=(0, 3))
    model = tmp_path / "m"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(store),
            "--level",
            "slide",
            "--task",
            "label",
            "--head",
            "mean-linear",
            "--epochs",
            "2",
            "--out",
            str(model),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "2 bags left out: s000, s003 (no readable tile)" in " ".join(r.output.split()), r.output
    m = json.loads((model / "metrics.json").read_text())
    assert m["n_left_out"] == 2 and m["left_out"] == {"s000": "no readable tile", "s003": "no readable tile"}
    assert m["n_train"] + m["n_val"] + m["n_test"] == 38
    r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(store), "--out", str(tmp_path / "slides.csv")])
    assert r.exit_code == 0, r.output
    assert "38 bags predicted" in r.output and "2 bags not predicted: s000, s003 (no readable tile)" in " ".join(r.output.split())
    assert len(pd.read_csv(tmp_path / "slides.csv")) == 38
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--level",
            "slide",
            "--task",
            "label",
            "--heads",
            "mean-linear",
            "--folds",
            "2",
            "--n-boot",
            "20",
            "--param",
            "mean-linear.epochs=2",
            "--out",
            str(tmp_path / "lb"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "2 bags left out: s000, s003 (no readable tile)" in " ".join(r.output.split()), r.output
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert doc["meta"]["tasks"]["label"]["left_out"] == {"s000": "no readable tile", "s003": "no readable tile"}


def test_predict_says_how_many_unreadable_tiles_it_left_out(tmp_path: Path) -> None:
    store, _ = planted_store(tmp_path / "p.zarr", slides=10, unreadable_slides=(2,))
    r = runner.invoke(
        app,
        ["fit-head", "--store", str(store), "--task", "label", "--head", "logreg", "--group-column", "none", "--out", str(tmp_path / "m")],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "m"), "--store", str(store), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "20 unreadable tiles not predicted: t40, t41" in text and "180 tiles predicted" in text, text


def test_finite16_matches_isfinite_on_every_float16() -> None:
    from mito.heads.bags import finite16

    every = np.arange(2**16, dtype=np.uint16).view(np.float16)
    assert (finite16(every) == np.isfinite(every)).all() and (~finite16(every)).sum() == 2 * 1024  # +-inf and the NaNs
