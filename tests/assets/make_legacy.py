"""Write tests/assets/legacy/: small folders exactly as mito writes them, with the predictions made when they were
written, so tests/test_legacy_artifacts.py can check that later versions keep loading them and predict the same.

Run once with the mito being frozen (``python tests/assets/make_legacy.py``); every folder is made through the CLI, as a
user makes it. Re-running replaces the folder: only do that on purpose (the point is folders made by an OLDER mito).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "mito" / "data" / "sample" / "amibr"
OUT = Path(__file__).resolve().parent / "legacy"

# 8 slides of the bundled sample (4 MIDOG21, 4 TUPAC16), up to 3 crops each, and 6 crops of AMi-Br's test split
SLIDES = ("024.tiff", "112.tiff", "136.tiff", "141.tiff", "01_stitched1.tif", "52.tif", "67.tif", "46.tif")
PER_SLIDE = 3
TEST_CROPS = {"Atypical": 3, "Normal": 3}
TILE_HEADS = {  # fit-head options per tile head: small and fast
    "mlp": ["--epochs", "5", "--hidden", "16"],
    "linear": ["--epochs", "5"],
    "logreg": [],
    "knn": ["-p", "n_neighbors=3"],
    "lightgbm": ["-p", "n_estimators=5", "-p", "min_child_samples=2"],
}


def mito(*args: str) -> str:
    """Run the mito CLI in a fresh process (as a user does); fail loudly."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "mito", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"mito {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def crops(dest: Path) -> Path:
    """An AMi-Br-shaped folder: the chosen crops in Atypical/ and Normal/, and the metadata rows of the train crops."""
    meta = pd.read_csv(SAMPLE / "amibr_train_split.csv")
    meta["_stem"] = meta["dataset_uid"].str.rsplit(".", n=1).str[0]
    label = {f.stem: f.parent.name for f in SAMPLE.glob("*/*.jpg")}
    keep: list[str] = []
    for slide in SLIDES:
        stems = sorted(s for s in meta.loc[meta["slide"] == slide, "_stem"] if s in label)
        keep += stems[:PER_SLIDE]
    train = set(meta["_stem"])
    for cls, n in TEST_CROPS.items():
        keep += sorted(s for s, c in label.items() if c == cls and s not in train)[:n]
    for s in keep:
        (dest / label[s]).mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / label[s] / f"{s}.jpg", dest / label[s] / f"{s}.jpg")
    meta[meta["_stem"].isin(keep)].drop(columns="_stem").to_csv(dest / "amibr_train_split.csv", index=False)
    return dest


