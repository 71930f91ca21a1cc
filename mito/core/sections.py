"""Sections shared by the job specs (mito.core.spec): each declares its keys once, with bounds and a description.

They are mixins, not nested sections: a job's spec stays flat (``store:``, ``seed:`` at the top of fit.yaml, as the
command-line options are), so library callers (``FitConfig(store=..., seed=...)``), saved model configs and
``--set seed=1`` are the same with or without a file.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

POSITIVE_DOC = (
    "Two-class tasks: the positive class of PR-AUC, ECE/Brier, ROC, reliability and DeLong (default: the minority class "
    "of the training rows)."
)


class Section(BaseModel):
    """A spec section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class StoreSection(Section):
    """The embedding store a job reads."""

    store: str = Field(description="Embedding store made by mito extract (.zarr folder or .h5 file).", examples=["runs/amibr.zarr"])


class SeedSection(Section):
    """The one seed of a job."""

    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the splits or folds, initialisation, sampling and bootstrap.")


class PositiveSection(Section):
    """The positive class of two-class metrics."""

    positive: str | None = Field(None, description=POSITIVE_DOC)


class FoldsSection(SeedSection):
    """Cross-validation folds and the bootstrap of the confidence intervals."""

    n_folds: int = Field(5, ge=2, le=100, description="Number of folds (slide-grouped, stratified).")
    n_boot: int = Field(1000, ge=0, le=1_000_000, description="Bootstrap replicates for the 95% CI (0 = none).")


class OutputSection(Section):
    """Where a job writes, and whether it may replace an earlier output."""

    out: str | None = Field(None, description="Output to write (a folder or file; see the job).")
    overwrite: bool = Field(False, description="Replace an existing output that mito wrote.")
