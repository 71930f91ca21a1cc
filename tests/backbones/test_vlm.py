"""Vision-language backbones: real architectures with random weights, saved to local files and loaded by the loaders
users call; tokenisers; the whole zero-shot path on real crops; bench --zero-shot and the text-linear head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("open_clip")

from typer.testing import CliRunner

from mito.backbones import BackboneError, create_backbone, get_backbone, resolve_weights
from mito.backbones.vlm import (
    CONCH_TOKENIZER,
    ConchModel,
    clip_model,
    clip_tokenizer,
    conch_tokenizer,
    hf_clip_to_open_clip,
    tokenizer_for,
)
from mito.cli import app
from tests.conftest import amibr_subset

runner = CliRunner()
VLMS = ("conch", "plip", "quiltnet-b-32")


def test_registry_entries_and_backbones_listing() -> None:
    conch = get_backbone("conch")
    assert (conch.embed_dim, conch.input_size, conch.loader) == (512, 448, "conch")
    for name in ("plip", "quiltnet-b-32"):
        s = get_backbone(name)
        assert (s.embed_dim, s.input_size, s.loader, s.kwargs["config"]) == (512, 224, "open_clip", "ViT-B-32-quickgelu")
    r = runner.invoke(app, ["backbones", "--json"])
    assert r.exit_code == 0, r.output
    rows = {d["name"]: d for d in json.loads(r.output)}
    assert rows["conch"]["weights_files"] == ["pytorch_model.bin"] and rows["conch"]["hf_id"] == "MahmoodLab/CONCH"
    assert rows["plip"]["hf_id"] == "vinid/plip" and rows["quiltnet-b-32"]["weights_files"][0] == "open_clip_pytorch_model.bin"


def test_conch_dims_on_the_meta_device() -> None:
    """CONCH v1's layout (timm ViT-B/16 trunk at 448 px, attentional poolers, CoCa text tower with CLS) without memory."""
    with torch.device("meta"):
        m = ConchModel()
        img = m.encode_image(torch.empty(2, 3, 448, 448))
        txt = m.encode_text(torch.zeros(2, 128, dtype=torch.long))
    assert img.shape == (2, 512) and txt.shape == (2, 512)
    sd = m.state_dict()
    shapes = {
        "visual.trunk.pos_embed": (1, 785, 768),  # (448/16)^2 + CLS
        "visual.attn_pool_contrast.query": (1, 512),
        "visual.attn_pool_caption.query": (256, 768),
        "visual.proj_contrast": (512, 512),
        "text.cls_emb": (768,),
        "text.positional_embedding": (128, 768),
        "text.token_embedding.weight": (32007, 768),
        "text.text_projection": (768, 512),
        "logit_scale": (),
    }
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k


def test_missing_weights_name_the_file_and_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, amibr_dir: Path) -> None:
    monkeypatch.setenv("MITO_WEIGHTS_CONFIG", str(tmp_path / "none.json"))
    for name, file, repo in (
        ("conch", "pytorch_model.bin", "MahmoodLab/CONCH"),
        ("plip", "pytorch_model.bin", "vinid/plip"),
        ("quiltnet-b-32", "open_clip_pytorch_model.bin", "wisdomik/QuiltNet-B-32"),
    ):
        monkeypatch.delenv("MITO_WEIGHTS_" + name.upper().replace("-", "_"), raising=False)
        with pytest.raises(BackboneError) as e:
            resolve_weights(get_backbone(name))
        assert file in str(e.value) and repo in str(e.value)
    r = runner.invoke(app, ["extract", str(amibr_dir), "--backbone", "conch", "--store", str(tmp_path / "s.zarr")])
    assert r.exit_code == 2 and "pytorch_model.bin" in r.output and "MahmoodLab/CONCH" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 3  # one line, wrapped by the terminal width


