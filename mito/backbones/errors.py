"""The backbone registry's error (one line for the user)."""

from __future__ import annotations

from mito.core.errors import MitoError


class BackboneError(MitoError):
    """A backbone cannot be found, loaded or given its weights (unknown name, missing or mismatched weight file)."""
