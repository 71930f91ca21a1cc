"""The positive class of two-class metrics (issue 19, item 1), per-class recall/precision of multi-class tasks, and
`bench --with` a fine-tuning run that scored some of the folds (item 6), on a real store where the alphabetical
rule and the minority rule disagree (AMi-Br: Normal is second alphabetically, Atypical is the minority)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, precision_score, recall_score
from typer.testing import CliRunner

from mito.cli import app
from mito.core.metrics import classification_metrics
from tests.conftest import AMIBR

runner = CliRunner()
RGB = "efficientnet_lite0:z1:rgb"
POSITIVE_LINE = "positive class: Atypical (minority of the training rows; --positive to choose)"
N_BOOT = 60


def skewed_subset(dest: Path) -> Path:
    """11 Atypical + 24 Normal real crops (train split, each from another slide: 4+4 Atypical with expert-2 label
    'AMF segregation'/'AMF other', 9+9 Normal 'NMF metaphase'/'NMF prometaphase'; test split: 3 Atypical, 6 Normal)
    with the published metadata CSV."""
    meta = pd.read_csv(AMIBR / "amibr_train_split.csv")
    meta["stem"] = meta["dataset_uid"].str.rsplit(".", n=1).str[0]
    by_stem = meta.set_index("stem")
    want = {
        ("Atypical", "AMF segregation"): 4,
        ("Atypical", "AMF other"): 4,
        ("Normal", "NMF metaphase"): 9,
        ("Normal", "NMF prometaphase"): 9,
    }
    slides: dict[tuple[str, str], set[str]] = {k: set() for k in want}
    test_n = {"Atypical": 3, "Normal": 6}
    for label in ("Atypical", "Normal"):
        (dest / label).mkdir(parents=True, exist_ok=True)
        for f in sorted((AMIBR / label).glob("*.jpg")):
            if f.stem in by_stem.index:
                m = by_stem.loc[f.stem]
                key, slide = (label, m["expert2_label"]), f"{m['dataset']}/{m['slide']}"
                if m["final_label"] != label or want.get(key, 0) == 0 or slide in slides[key]:
                    continue
                want[key] -= 1
                slides[key].add(slide)
            elif test_n[label] > 0:
                test_n[label] -= 1
            else:
                continue
            shutil.copy(f, dest / label / f.name)
    assert not any(want.values()) and not any(test_n.values())
    shutil.copy(AMIBR / "amibr_train_split.csv", dest / "amibr_train_split.csv")
    return dest


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(crop folder, store): the 35 crops above embedded by efficientnet_lite0 at z1 rgb (128 px)."""
    from mito.extract import ExtractConfig, extract

    d = tmp_path_factory.mktemp("skewed")
    src = skewed_subset(d / "crops")
    store = d / "skewed.zarr"
    extract(
        ExtractConfig(
            source=str(src),
            store=str(store),
            task="mitosis",
            zooms=[1.0],
            colors=["rgb"],
            input_size=128,
            chunk_rows=16,
            batch_size=16,
            num_workers=0,
            progress=False,
        )
    )
    return src, store


def _test_predictions(model: Path, store: Path) -> pd.DataFrame:
    from mito.heads import predict
    from mito.store import open_store

    with open_store(store) as s:
        split = dict(zip(s.tiles["path"].astype(str), s.tiles["split"].astype(str)))
    df = predict(model, store=store)
    df = df[[split[t] == "test" for t in df["path"].astype(str)]]
    assert sorted(df["label"].value_counts().items()) == [("Atypical", 3), ("Normal", 6)]
    return df


