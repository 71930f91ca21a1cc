"""`mito import`: TRIDENT / CLAM / STAMP / eva features become a store that fit-head, bench, compare and umap read; the
round trip extract -> export trident -> import gives a slide head the same metrics; bad input is one line and no store."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from benchmarks.import_trident import write_trident_folder
from mito.cli import app
from mito.interop import import_features
from mito.interop.importing import sha256_file
from mito.store import open_store
from tests.interop.conftest import KEY

runner = CliRunner()


def _ok(argv: list[str]) -> str:
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    return res.output


def _said(out: str) -> str:
    return " ".join(out.split())  # rich folds lines at the terminal's width


def _refused(argv: list[str], message: str, store: Path) -> None:
    res = runner.invoke(app, argv)
    assert res.exit_code == 2 and message in _said(res.output) and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) <= 3, res.output  # one line (folded at the terminal's width)
    assert not store.exists() and not any(store.parent.glob(f".{store.name}*creating*"))


@pytest.fixture(scope="module")
def exported(slide_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exports")
    for fmt in ("trident", "clam", "stamp"):
        _ok(["export", "--store", str(slide_store), "--format", fmt, "--out", str(root / fmt), "--features", KEY])
    return root


# ------------------------------------------------------------------ part 4 of issue 23: the round trip on real pixels


def test_extract_export_import_round_trip_gives_a_slide_head_the_same_metrics(
    slide_store: Path, slide_labels: Path, exported: Path, tmp_path: Path
) -> None:
    store = tmp_path / "back.zarr"
    out = _said(_ok(["import", str(exported / "trident"), "--store", str(store), "--labels", str(slide_labels / "labels.csv"), "--quiet"]))
    assert "72 tiles of 8 trident slides as efficientnet_lite0:z1:rgb" in out
    with open_store(slide_store) as a, open_store(store) as b:
        ta, tb = a.tiles, b.tiles
        assert ta["slide"].tolist() == tb["slide"].tolist()  # mito's slide attr keeps a.svs, not TRIDENT's stem
        np.testing.assert_array_equal(
            ta[["x0", "y0", "x1", "y1", "x", "y"]].to_numpy(np.float64), tb[["x0", "y0", "x1", "y1", "x", "y"]].to_numpy(np.float64)
        )
        for c in ("label", "patient", "group"):
            assert ta[c].tolist() == tb[c].tolist(), c
        np.testing.assert_array_equal(a.read([KEY], dtype=np.float16), b.read([KEY], dtype=np.float16))
        assert b.tasks == ["label"] and b.verify() == []
        files = [f for run in b.meta["imports"] for r in run["slides"] for f in r["files"]]
        assert len(files) == 8 and all(f["sha256"] == sha256_file(Path(f["path"])) for f in files)
    metrics = []
    for s in (slide_store, store):
        res = _ok(
            [
                "fit-head",
                "--store",
                str(s),
                "--level",
                "slide",
                "--task",
                "label",
                "--head",
                "abmil",
                "--epochs",
                "4",
                "--seed",
                "3",
                "--test-fraction",
                "0.25",
                "--out",
                str(tmp_path / f"m-{s.stem}"),
                "--json",
            ]
        )
        m = json.loads(res)
        metrics.append({k: v for k, v in m.items() if isinstance(v, (int, float)) and "time" not in k and "seconds" not in k})
    assert metrics[0] == metrics[1] and {"balanced_accuracy", "auroc", "n_train"} <= set(metrics[0])
    from safetensors.numpy import load_file

    wa, wb = (load_file(tmp_path / f"m-{s.stem}" / "model.safetensors") for s in (slide_store, store))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)  # the same head, weight for weight


# ------------------------------------------------------------------ every format in


def test_clam_stamp_and_eva_folders_import_with_the_same_rows(
    slide_store: Path, slide_labels: Path, exported: Path, tmp_path: Path
) -> None:
    with open_store(slide_store) as s:
        tiles, x = s.tiles, s.read([KEY])
    labels = str(slide_labels / "labels.csv")
    # CLAM: no encoder recorded -> --name; the patches/ files give the level-0 box
    res = runner.invoke(app, ["import", str(exported / "clam"), "--store", str(tmp_path / "c.zarr"), "--quiet"])
    assert res.exit_code == 2 and "records no encoder" in _said(res.output) and "--name" in res.output
    _ok(["import", str(exported / "clam"), "--store", str(tmp_path / "c.zarr"), "--name", "lite0", "--labels", labels, "--quiet"])
    # CLAM pt_files only: tensors, no coordinates
    only_pt = tmp_path / "pt"
    shutil.copytree(exported / "clam" / "pt_files", only_pt / "pt_files")
    _ok(["import", str(only_pt), "--store", str(tmp_path / "p.zarr"), "--name", "lite0", "--labels", labels, "--quiet"])
    # STAMP: float16 feats, um coordinates, the extractor attr as the encoder
    _ok(["import", str(exported / "stamp"), "--store", str(tmp_path / "st.zarr"), "--labels", labels, "--quiet"])
    with open_store(tmp_path / "c.zarr") as c, open_store(tmp_path / "p.zarr") as p, open_store(tmp_path / "st.zarr") as st:
        assert c.variants == ["lite0:z1:rgb"] and st.variants == [KEY]
        assert c.meta["source"]["format"] == "clam" and st.meta["source"]["format"] == "stamp"
        assert sorted(tiles["slide"].unique()) == tiles["slide"].unique().tolist()  # store order = file order
        for got, names in (
            (c, tiles["slide"].str.removesuffix(".svs")),
            (p, tiles["slide"].str.removesuffix(".svs")),
            (st, tiles["slide"]),
        ):
            mine = got.tiles  # CLAM names slides by file stem (the labels CSV's a.svs still matches); STAMP files keep mito's name
            assert mine["slide"].tolist() == names.tolist()
            np.testing.assert_array_equal(got.read(got.variants), x)
            assert mine["label"].tolist() == tiles["label"].tolist() and mine["patient"].tolist() == tiles["patient"].tolist()
        np.testing.assert_array_equal(c.tiles[["x0", "y0", "x1", "y1"]].to_numpy(), tiles[["x0", "y0", "x1", "y1"]].to_numpy())
        assert "x0" not in p.tiles and "x0_um" in st.tiles
        np.testing.assert_allclose(st.tiles[["x0_um", "x1_um"]].to_numpy(), tiles[["x0", "x1"]].to_numpy() * 0.25)


def _eva_folder(root: Path, slides: dict[str, np.ndarray], targets: dict[str, int]) -> Path:
    """An embeddings folder as eva's EmbeddingsWriter leaves it: manifest.csv (origin, embeddings, target, split, wsi_id)
    and per file a list of 1-D tensors (later batches first)."""
    root.mkdir(parents=True)
    rows = []
    for name, x in slides.items():
        half = len(x) // 2
        for part, sl in (("a", slice(0, half)), ("b", slice(half, None))):
            rel = f"{name}_{part}.pt"
            torch.save([torch.from_numpy(r.copy()) for r in x[sl]], root / rel)
            rows.append({"origin": f"{name}_{part}.tif", "embeddings": rel, "target": targets[name], "split": "train", "wsi_id": name})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_eva_embeddings_import_by_wsi_id_with_their_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    slides = {f"s{i}": rng.standard_normal((6 + i, 8)).astype(np.float32) for i in range(4)}
    folder = _eva_folder(tmp_path / "eva", slides, {f"s{i}": i % 2 for i in range(4)})
    store = tmp_path / "e.zarr"
    out = _said(_ok(["import", str(folder), "--store", str(store), "--name", "dinov2", "--quiet"]))
    assert "created" in out and "eva slides" in out
    with open_store(store) as s:
        t = s.tiles
        assert t["slide"].tolist() == [f"s{i}" for i in range(4) for _ in range(6 + i)]
        assert t.groupby("slide")["label"].first().tolist() == ["0", "1", "0", "1"] and s.tasks == ["label"]
        np.testing.assert_array_equal(
            s.read(["dinov2:z1:rgb"]), np.concatenate(list(slides.values())).astype(np.float16).astype(np.float32)
        )


# ------------------------------------------------------------------ bad input: one line, nothing written


def _trident_file(
    path: Path, x: np.ndarray, coords: np.ndarray | None = None, size: tuple[int, int] = (4096, 4096), encoder: str = "uni_v1"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    coords = np.arange(len(x) * 2).reshape(-1, 2) * 256 if coords is None else coords
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x).attrs.update(name=path.stem, savetodir=str(path.parent), encoder=encoder)
        f.create_dataset("coords", data=coords.astype(np.int64)).attrs.update(
            patch_size=256,
            patch_size_level0=512,
            level0_magnification=40,
            target_magnification=20,
            overlap=0,
            name=path.stem,
            savetodir="x",
            level0_width=size[0],
            level0_height=size[1],
        )
    return path


def test_bad_folders_are_refused_in_one_line_and_leave_no_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    good = rng.standard_normal((5, 16)).astype(np.float32)
    store = tmp_path / "out" / "s.zarr"
    store.parent.mkdir()

    def case(name: str) -> Path:
        d = tmp_path / name
        _trident_file(d / "ok1.h5", good)
        return d

    d = case("mixed")
    _trident_file(d / "wide.h5", rng.standard_normal((5, 32)).astype(np.float32))
    _refused(["import", str(d), "--store", str(store)], "mixed dimensions", store)
    d = case("dup")
    _trident_file(d / "sub.h5", good)
    with h5py.File(d / "sub.h5", "a") as f:
        f["coords"].attrs["name"] = "ok1"  # two files, one slide
    _refused(["import", str(d), "--store", str(store)], "duplicate slide 'ok1'", store)
    d = case("nan")
    bad = good.copy()
    bad[3, 2] = np.nan
    _trident_file(d / "nan.h5", bad)
    _refused(["import", str(d), "--store", str(store)], "row 3 holds NaN or inf", store)
    d = case("inf")
    bad = good.copy()
    bad[1, 0] = np.inf
    _trident_file(d / "inf.h5", bad)
    _refused(["import", str(d), "--store", str(store)], "row 1 holds NaN or inf", store)
    d = case("outside")
    _trident_file(d / "far.h5", good, coords=np.array([[0, 0], [100, 100], [5000, 10], [10, 10], [20, 20]]))
    _refused(["import", str(d), "--store", str(store)], "patch 2 at (5000, 10) lies outside the 4096x4096 slide", store)
    d = tmp_path / "unknown"
    d.mkdir()
    with h5py.File(d / "x.h5", "w") as f:
        f["embeddings"] = good
    _refused(["import", str(d), "--store", str(store)], "unknown format", store)
    _refused(["import", str(tmp_path / "mixed"), "--store", str(store), "--format", "vips"], "unknown format 'vips'", store)
    d = tmp_path / "pickle" / "pt_files"
    d.mkdir(parents=True)
    torch.save(torch.from_numpy(good), d / "a.pt")
    with open(d / "b.pt", "wb") as fh:
        pickle.dump({"features": good}, fh)  # a pickle of a numpy array where a tensor should be
    _refused(
        ["import", str(d.parent), "--store", str(store), "--name", "x"], "b.pt is not a tensor file torch.load(weights_only=True)", store
    )
    d = case("encoders")
    _trident_file(d / "other.h5", good, encoder="conch_v15")
    _refused(["import", str(d), "--store", str(store)], "several encoders", store)


# ------------------------------------------------------------------ append, and the commands that read a store


def test_import_again_with_more_files_appends_and_benches_at_slide_level(tmp_path: Path) -> None:
    feats = tmp_path / "features_uni_v1"
    labels = write_trident_folder(feats, 24, 12, 32, seed=0)
    first = tmp_path / "first"
    first.mkdir()
    for p in sorted(feats.glob("*.h5"))[:10]:
        shutil.copy(p, first / p.name)
    store = tmp_path / "s.zarr"
    _ok(["import", str(first), "--store", str(store), "--labels", str(labels), "--quiet", "--chunk-rows", "64"])
    with open_store(store) as s:
        n_first = s.n_tiles
    out = _said(_ok(["import", str(feats), "--store", str(store), "--labels", str(labels), "--quiet", "--chunk-rows", "64"]))
    assert "10 slides were already in" in out and "appended to" in out and "of 14 trident slides" in out
    whole = tmp_path / "whole.zarr"
    import_features(feats, whole, labels=labels, chunk_rows=64)
    with open_store(store) as s, open_store(whole) as w:
        assert s.n_tiles > n_first and len(s.meta["appends"]) == 1 and s.verify() == []
        assert s.tiles.equals(w.tiles)
        np.testing.assert_array_equal(s.read(["uni_v1:z1:rgb"]), w.read(["uni_v1:z1:rgb"]))
    with h5py.File(feats / "TCGA-0003.h5", "a") as f:  # other bytes for a slide the store holds
        f["features"][0, 0] += 1
    res = runner.invoke(app, ["import", str(feats), "--store", str(store), "--quiet"])
    assert res.exit_code == 2 and "slide 'TCGA-0003' is already in" in _said(res.output)
    with open_store(store) as s:
        assert s.tiles.equals(w.tiles.iloc[: s.n_tiles]) and s.verify() == []
    # the commands that read a store read it unchanged
    _ok(
        [
            "fit-head",
            "--store",
            str(whole),
            "--level",
            "slide",
            "--task",
            "label",
            "--head",
            "mean-linear",
            "--epochs",
            "3",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    _ok(
        [
            "bench",
            "--store",
            str(whole),
            "--level",
            "slide",
            "--task",
            "label",
            "--group-column",
            "patient",
            "--folds",
            "3",
            "--n-boot",
            "20",
            "--param",
            "abmil.epochs=2",
            "--param",
            "mean-linear.epochs=2",
            "--out",
            str(tmp_path / "lb"),
        ]
    )
    board = pd.read_csv(tmp_path / "lb" / "leaderboard.csv")
    assert sorted(board["head"]) == ["abmil", "mean-linear"] and board["auroc"].notna().all()
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert doc["meta"]["level"] == "slide" and doc["meta"]["store"]["path"] == str(whole)
    said = _said(_ok(["compare", "--bench", str(tmp_path / "lb"), "--rows", "1,2"]))  # the paired test of the two rows
    assert "DeLong's test (AUROC" in said and "balanced_accuracy" in said


def test_an_import_cut_short_is_finished_by_running_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mito.store import Store

    feats = tmp_path / "f"
    labels = write_trident_folder(feats, 12, 10, 16, seed=2)
    whole = tmp_path / "whole.zarr"
    import_features(feats, whole, labels=labels, chunk_rows=16)
    real, calls = Store.write_chunk, []

    def dies(self: Store, *a: object, **k: object) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(Store, "write_chunk", dies)
    store = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        import_features(feats, store, labels=labels, chunk_rows=16)
    monkeypatch.setattr(Store, "write_chunk", real)
    with open_store(store) as s:
        assert s.done_chunks("uni_v1:z1:rgb").sum() == 2 and not s.is_complete("uni_v1:z1:rgb")
    r = import_features(feats, store, labels=labels, chunk_rows=16)
    assert r.added_tiles == 0 and len(r.known_slides) == 12 and r.written_chunks > 0
    with open_store(store) as s, open_store(whole) as w:
        assert s.verify() == [] and s.tiles.equals(w.tiles)
        np.testing.assert_array_equal(s.read(["uni_v1:z1:rgb"]), w.read(["uni_v1:z1:rgb"]))
    # a labels CSV given again (one slide relabelled, a new column) updates the rows already there, nothing else
    table = pd.read_csv(labels)
    table.loc[table["slide"] == "TCGA-0001.svs", "label"] = "tumour"
    table["stage"] = ["I", "II"] * 6
    table.to_csv(tmp_path / "labels2.csv", index=False)
    import_features(feats, store, labels=tmp_path / "labels2.csv")
    with open_store(store) as s, open_store(whole) as w:
        t = s.tiles
        assert set(t.loc[t["slide"] == "TCGA-0001", "label"]) == {"tumour"} and "stage" in s.tasks
        assert (t["label"] != w.tiles["label"]).sum() == (t["slide"] == "TCGA-0001").sum()
        np.testing.assert_array_equal(s.read(["uni_v1:z1:rgb"]), w.read(["uni_v1:z1:rgb"]))


def test_appending_with_a_labels_csv_of_the_new_slides_keeps_the_labels_of_the_others(tmp_path: Path) -> None:
    feats = tmp_path / "features_uni_v1"
    labels = write_trident_folder(feats, 12, 12, 32, seed=2)
    table = pd.read_csv(labels)
    files = sorted(feats.glob("*.h5"))
    first, rest = tmp_path / "first", tmp_path / "rest"
    for folder, part in ((first, files[:6]), (rest, files)):
        folder.mkdir()
        for p in part:
            shutil.copy(p, folder / p.name)
    store, whole = tmp_path / "s.zarr", tmp_path / "whole.zarr"
    import_features(first, store, labels=labels, chunk_rows=64)
    new_only = tmp_path / "new_only.csv"
    named = table["slide"].astype(str).map(lambda v: Path(v).stem).isin([p.stem for p in files[6:]])
    assert named.sum() == 6
    table[named].to_csv(new_only, index=False)
    import_features(rest, store, labels=new_only, chunk_rows=64)  # a CSV that names only the slides it adds
    import_features(rest, whole, labels=labels, chunk_rows=64)
    with open_store(store) as s, open_store(whole) as w:
        assert s.tiles.equals(w.tiles)  # the first six slides kept their labels


def test_an_append_refused_for_its_files_changes_nothing_not_even_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    bare = tmp_path / "bare"
    for i in range(3):  # no patch size: the store gets no level-0 box columns
        with h5py.File(_trident_file(bare / f"s{i}.h5", rng.normal(size=(8, 16)).astype(np.float32)), "a") as f:
            for a in ("patch_size", "patch_size_level0", "level0_magnification", "target_magnification"):
                del f["coords"].attrs[a]
    store = tmp_path / "s.zarr"
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"slide": ["s0", "s1", "s2"], "label": ["a", "b", "a"]}).to_csv(labels, index=False)
    import_features(bare, store, labels=labels)
    with open_store(store) as s:
        before = s.tiles.copy()
    boxed = tmp_path / "boxed"
    _trident_file(boxed / "s3.h5", rng.normal(size=(8, 16)).astype(np.float32))
    relabel = tmp_path / "relabel.csv"
    pd.DataFrame({"slide": ["s0", "s1", "s2", "s3"], "label": ["b", "a", "b", "a"]}).to_csv(relabel, index=False)
    res = runner.invoke(app, ["import", str(boxed), "--store", str(store), "--labels", str(relabel), "--quiet"])
    assert res.exit_code == 2 and "lacks" in _said(res.output), res.output
    with open_store(store) as s:
        assert s.tiles.equals(before) and s.verify() == []
