"""One line for the user out of a pydantic ValidationError (the first problem, where it is, what is wrong)."""

from __future__ import annotations

from pydantic import ValidationError


def one_line(e: ValidationError, as_option: bool = False) -> str:
    """``field: message`` of the first error; ``as_option`` writes the field as a CLI option (``--batch-size``)."""
    err = e.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    where = ".".join(str(x) for x in err["loc"])
    if not where:  # a check across several fields says which options itself
        return msg
    if as_option:
        where = "--" + where.replace("_", "-")
    return f"{where}: {msg}"
