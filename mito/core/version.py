"""mito's version (recorded in every store, model folder and manifest it writes)."""

__version__ = "0.1.0"
