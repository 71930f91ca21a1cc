"""One line for the user out of a pydantic ValidationError (the first problem, where it is, what is wrong)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from mito.core.spec import error_message  # the one wording of a validation problem (spec keys, options, fields)


def one_line(e: ValidationError, as_option: bool = False) -> str:
    """``field: message`` of the first error; ``as_option`` writes the field as a CLI option (``--batch-size``)."""
    err = e.errors()[0]
    msg = error_message(err)
    where = ".".join(str(x) for x in err["loc"])
    if not where:  # a check across several fields says which options itself
        return msg
    if as_option:
        where = "--" + where.replace("_", "-")
    return f"{where}: {msg}"


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict, else an empty one (metadata of an older or damaged folder or store)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` when it is a list, else an empty one."""
    return value if isinstance(value, list) else []
