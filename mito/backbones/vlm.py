"""Vision-language backbones (CONCH v1, PLIP, QuiltNet-B-32): image towers for extraction, text towers for zero-shot.

Built from open_clip modules (pip install 'mito[vlm]') and loaded from local files only.

Which embedding is stored: the *projected* image embedding (the vector the model compares with text), un-normalised.
For CONCH that is attentional pool -> LayerNorm -> proj_contrast (512-d, ``encode_image(proj_contrast=True,
normalize=False)``); the pre-projection vector TRIDENT stores is the same 512-d vector before one 512x512 linear map,
so heads see the same information. For PLIP/QuiltNet it is CLIP's ``encode_image`` (768 -> 512 projection). Heads and
zero-shot read the same store key.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mito.backbones.errors import BackboneError
from mito.backbones.registry import (
    BackboneSpec,
    Encoder,
    WeightsSource,
    file_sha256,
    get_backbone,
    list_backbones,
    load_state_dict,
    register,
    register_loader,
)

OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
VLM_LOADERS = ("open_clip", "conch")

# CONCH v1 (mahmoodlab/CONCH conch/open_clip_custom/model_configs/conch_ViT-B-16.json); open_clip does not ship it.
CONCH_CONFIG: dict[str, Any] = {
    "embed_dim": 512,
    "embed_dim_caption": 768,
    "vision_cfg": {
        "image_size": 448,
        "patch_size": 16,
        "layers": 12,
        "width": 768,
        "num_heads": 12,
        "mlp_ratio": 4,
        "attn_pooler_heads": 8,
        "n_queries_contrast": 1,
        "n_queries_caption": 256,
    },
    "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12, "pad_id": 0},
}
CONCH_TOKENIZER = "conch_byte_level_bpe_uncased.json"
CONCH_TOKENIZER_SRC = "github.com/mahmoodlab/CONCH conch/open_clip_custom/tokenizers/" + CONCH_TOKENIZER


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise BackboneError("vision-language backbones need open_clip: pip install 'mito[vlm]' (open-clip-torch)") from None
    return open_clip


def is_vlm(spec: BackboneSpec) -> bool:
    """True for a backbone with a text tower (zero-shot capable)."""
    return spec.loader in VLM_LOADERS


# ------------------------------------------------------------------ CONCH: timm ViT trunk + open_clip poolers / text tower
class ConchVisual(nn.Module):
    """CONCH's image tower with its checkpoint's module names (``visual.trunk``, ``attn_pool_contrast``, ...)."""

    def __init__(self, cfg: dict[str, Any], embed_dim: int, embed_dim_caption: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        AttentionalPooler = _open_clip().transformer.AttentionalPooler
        v = cfg
        self.trunk = VisionTransformer(
            embed_dim=v["width"],
            depth=v["layers"],
            num_heads=v["num_heads"],
            mlp_ratio=v["mlp_ratio"],
            img_size=v["image_size"],
            patch_size=v["patch_size"],
            num_classes=0,
            dynamic_img_size=True,
        )
        width = self.trunk.num_features
        self.attn_pool_contrast = AttentionalPooler(embed_dim, width, n_head=v["attn_pooler_heads"], n_queries=v["n_queries_contrast"])
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width**-0.5 * torch.randn(embed_dim, embed_dim))
        # the captioning pooler is unused for embeddings; kept so the checkpoint loads strictly
        self.attn_pool_caption = AttentionalPooler(
            embed_dim_caption, width, n_head=v["attn_pooler_heads"], n_queries=v["n_queries_caption"]
        )
        self.ln_caption = nn.LayerNorm(embed_dim_caption)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast


class ConchModel(nn.Module):
    """CONCH v1 without its captioning decoder: ``encode_image`` / ``encode_text`` / ``logit_scale`` as in open_clip."""

    def __init__(self, cfg: dict[str, Any] = CONCH_CONFIG) -> None:
        super().__init__()
        oc = _open_clip()
        t = cfg["text_cfg"]
        self.visual = ConchVisual(cfg["vision_cfg"], cfg["embed_dim"], cfg["embed_dim_caption"])
        # CONCH appends a CLS embedding to 127 tokens: open_clip's TextTransformer with embed_cls (num_pos = 127 + 1)
        self.text = oc.transformer.TextTransformer(
            context_length=t["context_length"] - 1,
            vocab_size=t["vocab_size"],
            width=t["width"],
            heads=t["heads"],
            layers=t["layers"],
            output_dim=cfg["embed_dim"],
            embed_cls=True,
            pad_id=t["pad_id"],
            act_layer=nn.GELU,
        )
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Projected image embedding."""
        z = self.visual(x)
        return nn.functional.normalize(z, dim=-1) if normalize else z

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Projected text embedding of CONCH token ids [B, 128] (the last slot makes room for the CLS embedding)."""
        z = self.text(tokens[:, :-1])
        return nn.functional.normalize(z, dim=-1) if normalize else z


def _conch_build(spec: BackboneSpec, path: Path | None) -> nn.Module:
    model = ConchModel()
    if path is not None:
        sd = load_state_dict(path)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith("text_decoder.")}  # captioning decoder: not needed
        _load_strict(model, sd, spec, path)
    return model


# ------------------------------------------------------------------ CLIP (PLIP, QuiltNet) through open_clip
def clip_model(config: str | dict[str, Any]) -> nn.Module:
    """An open_clip CLIP built from a model-config name (``ViT-B-32-quickgelu``) or a config dict, random weights."""
    oc = _open_clip()
    cfg = oc.get_model_config(config) if isinstance(config, str) else dict(config)
    if cfg is None:
        raise BackboneError(f"open_clip has no model config {config!r}")
    return oc.model.CLIP(**cfg)


def hf_clip_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers CLIPModel state dict (PLIP's published format) to open_clip's CLIP layout."""
    out: dict[str, torch.Tensor] = {}
    tower = {"text_model.": "", "vision_model.": "visual."}
    layer = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    fixed = {
        "logit_scale": "logit_scale",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    }
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        if k in fixed:
            out[fixed[k]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
        elif k == "visual_projection.weight":
            out["visual.proj"] = v.T.contiguous()
        elif ".encoder.layers." in k:
            head, rest = k.split(".encoder.layers.", 1)
            i, name = rest.split(".", 1)
            prefix = f"{tower[head + '.']}transformer.resblocks.{i}."
            part = name.rsplit(".", 1)
            if part[0] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault(f"{prefix}attn.in_proj_{part[1]}", {})[part[0][-6]] = v
                continue
            out[prefix + layer.get(part[0], part[0]) + "." + part[1]] = v
        else:
            out[k] = v  # left as is: a strict load names it
    for k, parts in qkv.items():
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _open_clip_build(spec: BackboneSpec, path: Path | None) -> nn.Module:
    config: str | dict[str, Any] = spec.kwargs["config"]
    if path is not None and (path.parent / "open_clip_config.json").is_file():  # the snapshot's own config wins
        try:
            config = json.loads((path.parent / "open_clip_config.json").read_text())["model_cfg"]
        except (OSError, ValueError, KeyError) as e:
            raise BackboneError(f"cannot read {path.parent / 'open_clip_config.json'}: {e}") from None
    model = clip_model(config)
    if path is not None:
        sd = load_state_dict(path)
        if any(k.startswith("text_model.") for k in sd):
            sd = hf_clip_to_open_clip(sd)
        _load_strict(model, sd, spec, path)
    return model


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], spec: BackboneSpec, path: Path) -> None:
    scale = cast(torch.Tensor, model.logit_scale)
    if "logit_scale" in sd and sd["logit_scale"].ndim != scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(scale.shape)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise BackboneError(f"{path} does not fit {spec.name} ({spec.arch}): {str(e).splitlines()[0]} ...") from None


