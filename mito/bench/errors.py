"""The bench's user-facing error."""


class BenchError(Exception):
    """Bad input for a benchmark (unknown task or feature, too few classes, mismatched folds): one line for the user."""
