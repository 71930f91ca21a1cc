"""mito: embed pathology tiles once with frozen backbones, then train tiny heads in seconds."""

__version__ = "0.1.0"
