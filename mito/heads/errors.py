"""The error every head raises for bad input or options (one line for the user)."""

from mito.core.errors import MitoError


class HeadError(MitoError, ValueError):
    """Bad input or options for a head (the message is one line for the user)."""