def test_plip_hf_weights_are_renamed_to_open_clip_exactly(tmp_path: Path) -> None:
    """PLIP ships transformers CLIPModel weights: renamed, open_clip computes the same image and text features."""
    transformers = pytest.importorskip("transformers")
    tc = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77}
    vc = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 64, "patch_size": 16}
    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig(text_config=tc, vision_config=vc, projection_dim=32)).eval()
    oc_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 96, "patch_size": 16, "head_width": 24},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    }
    oc = clip_model(oc_cfg).eval()
    oc.load_state_dict(hf_clip_to_open_clip(hf.state_dict()), strict=True)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = clip_tokenizer().encode(["an atypical mitotic figure", "a normal mitosis", "stroma"])
    with torch.no_grad():
        hi, ht = hf.get_image_features(pixel_values=x), hf.get_text_features(input_ids=ids)
        hi, ht = (getattr(v, "pooler_output", v) for v in (hi, ht))
        torch.testing.assert_close(oc.encode_image(x), hi, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(oc.encode_text(ids), ht, atol=1e-4, rtol=1e-4)


def test_clip_tokeniser_is_offline_and_clip_shaped() -> None:
    tok = clip_tokenizer()
    ids = tok.encode(["an atypical mitotic figure", "a normal mitotic figure"])
    assert ids.shape == (2, 77) and (ids[:, 0] == 49406).all()  # <start_of_text>
    assert (ids.argmax(dim=1) > 1).all() and ids.max() == 49407  # <end_of_text> is the highest id: argmax pooling finds it
    assert len(tok.sha256) == 64 and "77" in tok.name


def _tiny_conch_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<start_of_text>", "<end_of_text>"])
    tok.train_from_iterator(["an atypical mitotic figure", "a normal mitotic figure", "tumour stroma"] * 5, trainer)
    tok.save(str(path))
    return path


def test_conch_tokeniser_127_ids_then_a_cls_slot(tmp_path: Path) -> None:
    tok = conch_tokenizer(_tiny_conch_tokenizer(tmp_path / CONCH_TOKENIZER))
    ids = tok.encode(["an atypical mitotic figure", "word " * 300])
    assert ids.shape == (2, 128)
    assert (ids[:, 0] == 1).all() and (ids[:, -1] == 0).all()  # <start_of_text>, and the last slot is left for CLS
    n = int((ids[0] != 0).sum())
    assert ids[0, n - 1] == 2 and (ids[0, n:] == 0).all()  # <end_of_text> then <pad>
    assert ids[1, 126] == 2  # a long text is cut to 127 ids, ending in <end_of_text>
    from mito.backbones.registry import Encoder

    enc = Encoder(
        model=torch.nn.Identity(),
        spec=get_backbone("conch"),
        weights_sha256="x",
        weights_path=str(tmp_path / "elsewhere" / "pytorch_model.bin"),
    )
    with pytest.raises(BackboneError, match=f"{CONCH_TOKENIZER}.*mahmoodlab/CONCH"):
        tokenizer_for(enc)


# ------------------------------------------------------------------ end to end with a random QuiltNet-B-32 file
@pytest.fixture(scope="module")
def quilt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-init open_clip ViT-B/32 saved as QuiltNet's snapshot file; 16 real crops extracted through the real loader."""
    root = tmp_path_factory.mktemp("quilt")
    torch.manual_seed(0)
    sd = {k: v.half() for k, v in clip_model("ViT-B-32-quickgelu").state_dict().items()}  # half the bytes on disk
    torch.save(sd, root / "open_clip_pytorch_model.bin")
    crops = amibr_subset(root / "crops", 8)
    store = root / "s.zarr"
    r = runner.invoke(
        app,
        [
            "extract",
            str(crops),
            "--backbone",
            "quiltnet-b-32",
            "--weights",
            str(root),
            "--store",
            str(store),
            "--zooms",
            "1",
            "--colors",
            "rgb",
            "--task",
            "mitosis",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    return {"root": root, "store": store}


@pytest.mark.slow
def test_zero_shot_cli_end_to_end(quilt: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    args = [
        "zero-shot",
        "--store",
        str(quilt["store"]),
        "--backbone",
        "quiltnet-b-32",
        "--weights",
        str(quilt["root"]),
        "--prompts",
        "mitosis",
        "--out",
        str(out),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "computed and cached" in r.output and "labelled tiles: balanced acc" in r.output
    df = pd.read_csv(out)
    assert len(df) == 16 and set(df["label"]) == {"Atypical", "Normal"}
    np.testing.assert_allclose(df[["p_Atypical", "p_Normal"]].sum(axis=1), 1, atol=1e-5)
    assert (df["pred"] == np.where(df["p_Atypical"] > df["p_Normal"], "Atypical", "Normal")).all()
    cache = list((quilt["store"].parent / "s.zarr.text").glob("quiltnet-b-32-*.json"))
    assert len(cache) == 1
    doc = json.loads(cache[0].read_text())
    assert doc["classes"] == ["Atypical", "Normal"] and len(doc["contexts"][""][0]) == 512 and len(doc["tokenizer_sha256"]) == 64
    assert len(doc["weights_sha256"]) == 64 and doc["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-3)
    # the text tower agrees with the cached embedding: recompute one class by hand
    enc = create_backbone("quiltnet-b-32", weights=str(quilt["root"]))
    with torch.no_grad():
        t = torch.nn.functional.normalize(
            enc.model.encode_text(
                clip_tokenizer().encode(json.loads((Path(__file__).parents[2] / "mito/data/prompts/mitosis.json").read_text())["Normal"])
            ),
            dim=-1,
        ).mean(0)
    np.testing.assert_allclose(np.asarray(doc["contexts"][""][1]), (t / t.norm()).numpy(), atol=1e-5)
    # second run: read from the cache; with a per-tile context, one text set per distinct context
    r = runner.invoke(app, [*args, "--overwrite", "--prompt-context", "scanned at {slide}"])
    assert r.exit_code == 0, r.output
    df2 = pd.read_csv(out)
    doc = json.loads(cache[0].read_text())
    assert set(doc["contexts"]) == {"", *df2["context"].fillna("")}  # a tile without a slide gets the plain prompts
    assert df2["context"].dropna().str.startswith("scanned at ").all() and df2["context"].notna().sum() > 0
    no_weights = [a for a in args if a not in ("--weights", str(quilt["root"]))]
    r = runner.invoke(app, [*no_weights, "--overwrite"])  # cached: no weights needed
    assert r.exit_code == 0 and "read from the cache" in r.output, r.output
    pd.testing.assert_frame_equal(pd.read_csv(out), df)
    bad = runner.invoke(app, [*args, "--overwrite", "--prompt-context", "{scanner}"])
    assert bad.exit_code == 2 and "scanner" in bad.output and "Traceback" not in bad.output


def test_bench_zero_shot_row_same_folds_trains_nothing_and_text_linear(
    quilt: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MITO_WEIGHTS_QUILTNET_B_32", str(quilt["root"]))
    out = tmp_path / "bench"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(quilt["store"]),
            "--task",
            "mitosis",
            "--zero-shot",
            "mitosis",
            "--heads",
            "logreg,text-linear",
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
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "leaderboard.json").read_text())
    rows = {row["head"]: row for row in doc["rows"]}
    assert set(rows) == {"logreg", "zero-shot", "text-linear"}
    zs = rows["zero-shot"]
    assert zs["kind"] == "zero-shot" and zs["train_seconds"] == 0 and zs["n_train"] == 0
    assert zs["fold_fingerprint"] == rows["logreg"]["fold_fingerprint"] == doc["meta"]["tasks"]["mitosis"]["fold_fingerprint"]
    assert zs["n_test"] == rows["logreg"]["n_test"]
    # the zero-shot row's predictions are what the scoring function gives on each fold's test tiles
    from mito.heads.zeroshot import read_text_embeddings, zero_shot_proba
    from mito.store import open_store

    te = read_text_embeddings(doc["meta"]["zero_shot"]["text_embeddings"]["quiltnet-b-32"])
    with np.load(out / "predictions.npz") as z:
        rows_, proba = z[f"{zs['row_id']}.row"], z[f"{zs['row_id']}.proba"]
    with open_store(quilt["store"]) as s:
        X = s.read(["quiltnet-b-32:z1:rgb"], rows=rows_)
    np.testing.assert_allclose(proba, zero_shot_proba(X, te.matrix("", ["Atypical", "Normal"]), te.logit_scale), atol=1e-5)
    # fit-head with the same text embeddings: the head trains, saves and predicts
    model = tmp_path / "tl"
    r = runner.invoke(
        app,
        [
            "fit-head",
            "--store",
            str(quilt["store"]),
            "--out",
            str(model),
            "--head",
            "text-linear",
            "--task",
            "mitosis",
            "--epochs",
            "3",
            "-p",
            f"text_embeddings={te_path(doc)}",
            "--split-column",
            "none",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", "--model", str(model), "--store", str(quilt["store"]), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["fit-head", "--store", str(quilt["store"]), "--out", str(tmp_path / "x"), "--head", "text-linear", "--task", "mitosis"]
    )
    assert r.exit_code == 2 and "text_embeddings" in r.output


def test_bench_few_shot_text_linear_gets_the_text_embeddings(
    quilt: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MITO_WEIGHTS_QUILTNET_B_32", str(quilt["root"]))
    out = tmp_path / "bench"
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(quilt["store"]),
            "--task",
            "mitosis",
            "--zero-shot",
            "mitosis",
            "--heads",
            "text-linear",
            "--param",
            "text-linear.epochs=2",
            "--few-shot",
            "2",
            "--few-shot-draws",
            "1",
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
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    shot = [row for row in rows if row["shots"] == "2"]
    assert [row["head"] for row in shot] == ["text-linear"] and "text_embeddings" in json.loads(shot[0]["params"])


def te_path(doc: dict) -> str:
    return doc["meta"]["zero_shot"]["text_embeddings"]["quiltnet-b-32"]


def test_bench_zero_shot_without_a_vlm_skips_in_one_line(amibr_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "bench",
            "--store",
            str(amibr_store),
            "--task",
            "mitosis",
            "--zero-shot",
            "mitosis",
            "--heads",
            "logreg",
            "--features",
            "efficientnet_lite0:z1:rgb",
            "--folds",
            "2",
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
    assert "--zero-shot skipped: the store has no vision-language backbone" in r.output.replace("\n", " ")
    doc = json.loads((tmp_path / "b" / "leaderboard.json").read_text())
    assert {row["head"] for row in doc["rows"]} == {"logreg"}