def slide_export(dest: Path, tmp: Path) -> None:
    """A one-slide store (a 512 x 384 px .svs of real crops at 0.25 um/px, 64-px tiles at 0.5 um/px) exported for TRIDENT."""
    from mito.wsi.writer import mosaic, write_svs

    slides = tmp / "slides"
    slides.mkdir(parents=True)
    atyp, norm = sorted((SAMPLE / "Atypical").glob("*.jpg")), sorted((SAMPLE / "Normal").glob("*.jpg"))
    write_svs(slides / "a.svs", mosaic(512, 384, [((0, 0, 256, 384), atyp), ((256, 0, 512, 384), norm)], 128))
    store = tmp / "slides.zarr"
    mito(
        "extract",
        str(slides),
        "--store",
        str(store),
        "--mpp",
        "0.5",
        "--tile-px",
        "64",
        "--input-size",
        "64",
        "--zooms",
        "1",
        "--colors",
        "rgb",
        "--min-tissue",
        "0.1",
        "--quiet",
    )
    mito("export", "--store", str(store), "--out", str(dest / "export"))
    import h5py

    expected = {}
    for f in sorted((dest / "export").glob("*.h5")):
        with h5py.File(f, "r") as h:
            feats, coords = h["features"][:], h["coords"][:]
            expected[f.name] = {
                "shape": list(feats.shape),
                "features_sum": float(feats.astype("float64").sum()),
                "features_first": feats[0, :8].tolist(),
                "coords": coords.tolist(),
                "coords_attrs": {
                    k: (v.item() if hasattr(v, "item") else v) for k, v in h["coords"].attrs.items() if k not in ("slide_path",)
                },
            }
    (dest / "export.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


def bench_expected(bench: Path, dest: Path) -> None:
    """What a bench (or lora) folder says when loaded: each row's scores, and one paired comparison of its top rows."""
    from mito.bench import compare_rows, load_leaderboard

    lb = load_leaderboard(bench)
    rows = lb.rows
    doc: dict = {
        "rows": {r["row_id"]: {k: float(r[k]) for k in ("balanced_accuracy", "auroc", "ci_low", "ci_high")} for _, r in rows.iterrows()}
    }
    if len(rows) >= 2:
        a, b, comp = compare_rows(lb, "1", "2")
        doc["compare"] = {"a": a["row_id"], "b": b["row_id"], "result": dataclasses.asdict(comp)}
    dest.write_text(json.dumps(doc, indent=1, default=float) + "\n")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    src = crops(OUT / "crops")
    store = OUT / "store.zarr"
    mito(
        "extract",
        str(src),
        "--store",
        str(store),
        "--task",
        "mitosis",
        "--zooms",
        "1",
        "--colors",
        "rgb",
        "--input-size",
        "64",
        "--chunk-rows",
        "16",
        "--batch-size",
        "16",
        "--quiet",
    )
    models = OUT / "models"
    for head, opts in TILE_HEADS.items():
        mito("fit-head", "--store", str(store), "--head", head, "--out", str(models / head), *opts)
    mito(
        "fit-head",
        "--store",
        str(store),
        "--head",
        "mlp",
        "--ensemble",
        "2",
        "--epochs",
        "5",
        "--hidden",
        "16",
        "--out",
        str(models / "ensemble"),
    )
    for name in (*TILE_HEADS, "ensemble"):
        mito("predict", "--model", str(models / name), "--store", str(store), "--out", str(models / f"{name}.predictions.csv"), "--quiet")
    for head in ("abmil", "mean-mlp"):
        mito(
            "fit-head",
            "--store",
            str(store),
            "--level",
            "slide",
            "--task",
            "dataset",
            "--head",
            head,
            "--epochs",
            "5",
            "--hidden",
            "16",
            *(["-p", "attention=8"] if head == "abmil" else []),
            "--test-fraction",
            "0.25",
            "--out",
            str(models / f"slide-{head}"),
        )
        mito(
            "predict",
            "--model",
            str(models / f"slide-{head}"),
            "--store",
            str(store),
            "--out",
            str(models / f"slide-{head}.predictions.csv"),
        )
    bench = OUT / "bench"
    mito(
        "bench",
        "--store",
        str(store),
        "--task",
        "mitosis",
        "--heads",
        "logreg,knn",
        "--param",
        "knn.n_neighbors=3",
        "--folds",
        "2",
        "--n-boot",
        "50",
        "--no-umap",
        "--out",
        str(bench),
    )
    bench_expected(bench, OUT / "bench.expected.json")
    mito(
        "lora",
        str(src),
        "--out",
        str(OUT / "lora"),
        "--task",
        "mitosis",
        "--mode",
        "lora",
        "--rank",
        "2",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--input-size",
        "64",
        "--n-boot",
        "50",
        "--device",
        "cpu",
        "--no-augment",
    )
    for fold in sorted((OUT / "lora").glob("fold*")):
        (fold / "checkpoint.pt").unlink(missing_ok=True)  # resumable state of an unfinished fold: not part of the artifact
    bench_expected(OUT / "lora", OUT / "lora.expected.json")
    mito(
        "predict", "--model", str(OUT / "lora" / "fold0" / "model"), str(src), "--out", str(OUT / "lora.predictions.csv"), "--device", "cpu"
    )
    tmp = OUT.parent / "_legacy_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        slide_export(OUT, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (OUT / "VERSION").write_text(mito("--version").strip().split()[-1] + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size / 1e6:.2f} MB in {sum(1 for p in OUT.rglob('*') if p.is_file())} files)")


if __name__ == "__main__":
    main()
