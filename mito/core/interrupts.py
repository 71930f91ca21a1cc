"""Ctrl-C and SIGTERM: the first one stops a command cleanly, later ones cannot cut its cleanup short.

Under :func:`handle_signals` (the CLI runs every command under it) the first SIGINT or SIGTERM raises
KeyboardInterrupt in the main thread. From then on the process is on its way out: more signals are ignored,
so none can land inside the cleanup (stopping worker processes, writing finished work, removing temporary
folders, atexit handlers) and leave workers or half-written files behind. Only a signal that comes when the
cleanup has run for :data:`STUCK_S` seconds exits at once, as a last resort.

Worker processes (bench's pool) never act on these signals themselves: they start with both signals blocked
(:func:`spawning_workers`) and then ignore them (:func:`ignore_in_worker`); the parent stops them, and the
kernel kills them if the parent dies first (even by kill -9).

:func:`guard_zarr_exit` keeps zarr's exit quiet (the store and the slide reader both use zarr).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STUCK_S = 10.0  # a signal this long after the first one, while the cleanup still runs, exits at once
_state: dict[str, Any] = {"signum": None, "at": 0.0, "active": False}


def _quiet_child(signum: int, frame: Any) -> None:
    """SIGCHLD while the process cleans up: its children are waited for by their owners. (PyTorch's handler would
    raise "DataLoader worker ... killed by signal" in the middle of the cleanup when `timeout` or a process-group
    kill also reached the workers.)"""


def _handler(signum: int, frame: Any) -> None:
    if _state["signum"] is None:
        _state.update(signum=signum, at=time.monotonic())
        if hasattr(signal, "SIGCHLD"):
            signal.signal(signal.SIGCHLD, _quiet_child)
        raise KeyboardInterrupt
    if time.monotonic() - _state["at"] >= STUCK_S:  # the cleanup seems stuck: the user insists
        os._exit(128 + int(_state["signum"]))


def _ignore_at_exit() -> None:
    """Registered before the libraries' own atexit handlers, so it runs after them: an interrupted process ignores
    SIGINT and SIGTERM for the rest of its exit. (Python resets its handlers to the default while it finalizes,
    when a second Ctrl-C would otherwise kill it, signal-coded, half-way through.)"""
    if _state["signum"] is not None and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)


atexit.register(_ignore_at_exit)


def interrupted_by() -> int | None:
    """The signal that interrupted the running command (SIGINT or SIGTERM), None when none did."""
    return _state["signum"]


def exit_code() -> int:
    """128 + the interrupting signal, as a shell reports it (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(_state["signum"] or signal.SIGINT)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, the first SIGINT/SIGTERM raises KeyboardInterrupt and later ones do not interrupt the cleanup.

    A signal the process inherited as ignored (``nohup``, a background job) stays ignored. After an interrupt the
    handlers stay in place (the process is exiting: its atexit handlers must not be interrupted either); otherwise
    the previous handlers come back.
    """
    if threading.current_thread() is not threading.main_thread() or _state["active"]:
        yield  # not the main thread, or already within handle_signals
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    _state.update(signum=None, at=0.0, active=True)
    for s in SIGNALS:
        if old[s] is not signal.SIG_IGN:
            signal.signal(s, _handler)
    try:
        yield
    finally:
        if _state["signum"] is None:
            _state["active"] = False
            for s, h in old.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def spawning_workers() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while worker processes (and the threads that start more) are made.

    The workers inherit the blocked mask, so a Ctrl-C while they boot cannot kill them half-started with a
    traceback; a signal that arrives meanwhile is delivered to this process as soon as the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_in_worker(parent: int, preload: tuple[str, ...] = ()) -> None:
    """Worker-process initializer: ignore SIGINT and SIGTERM (a terminal's Ctrl-C reaches the whole process group;
    the parent decides and stops its workers), on Linux die with the parent process ``parent``, and import the
    modules ``preload`` names. loky takes a worker's memory after its first job as the reference and restarts a worker
    that grows 300 MB beyond it ("A worker stopped ... memory leak"): torch imported by a later job is such growth."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that took effect
            os._exit(1)
    for name in preload:
        importlib.import_module(name)


# The workers a parent kills cannot release the semaphores they made (numcodecs' blosc lock, made on a worker's
# first Zarr read); multiprocessing's resource tracker then unlinks them at exit, and warns. The filter goes into
# the environment of that tracker only, which mito starts before its own pool.
TRACKER_WARNING_FILTER = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


def start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (if no one has) without its leaked-semaphore warning (see above)."""
    from multiprocessing import resource_tracker

    have = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (have, TRACKER_WARNING_FILTER) if w)
    try:
        resource_tracker.ensure_running()
    finally:
        if have is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = have


_ZARR_EXIT_GUARDED = False


def guard_zarr_exit() -> None:
    """Stop zarr's I/O event loop patiently when the process exits.

    zarr 3 stops its loop thread at exit, waits 0.2 s and then closes the loop; on a loaded machine the thread has
    not stopped by then and the close raises "Cannot close a running event loop", printed as a traceback after an
    otherwise clean run. Call this after importing zarr (idempotent)."""
    global _ZARR_EXIT_GUARDED
    if _ZARR_EXIT_GUARDED:
        return
    try:
        from zarr.core import sync
    except ImportError:  # another zarr layout: leave its exit alone
        return

    def cleanup() -> None:
        loop, thread = sync.loop[0], sync.iothread[0]
        if loop is not None and thread is not None and thread.is_alive() and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        try:
            sync.cleanup_resources()
        except RuntimeError:  # the loop thread is stuck for good: the process ends anyway
            pass

    atexit.unregister(sync.cleanup_resources)
    atexit.register(cleanup)
    _ZARR_EXIT_GUARDED = True