# ------------------------------------------------------------------ fit-head
def test_fit_head_scores_the_minority_class(skewed: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = skewed
    out = tmp_path / "m"
    r = runner.invoke(app, ["fit-head", "--store", str(store), "--out", str(out), "--head", "logreg", "--features", RGB])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["evaluated_on"] == "test" and m["classes"] == ["Atypical", "Normal"]
    df = _test_predictions(out, store)
    atypical = (df["label"] == "Atypical").to_numpy()
    ap = average_precision_score(df["label"], df["p_Atypical"], pos_label="Atypical")
    old_rule = average_precision_score(df["label"], df["p_Normal"], pos_label="Normal")  # what the alphabetical rule reported
    assert abs(old_rule - ap) > 0.01
    assert m["pr_auc"] == pytest.approx(ap, abs=1e-6)
    assert m["brier"] == pytest.approx(brier_score_loss(atypical, df["p_Atypical"]), abs=1e-6)
    cfg = json.loads((out / "config.json").read_text())
    assert (m["positive"], cfg["positive"], cfg["positive_source"]) == ("Atypical", "Atypical", "minority of the training rows")
    assert POSITIVE_LINE in r.output
    from mito.report.slides import prob_columns

    assert prob_columns(df) == ["p_Atypical"]  # slide heatmaps draw the positive class
    df.attrs.clear()
    assert prob_columns(df) == ["p_Normal"]  # a model made before the positive class was recorded: the second class


def test_positive_option_overrides_and_bad_classes_are_one_line(skewed: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = skewed
    out = tmp_path / "m"
    r = runner.invoke(
        app, ["fit-head", "--store", str(store), "--out", str(out), "--head", "logreg", "--features", RGB, "--positive", "Normal"]
    )
    assert r.exit_code == 0, r.output
    assert "positive class: Normal (--positive)" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert (m["positive"], m["positive_source"]) == ("Normal", "--positive")
    df = _test_predictions(out, store)
    assert m["pr_auc"] == pytest.approx(average_precision_score(df["label"], df["p_Normal"], pos_label="Normal"), abs=1e-6)
    for cmd in (
        ["fit-head", "--out", str(tmp_path / "x"), "--head", "logreg"],
        ["bench", "--out", str(tmp_path / "b"), "--heads", "logreg", "--folds", "2"],
    ):
        bad = runner.invoke(app, [*cmd, "--store", str(store), "--features", RGB, "--positive", "Mitotic"])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
        lines = [x for x in bad.output.splitlines() if x.strip()]
        assert len(lines) == 1 and "'Mitotic'" in lines[0] and "Atypical and Normal" in lines[0], bad.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------ bench, compare, report
@pytest.fixture(scope="module")
def bench(skewed: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    _, store = skewed
    out = tmp_path_factory.mktemp("pos") / "b"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--task",
            "mitosis",
            "--out",
            str(out),
            "--features",
            RGB,
            "--heads",
            "logreg,knn",
            "--folds",
            "2",
            "--jobs",
            "1",
            "--n-boot",
            str(N_BOOT),
            "--no-umap",
        ],
    )
    assert r.exit_code == 0, r.output
    return out, r.output


def test_bench_records_and_uses_the_positive_class(bench: tuple[Path, str]) -> None:
    from mito.bench import load_leaderboard

    out, printed = bench
    lb = load_leaderboard(out)
    assert len(lb.rows) == 2
    for _, row in lb.rows.iterrows():
        p = lb.predictions[row["row_id"]]  # y: class indices, 0 = Atypical
        per_fold = [average_precision_score(p["y"][p["fold"] == f] == 0, p["proba"][p["fold"] == f, 0]) for f in np.unique(p["fold"])]
        wrong = [average_precision_score(p["y"][p["fold"] == f] == 1, p["proba"][p["fold"] == f, 1]) for f in np.unique(p["fold"])]
        assert abs(np.mean(wrong) - np.mean(per_fold)) > 0.01
        assert row["pr_auc"] == pytest.approx(np.mean(per_fold), abs=1e-6)
        assert row["positive"] == "Atypical" and int(p["positive"]) == 0
    doc = json.loads((out / "leaderboard.json").read_text())
    assert doc["meta"]["tasks"]["mitosis"]["positive"] == "Atypical"
    assert doc["meta"]["tasks"]["mitosis"]["positive_source"] == "minority of the training rows"
    assert pd.read_csv(out / "leaderboard.csv")["positive"].eq("Atypical").all()
    assert POSITIVE_LINE in printed
    page = (out / "report.html").read_text()
    assert "Positive class: Atypical (minority of the training rows)" in page
    c = runner.invoke(app, ["compare", "--bench", str(out), "--rows", "1,2"])
    assert c.exit_code == 0, c.output
    assert "positive class: Atypical" in c.output
    assert "AUROC, 3 positive / 6 negative test cases" in c.output  # the published test split: 3 Atypical, 6 Normal
    a, b = (lb.rows[lb.rows["rank"] == k].iloc[0] for k in (1, 2))
    pr_line = next(x for x in c.output.splitlines() if "pr_auc" in x.split()[:2] or x.lstrip("│ ").startswith("pr_auc"))
    assert f"{a['pr_auc'] - b['pr_auc']:+.4f}" in pr_line, pr_line  # the paired PR-AUC difference is of the positive class too


def test_few_shot_rows_score_the_same_positive_class(skewed: tuple[Path, Path], tmp_path: Path) -> None:
    from mito.bench import load_leaderboard

    _, store = skewed
    out = tmp_path / "b"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--task",
            "mitosis",
            "--out",
            str(out),
            "--features",
            RGB,
            "--heads",
            "logreg",
            "--folds",
            "2",
            "--jobs",
            "1",
            "--n-boot",
            "20",
            "--few-shot",
            "2",
            "--few-shot-draws",
            "2",
            "--no-umap",
        ],
    )
    assert r.exit_code == 0, r.output
    lb = load_leaderboard(out)
    few = lb.rows[lb.rows["shots"] == "2"]
    assert len(few) == 1 and (lb.rows["positive"] == "Atypical").all()
    p = lb.predictions[few.iloc[0]["row_id"]]
    assert int(p["positive"]) == 0
    fits = [(p["draw"] == d) & (p["fold"] == f) for d in np.unique(p["draw"]) for f in np.unique(p["fold"])]
    want = np.mean([average_precision_score(p["y"][m] == 0, p["proba"][m, 0]) for m in fits if m.any()])
    assert few.iloc[0]["pr_auc"] == pytest.approx(want, abs=1e-6)


