"""Orchestration across packages: the demo, and prediction on new tiles or slides (embed, then score, then draw):
``mito.app.predict.predict`` and ``mito.app.predict.predict_slides``."""

from mito.app.demo import run_demo, run_slide_demo

__all__ = ["run_demo", "run_slide_demo"]
