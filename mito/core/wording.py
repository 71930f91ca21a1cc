"""How mito words counts for users: "1 tile", "2 tiles", "1 chunk", never "1 chunks"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun`` in the right number: counted(1, "tile") -> "1 tile", counted(3, "tile") -> "3 tiles"."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
