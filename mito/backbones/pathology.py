"""Pathology foundation models (facts from shared/backbones.md): gated weights, loaded from local files only."""

from typing import Any

from mito.backbones.registry import HOPT, IMNET, BackboneSpec, WeightsSource, register

_BIN = ("pytorch_model.bin", "model.safetensors")


def _vit(
    name: str, arch: str, dim: int, hf_id: str, license: str, pooling: str = "cls", norm=IMNET, gated: bool = True, **kw: object
) -> None:
    register(
        BackboneSpec(
            name=name,
            arch=arch,
            embed_dim=dim,
            mean=norm[0],
            std=norm[1],
            pooling=pooling,
            family="vit",
            kwargs={"img_size": 224, "dynamic_img_size": True, **kw},
            weights=WeightsSource(files=_BIN, hf_id=hf_id, gated=gated),
            license=license,
        )
    )


_VIRCHOW: dict[str, Any] = dict(init_values=1e-5, mlp_ratio=5.3375, swiglu=True)
_vit("virchow2", "vit_huge_patch14_224", 2560, "paige-ai/Virchow2", "CC-BY-NC-ND-4.0", "cls+mean", reg_tokens=4, **_VIRCHOW)
_vit("virchow", "vit_huge_patch14_224", 2560, "paige-ai/Virchow", "Apache-2.0 + extra terms", "cls+mean", **_VIRCHOW)
_vit("uni", "vit_large_patch16_224", 1024, "MahmoodLab/UNI", "CC-BY-NC-ND-4.0", init_values=1e-5)
_vit(
    "uni2-h",
    "vit_giant_patch14_224",
    1536,
    "MahmoodLab/UNI2-h",
    "CC-BY-NC-ND-4.0",
    patch_size=14,
    depth=24,
    num_heads=24,
    init_values=1e-5,
    embed_dim=1536,
    mlp_ratio=2.66667 * 2,
    no_embed_class=True,
    reg_tokens=8,
    swiglu=True,
)
_vit("h-optimus-0", "vit_giant_patch14_reg4_dinov2", 1536, "bioptimus/H-optimus-0", "Apache-2.0", norm=HOPT, gated=False, init_values=1e-5)
_vit("h-optimus-1", "vit_giant_patch14_reg4_dinov2", 1536, "bioptimus/H-optimus-1", "CC-BY-NC-ND-4.0", norm=HOPT, init_values=1e-5)
# H0-mini's timm arch name is unconfirmed (eva calls it ViT-B/14 with 4 registers); a strict load checks it.
_vit(
    "h0-mini",
    "vit_base_patch14_reg4_dinov2",
    1536,
    "bioptimus/H0-mini",
    "CC-BY-NC-ND-4.0",
    "cls+mean",
    norm=HOPT,
    init_values=1e-5,
    swiglu=True,
)
_vit(
    "prov-gigapath",
    "vit_giant_patch14_dinov2",
    1536,
    "prov-gigapath/prov-gigapath",
    "Apache-2.0 code, research use only",
    patch_size=16,
    embed_dim=1536,
    depth=40,
    num_heads=24,
    mlp_ratio=5.33334,
    in_chans=3,
)


def _phikon(name: str, arch: str, dim: int, kwargs: dict[str, Any], files: tuple[str, ...], params: str) -> None:
    """Owkin's Phikon models: transformers weights (ViT or DINOv2), the CLS token."""
    register(
        BackboneSpec(
            name=name,
            arch=f"transformers:{arch}",
            embed_dim=dim,
            pooling="cls",
            family="vit",
            loader="transformers",
            kwargs=kwargs,
            weights=WeightsSource(files=files, hf_id=f"owkin/{name}"),
            license="Owkin non-commercial",
            params=params,
        )
    )


_phikon(
    "phikon",
    "ViTModel",
    768,
    {"config": "ViTConfig", "model": "ViTModel", "config_kwargs": {"image_size": 224, "patch_size": 16}},
    ("model.safetensors", "pytorch_model.bin"),
    "85.8M",
)
_phikon(
    "phikon-v2",
    "Dinov2Model",
    1024,
    {
        "config": "Dinov2Config",
        "model": "Dinov2Model",
        "config_kwargs": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14, "image_size": 224},
    },
    ("model.safetensors",),
    "303.4M",
)
