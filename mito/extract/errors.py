"""The extractor's user-facing error."""

from mito.core.errors import MitoError


class ExtractError(MitoError):
    """Bad input for extraction (missing weights, unknown backbone, unreadable source): one line for the user."""