def test_older_folder_falls_back_to_the_second_class_and_says_so(bench: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = bench
    old = tmp_path / "old"
    shutil.copytree(out, old)
    doc = json.loads((old / "leaderboard.json").read_text())
    for info in doc["meta"]["tasks"].values():
        info.pop("positive"), info.pop("positive_source")
    for r in doc["rows"]:
        r.pop("positive")
    (old / "leaderboard.json").write_text(json.dumps(doc))
    with np.load(old / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files if not k.endswith(".positive")}
    np.savez(old / "predictions.npz", **arrays)
    r = runner.invoke(app, ["report", str(old)])
    assert r.exit_code == 0, r.output
    page = (old / "report.html").read_text()
    assert "Positive class: Normal (not recorded (made by an older mito)" in page
    c = runner.invoke(app, ["compare", "--bench", str(old), "--rows", "1,2"])
    assert c.exit_code == 0, c.output
    assert "positive class: Normal (not recorded" in c.output and "AUROC, 6 positive / 3 negative test cases" in c.output


def test_with_a_leaderboard_of_another_positive_class_is_refused(
    skewed: tuple[Path, Path], bench: tuple[Path, str], tmp_path: Path
) -> None:
    _, store = skewed
    out, _ = bench
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--task",
            "mitosis",
            "--out",
            str(tmp_path / "b"),
            "--features",
            RGB,
            "--heads",
            "logreg",
            "--folds",
            "2",
            "--jobs",
            "1",
            "--positive",
            "Normal",
            "--with",
            str(out),
            "--no-umap",
        ],
    )
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "'Atypical' as the positive class" in lines[0] and "--positive Atypical" in lines[0], r.output
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ multi-class: recall and precision per class
def test_per_class_recall_and_precision_match_sklearn() -> None:
    y = np.array(["a", "a", "b", "b", "b", "c", "c", "a"])
    proba = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.3, 0.6, 0.1],
            [0.5, 0.4, 0.1],
            [0.1, 0.6, 0.3],
            [0.6, 0.3, 0.1],
            [0.9, 0.05, 0.05],
        ]
    )
    m = classification_metrics(y, proba, ["a", "b", "c"])
    pred = np.array(["a", "b", "c"])[proba.argmax(1)]
    rec = recall_score(y, pred, labels=["a", "b", "c"], average=None)
    prec = precision_score(y, pred, labels=["a", "b", "c"], average=None, zero_division=np.nan)
    for i, c in enumerate("abc"):
        assert m["per_class"][c]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][c]["support"] == int((y == c).sum())
    assert m["per_class"]["a"]["precision"] == pytest.approx(prec[0]) and m["per_class"]["b"]["precision"] == pytest.approx(prec[1])
    assert math.isnan(m["per_class"]["c"]["precision"]) and m["per_class"]["c"]["recall"] == 0  # c is never predicted
    assert "positive" not in m
    with pytest.raises(ValueError, match="two-class"):
        classification_metrics(y, proba, ["a", "b", "c"], positive="a")
    two = classification_metrics(["x", "y", "y", "y"], np.array([[0.7, 0.3], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]]), ["x", "y"], positive="x")
    assert two["positive"] == "x" and two["pr_auc"] == pytest.approx(average_precision_score([1, 0, 0, 0], [0.7, 0.4, 0.6, 0.2]))


