"""Backbone registry: one spec per model, one constructor."""

from mito.backbones import imagenet, pathology, vlm  # noqa: F401  (registers the specs)
from mito.backbones.errors import BackboneError
from mito.backbones.registry import (
    LOADERS,
    BackboneLoader,
    BackboneSpec,
    Encoder,
    WeightsSource,
    available,
    create_backbone,
    get_backbone,
    list_backbones,
    register,
    register_loader,
    resolve_weights,
    spec_summary,
)

__all__ = [
    "LOADERS",
    "BackboneError",
    "BackboneLoader",
    "BackboneSpec",
    "Encoder",
    "WeightsSource",
    "available",
    "create_backbone",
    "get_backbone",
    "list_backbones",
    "register",
    "register_loader",
    "resolve_weights",
    "spec_summary",
]
