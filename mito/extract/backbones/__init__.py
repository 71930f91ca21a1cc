"""Backbone registry: one spec per model, one constructor."""

from mito.extract.backbones import imagenet, pathology, vlm  # noqa: F401  (registers the specs)
from mito.extract.backbones.registry import (
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
