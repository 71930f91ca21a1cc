"""The bench's user-facing error."""

from mito.core.errors import MitoError


class BenchError(MitoError):
    """Bad input for a benchmark (unknown task or feature, too few classes, mismatched folds): one line for the user."""
