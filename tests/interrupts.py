"""Helpers for interrupt tests: run a real `mito` command in its own session, wait for a condition (never a fixed
sleep), signal it as a terminal (the whole process group) or a supervisor (the parent only) would, and list every
process of the session that is still alive."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def needs_proc() -> None:
    """Skip a test that lists processes through /proc."""
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to list processes")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_processes(sid: int) -> dict[int, str]:
    """{pid: command line} of every live (not zombie) process in session ``sid``."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        st = _stat(int(p.name))
        if st is None or st[0] == "Z" or int(st[3]) != sid:
            continue
        try:
            out[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 when it is gone)."""
    st = _stat(pid)
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK") if st else 0.0


@dataclass
class Run:
    """A `mito` command running in its own session, its output collected as it comes."""

    proc: subprocess.Popen
    err: list[str] = field(default_factory=list)
    out: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, cond: Callable[[], bool], timeout: float = 600, what: str = "the condition") -> None:
        """Poll ``cond`` until it holds; fail (with the output) when the command ended or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                self.finish(5)
                pytest.fail(f"the command ended (exit {self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:g} s:\n{self.stderr[-3000:]}")
            time.sleep(0.1)

    def signal(self, sig: int, group: bool) -> None:
        """Send ``sig`` to the whole process group (a terminal's Ctrl-C, `timeout`) or to the command only (`kill PID`)."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def finish(self, timeout: float) -> float:
        """Wait for the command to exit; returns the seconds it took (killing the session if it did not)."""
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_session()
            self.proc.wait()
            pytest.fail(f"the command did not exit within {timeout:g} s:\n{self.stderr[-3000:]}")
        finally:
            for t in self.threads:
                t.join(10)
        return time.monotonic() - t0

    def kill_session(self) -> None:
        """SIGKILL every process left in the command's session (test cleanup)."""
        for pid in session_processes(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def leftovers(self, grace: float = 20.0) -> dict[int, str]:
        """Processes of the session still alive ``grace`` seconds after the command exited (resource trackers exit
        once the last process holding their pipe is gone)."""
        deadline = time.monotonic() + grace
        while (left := session_processes(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


# `python -m mito ARGS` with SIGINT handled as in a terminal: a background job (CI runners, `cmd &`) inherits it
# ignored, and Python then never raises KeyboardInterrupt
MITO = "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'mito'; runpy.run_module('mito', run_name='__main__')"


def start(args: list[str], env: dict[str, str] | None = None) -> Run:
    """Start ``mito ARGS`` in a new session (its own process group), as a terminal would run it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MITO, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run = Run(proc)

    def pump(stream, into: list[str]) -> None:
        into.extend(iter(stream.readline, ""))

    run.threads = [
        threading.Thread(target=pump, args=(proc.stderr, run.err), daemon=True),
        threading.Thread(target=pump, args=(proc.stdout, run.out), daemon=True),
    ]
    for t in run.threads:
        t.start()
    return run


def assert_one_interrupted_line(err: str) -> str:
    """The command said it was interrupted in exactly one line, with no traceback and no resource-tracker warning."""
    lines = [line for line in err.splitlines() if "interrupted" in line]
    tail = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", err)[-2000:]  # without the colours and cursor moves of a live bar
    assert len(lines) == 1, tail
    assert "Traceback" not in err and "leaked" not in err and "Warning" not in err, tail
    return lines[0]