def _vlm_embed(model: nn.Module, spec: BackboneSpec, x: torch.Tensor) -> torch.Tensor:
    return cast(Any, model).encode_image(x, normalize=False)  # open_clip models; nn.Module does not declare it


register_loader("open_clip", _open_clip_build, _vlm_embed)
register_loader("conch", _conch_build, _vlm_embed)


# ------------------------------------------------------------------ tokenisers and text embeddings
@dataclass(frozen=True)
class Tokenizer:
    """Text -> token ids for one model; ``name`` and ``sha256`` identify it in the text-embedding cache."""

    name: str
    sha256: str
    encode: Any  # Callable[[list[str]], torch.Tensor]


def clip_tokenizer(context_length: int = 77) -> Tokenizer:
    """open_clip's CLIP BPE tokenizer (its vocabulary ships in the package: no download)."""
    oc = _open_clip()
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    tok = SimpleTokenizer(context_length=context_length)
    with gzip.open(default_bpe()) as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return Tokenizer(f"open_clip {oc.__version__} CLIP BPE, {context_length} tokens", sha, lambda texts: tok(list(texts)))


def conch_tokenizer(tokenizer_file: Path) -> Tokenizer:
    """CONCH's byte-level BPE (a tokenizers JSON file): 127 ids padded to 128, as CONCH's own ``tokenize``."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise BackboneError("the CONCH tokenizer needs the tokenizers package: pip install tokenizers") from None
    try:
        tok = HFTokenizer.from_file(str(tokenizer_file))
    except Exception as e:
        raise BackboneError(f"cannot read the CONCH tokenizer {tokenizer_file}: {str(e).splitlines()[0]}") from None
    found = [tok.token_to_id(t) for t in ("<pad>", "<start_of_text>", "<end_of_text>")]
    if None in found:
        raise BackboneError(f"{tokenizer_file} lacks CONCH's <pad>/<start_of_text>/<end_of_text> tokens")
    pad, bos, eos = (int(i) for i in found if i is not None)
    n = CONCH_CONFIG["text_cfg"]["context_length"]

    def encode(texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids[: n - 3]
            ids = [bos, *ids, eos]
            rows.append(ids + [pad] * (n - len(ids)))  # 127 used, the 128th is the placeholder for CLS
        return torch.tensor(rows, dtype=torch.long)

    return Tokenizer(f"CONCH byte-level BPE ({tokenizer_file.name}), {n} tokens", file_sha256(tokenizer_file), encode)


def tokenizer_for(encoder: Encoder) -> Tokenizer:
    """The tokenizer that goes with a VLM encoder (CONCH's JSON file is looked up beside its weights)."""
    spec = encoder.spec
    if spec.loader == "conch":
        where = Path(encoder.weights_path).parent if encoder.weights_path else None
        f = where / CONCH_TOKENIZER if where else None
        if f is None or not f.is_file():
            raise BackboneError(
                f"conch zero-shot needs its tokenizer {CONCH_TOKENIZER} beside the weights"
                f"{' in ' + str(where) if where else ''} (get it from {CONCH_TOKENIZER_SRC})"
            )
        return conch_tokenizer(f)
    if spec.loader == "open_clip":
        return clip_tokenizer(int(cast(Any, encoder.model).context_length))
    raise BackboneError(f"{spec.name} has no text tower: zero-shot needs a vision-language backbone ({', '.join(vlm_names())})")


@torch.no_grad()
def encode_texts(encoder: Encoder, tokenizer: Tokenizer, texts: list[str], batch: int = 64) -> torch.Tensor:
    """L2-normalised text embeddings [len(texts), D] on the CPU."""
    device = next(encoder.model.parameters()).device
    out = []
    for s in range(0, len(texts), batch):
        ids = tokenizer.encode(texts[s : s + batch]).to(device)
        out.append(nn.functional.normalize(cast(Any, encoder.model).encode_text(ids).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, encoder.spec.embed_dim)


def logit_scale(encoder: Encoder) -> float:
    """The model's learned temperature, exp(logit_scale) (100 for OpenAI CLIP)."""
    return float(cast(torch.Tensor, encoder.model.logit_scale).detach().float().exp().clamp(max=100.0))


def vlm_names() -> list[str]:
    """Registered vision-language backbones."""

    return [s.name for s in list_backbones() if is_vlm(s)]


def vlm_spec(name: str) -> BackboneSpec:
    """The spec of a vision-language backbone (random_<name> allowed); others are one-line errors."""
    spec = get_backbone(name)
    if not is_vlm(spec):
        raise BackboneError(f"{name} has no text tower: zero-shot needs a vision-language backbone ({', '.join(vlm_names())})")
    return spec


# ------------------------------------------------------------------ registry entries
register(
    BackboneSpec(
        name="conch",
        arch="conch_ViT-B-16 (CoCa: timm ViT-B/16 trunk, attentional pool, proj_contrast)",
        embed_dim=512,
        input_size=448,
        mean=OPENAI_CLIP[0],
        std=OPENAI_CLIP[1],
        pooling="attn-pool+proj",
        family="vit",
        loader="conch",
        weights=WeightsSource(files=("pytorch_model.bin",), hf_id="MahmoodLab/CONCH", gated=True),
        license="CC-BY-NC-ND-4.0",
        params="~395M (incl. text decoder)",
        note=f"zero-shot also needs {CONCH_TOKENIZER} beside the weights ({CONCH_TOKENIZER_SRC})",
    )
)


# what PLIP and QuiltNet-B-32 share: an open_clip ViT-B/32 (QuickGELU) with OpenAI CLIP's normalisation (an
# open_clip_config.json beside the weights wins over the config named in kwargs)
_OPEN_CLIP_B32: dict[str, Any] = dict(embed_dim=512, mean=OPENAI_CLIP[0], std=OPENAI_CLIP[1], pooling="cls+proj", family="vit")
_OPEN_CLIP_B32.update(loader="open_clip", license="unconfirmed (see the model card)", params="151M")
register(
    BackboneSpec(
        name="plip",
        arch="open_clip ViT-B-32-quickgelu (transformers CLIPModel weights, renamed)",
        kwargs={"config": "ViT-B-32-quickgelu"},
        weights=WeightsSource(files=("pytorch_model.bin", "model.safetensors"), hf_id="vinid/plip"),
        **_OPEN_CLIP_B32,
    )
)
register(  # fine-tuned from OpenAI CLIP ViT-B/32 (QuickGELU)
    BackboneSpec(
        name="quiltnet-b-32",
        arch="open_clip ViT-B-32-quickgelu",
        kwargs={"config": "ViT-B-32-quickgelu"},
        weights=WeightsSource(
            files=("open_clip_pytorch_model.bin", "open_clip_model.safetensors"), hf_id="wisdomik/QuiltNet-B-32", gated=True
        ),
        **_OPEN_CLIP_B32,
    )
)
