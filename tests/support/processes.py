"""Processes a test starts: a free port, a process in its own session, stopping its process group, waiting for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

# How to stop a process: (signal, to its whole process group?, seconds to wait) in turn; SIGKILL to the group last.
Steps = Sequence[tuple[signal.Signals, bool, float]]
STOP_GROUP: Steps = ((signal.SIGTERM, True, 3.0),)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_in_own_session(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its children share its process group: stop_process_group stops them all),
    its output to ``log``, nothing on its stdin."""
    with log.open("wb") as f:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_process_group(proc: subprocess.Popen, steps: Steps = STOP_GROUP, kill_wait: float = 10.0) -> None:
    """Stop ``proc`` (started by start_in_own_session) and its process group: each step sends its signal and waits
    up to its seconds for the process and its group to be gone; then SIGKILL to the group, ``kill_wait`` s."""
    for sig, whole_group, seconds in [*steps, (signal.SIGKILL, True, kill_wait)]:
        if proc.poll() is not None and _group_gone(proc.pid):
            return
        try:
            if whole_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None and _group_gone(proc.pid):
                return
            time.sleep(0.2)
    proc.wait(timeout=1)


def wait_until(what: str, ready: Callable[[], T], seconds: float, alive: subprocess.Popen | None = None,
               log: Path | None = None) -> T:
    """Poll ``ready()`` until it returns something truthy (returned; an OSError counts as not yet); fail the test
    after ``seconds``, or as soon as the process ``alive`` exits, with the end of ``log``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = ready()
        except OSError:
            value = None
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"{what}: process exited with {alive.returncode}\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {seconds} s\n{log.read_text()[-3000:] if log else ''}")