def test_multiclass_bench_reports_recall_and_precision_per_class(skewed: tuple[Path, Path], tmp_path: Path) -> None:
    from mito.bench import load_leaderboard
    from mito.core.metrics import per_class_summary

    _, store = skewed
    out = tmp_path / "b"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--task",
            "expert2_label",
            "--out",
            str(out),
            "--features",
            RGB,
            "--heads",
            "logreg",
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
    said = " ".join(r.output.split())  # the line wraps at the terminal width
    assert "recall / precision per class: AMF other" in said and "positive class" not in said
    lb = load_leaderboard(out)
    classes = ["AMF other", "AMF segregation", "NMF metaphase", "NMF prometaphase"]
    assert lb.meta["tasks"]["expert2_label"]["classes"] == classes and "positive" not in lb.meta["tasks"]["expert2_label"]
    row = lb.rows.iloc[0]
    p = lb.predictions[row["row_id"]]
    folds = []
    for f in np.unique(p["fold"]):
        sel = p["fold"] == f
        yt, pred = p["y"][sel], p["proba"][sel].argmax(1)
        rec = recall_score(yt, pred, labels=range(4), average=None, zero_division=np.nan)
        prec = precision_score(yt, pred, labels=range(4), average=None, zero_division=np.nan)
        folds.append({"per_class": {c: {"recall": rec[i], "precision": prec[i]} for i, c in enumerate(classes)}})
    want = per_class_summary(folds, classes)
    for c in classes:
        for k in ("recall", "precision"):
            got = row["per_class"][c][k]
            assert (math.isnan(want[c][k]) and got is None) or got == pytest.approx(want[c][k]), (c, k)
    page = (out / "report.html").read_text()
    assert "Per class (mean over folds)" in page and "NMF prometaphase<br>recall / precision" in page
    bad = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--task",
            "expert2_label",
            "--out",
            str(tmp_path / "c"),
            "--features",
            RGB,
            "--heads",
            "logreg",
            "--folds",
            "2",
            "--jobs",
            "1",
            "--positive",
            "AMF other",
        ],
    )
    assert bad.exit_code == 2 and "applies to two-class tasks" in bad.output and len([x for x in bad.output.splitlines() if x.strip()]) == 1


# ------------------------------------------------------------------ item 6: --with a run on some of the folds
def test_with_a_run_on_one_fold_is_paired_on_that_fold(skewed: tuple[Path, Path], tmp_path: Path) -> None:
    from mito.bench import FinetuneConfig, load_leaderboard, run_finetune
    from mito.bench.stats import PARTIAL_FOLDS, align_predictions, paired_bootstrap

    src, store = skewed
    lora = tmp_path / "lora"
    run_finetune(
        FinetuneConfig(
            source=str(src),
            out=str(lora),
            n_folds=2,
            folds=1,
            max_epochs=1,
            epoch_samples=4,
            batch_size=2,
            val_samples=4,
            input_size=64,
            n_boot=20,
        ),
        progress=False,
    )
    out = tmp_path / "b"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(store),
            "--task",
            "mitosis",
            "--out",
            str(out),
            "--features",
            RGB,
            "--heads",
            "logreg",
            "--folds",
            "2",
            "--jobs",
            "1",
            "--n-boot",
            str(N_BOOT),
            "--with",
            str(lora),
            "--no-umap",
        ],
    )
    assert r.exit_code == 0, r.output
    lb = load_leaderboard(out)
    ft = lb.rows[lb.rows["kind"] == "lora"].iloc[0]
    head = lb.rows[lb.rows["kind"] == "head"].iloc[0]
    assert ft["n_folds"] == 1 and head["n_folds"] == 2
    other, best = (ft, head) if head["rank"] == 1 else (head, ft)
    assert str(other["paired_note"]).startswith(PARTIAL_FOLDS), other["paired_note"]
    assert not math.isnan(other["delta_vs_best"]) and not math.isnan(other["p_vs_best"]) and not math.isnan(other["auroc_p_vs_best"])
    # the delta is both rows' balanced accuracy on fold 0, the one fold both scored
    keep = {
        k: {n: (v[v_sel] if np.ndim(v) else v) for n, v in lb.predictions[k].items() for v_sel in [lb.predictions[k]["fold"] == 0]}
        for k in (other["row_id"], best["row_id"])
    }
    y, pa, pb, fold, tile = align_predictions(keep[other["row_id"]], keep[best["row_id"]])
    pr = paired_bootstrap(y, pa, pb, [0, 1], "balanced_accuracy", fold=fold, tile=tile, n_boot=N_BOOT, seed=0, positive=0)
    assert other["delta_vs_best"] == pytest.approx(pr.delta)
    from mito.report.leaderboard import paired_cells

    cells = paired_cells(other)
    assert cells["_delta"] == f"{other['delta_vs_best']:+.3f}†" and cells["_p"].endswith("†") and cells["_p"] in r.output
    assert f"† mitosis #{other['rank']}" in r.output
    c = runner.invoke(app, ["compare", "--bench", str(out), "--rows", f"{other['row_id']},{best['row_id']}"])
    assert c.exit_code == 0 and "paired on the folds both rows scored (fold 0" in c.output and "1 folds" in c.output, c.output
    assert "Δ and p compare them on the folds both scored" in (out / "report.html").read_text()
