"""Orchestration across packages: the demo, and prediction on new tiles or slides (embed, then score, then draw):
``mito.app.predict.predict`` and ``mito.app.predict.predict_slides``."""

# imported for their loaders' registration: mito.heads (tile and slide models, ensembles, bare heads) and mito.bench
# (bench and LoRA folders; fine-tuned models: mito.bench.finetune, which mito.bench loads only on first use)
import mito.bench.finetune
import mito.heads  # noqa: F401
from mito.app.demo import run_demo, run_slide_demo
from mito.core.artifacts import Artifact, ArtifactError, describe_artifact, load_artifact

__all__ = ["Artifact", "ArtifactError", "describe_artifact", "load_artifact", "run_demo", "run_slide_demo"]
