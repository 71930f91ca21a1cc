"""The root of every error mito reports to a user as one line (the CLI turns any MitoError into one red line, exit 2)."""

from __future__ import annotations

import errno


class MitoError(Exception):
    """A problem with the user's input, data or machine that mito can name in one line; never a traceback."""


class TaskError(MitoError):
    """A task cannot be resolved on a tile table (unknown name, missing columns, too few classes)."""


class OutputError(MitoError):
    """An output path mito refuses to write (it would destroy a store, a model or a foreign folder)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the message says what the user has now (e.g. which work is kept)."""


DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError from writing or reading: what went wrong and on which file."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    what = DISK_ERRNOS.get(e.errno or -1) or e.strerror or (text if e.errno is None and text else type(e).__name__)
    where = e.filename if e.filename is not None else None
    return f"{what}: {where}" if where else what
