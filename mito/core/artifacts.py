"""One loader for every folder mito writes: ``load_artifact(path)`` reads the folder's kind and level
(mito.core.io.artifact_kind: its mito.json, else what an earlier mito's files say) and calls the loader that kind's
package registered. Packages register on import (heads: models and ensembles; bench: fine-tuned models, bench and
LoRA folders); ``mito.app.load_artifact`` imports them all first."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mito.core.errors import MitoError
from mito.core.io import MANIFEST, MANIFEST_FORMAT, artifact_kind, read_manifest


class ArtifactError(MitoError):
    """A folder that is not one mito wrote, or one this version cannot read."""


@dataclass(frozen=True)
class Artifact:
    """What a folder holds: its kind and level, and its manifest (empty for a folder written before manifests)."""

    path: Path
    kind: str
    level: str | None
    manifest: dict[str, Any] = field(default_factory=dict)


Loader = Callable[[Artifact], Any]
_LOADERS: dict[tuple[str, str | None], Loader] = {}


def register_loader(kind: str, level: str | None, loader: Loader) -> Loader:
    """Make ``load_artifact`` load folders of ``kind`` (at ``level``; None: any level) with ``loader(artifact)``."""
    key = (kind, level)
    if key in _LOADERS and _LOADERS[key] is not loader:
        raise ValueError(f"a loader for {kind} (level {level}) is already registered")
    _LOADERS[key] = loader
    return loader


def describe_artifact(path: str | os.PathLike) -> Artifact:
    """The kind and level of the folder at ``path``; one-line ArtifactError when mito did not write it or a newer mito did."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{path} does not exist")
    kind, level = artifact_kind(p)
    if kind is None:
        raise ArtifactError(f"{path} is not a folder mito wrote (no {MANIFEST}, and not a model, bench or LoRA folder of an earlier mito)")
    doc = read_manifest(p) or {}
    if int(doc.get("format_version", 0)) > MANIFEST_FORMAT:
        raise ArtifactError(
            f"{p / MANIFEST} has format {doc['format_version']}, newer than this mito reads ({MANIFEST_FORMAT}): update mito"
        )
    return Artifact(p, kind, level, doc)


def load_artifact(path: str | os.PathLike) -> Any:
    """What the folder at ``path`` holds, loaded by its kind's registered loader (folders with nothing to load, such as
    exports or pictures, come back as their Artifact description)."""
    art = describe_artifact(path)
    loader = _LOADERS.get((art.kind, art.level)) or _LOADERS.get((art.kind, None))
    if loader is not None:
        return loader(art)
    if art.kind in NO_LOADER:
        return art
    raise ArtifactError(f"{path} holds a {art.kind} (level {art.level}) whose loader is not imported: use mito.app.load_artifact")


NO_LOADER = ("export", "slides-qc", "heatmaps", "slide-pictures")  # output folders: their files are the result
