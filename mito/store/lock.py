"""One writer per store: an OS lock (``flock``) on a hidden file beside the store.

The kernel drops a ``flock`` when its holder exits, however it exits (kill -9 included), so the lock can
never go stale. The lock file also says who holds it (pid, host, start time) for the refusal line. Within
one process the lock is re-entrant (creating a store and then opening it to write takes it twice).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from mito.store.errors import LockedError

_HELD: dict[str, list[Any]] = {}  # lock file -> [open file, count] for the locks this process holds
_GUARD = threading.Lock()


def lock_path(store: str | os.PathLike) -> Path:
    """The lock file of a local store: ``.<name>.lock`` beside it (it exists before the store does)."""
    p = Path(os.path.abspath(store))
    return p.with_name(f".{p.name}.lock")


class StoreLock:
    """An exclusive, non-blocking writer lock on a local store; release it with :meth:`release`."""

    def __init__(self, store: str | os.PathLike) -> None:
        self.store = str(store)
        self.file = str(lock_path(store))
        self.held = False

    def acquire(self) -> StoreLock:
        """Take the lock, or raise LockedError naming the live holder."""
        with _GUARD:
            if self.file in _HELD:
                _HELD[self.file][1] += 1
                self.held = True
                return self
            Path(self.file).parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.file, "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = _describe(fh.read())
                fh.close()
                raise LockedError(f"{self.store} is being written by {holder}; wait for it to finish or stop it") from None
            except OSError:
                fh.close()
                raise
            try:  # who holds it, for the refusal line (best effort: a full disk must not stop the lock)
                fh.seek(0)
                fh.truncate()
                fh.write(
                    json.dumps(
                        {"pid": os.getpid(), "host": socket.gethostname(), "since": _dt.datetime.now().isoformat(timespec="seconds")}
                    )
                )
                fh.flush()
            except OSError:
                pass
            _HELD[self.file] = [fh, 1]
            self.held = True
            return self

    def release(self) -> None:
        """Give the lock back (the last release in this process unlocks the file)."""
        with _GUARD:
            if not self.held:
                return
            self.held = False
            entry = _HELD.get(self.file)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[self.file]
                fh = entry[0]
                try:
                    fh.truncate(0)
                except OSError:  # a full or read-only disk: the flock goes with the close all the same
                    pass
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                fh.close()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        since = _dt.datetime.fromisoformat(info["since"])
        when = since.strftime("%H:%M:%S") if since.date() == _dt.date.today() else since.strftime("%Y-%m-%d %H:%M:%S")
        return f"pid {info['pid']} on host {info['host']} since {when}"
    except (ValueError, KeyError, TypeError):
        return "another process"
