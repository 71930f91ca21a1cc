"""The extractor's user-facing error."""


class ExtractError(Exception):
    """Bad input for extraction (missing weights, unknown backbone, unreadable source): one line for the user."""
