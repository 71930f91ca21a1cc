"""mito: embed pathology tiles once with frozen backbones, then train tiny heads in seconds."""

from mito.core.version import __version__

__all__ = ["__version__"]
