"""The store's errors (one line each for the user)."""

from __future__ import annotations

from mito.core.errors import MitoError


class StoreError(MitoError):
    """A store cannot be opened, written or read as asked (the message is one line for the user)."""


class LockedError(StoreError):
    """Another live process is writing the store."""
