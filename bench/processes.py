"""Starting and stopping the processes a benchmark run owns: each in its own session, its output in a log file,
stopped through its process group and then its session, so nothing it started outlives the run."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


class StartFailed(Exception):
    """A process exited or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it; a race with another program is possible but rare)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(command: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` in a new session, stdout and stderr into `log`, stdin closed; `env` adds to ours."""
    with log.open("ab") as output:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=log.parent,
        )


def _session_members(session: int) -> list[int]:
    """The processes of a session, from /proc (field 6 of /proc/PID/stat, after the command in parentheses)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it exited while we looked
        if int(fields[3]) == session:
            members.append(int(stat.parent.name))
    return members


def cpu_seconds(session: int) -> float:
    """The user and system CPU time the processes of `session` have used so far (fields 14 and 15 of
    /proc/PID/stat, in clock ticks); a process that exits meanwhile is left out."""
    ticks = 0
    for pid in _session_members(session):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM to the process's group, then SIGKILL to whatever is left of its session after `grace_s` (or once
    the leader is gone): a session catches what a group does not, such as Ray's actors, which make groups of
    their own. Idempotent."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    for pid in _session_members(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Return once GET `url` answers 200; `StartFailed` if `process` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartFailed(f"{process.args!r} exited with {process.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise StartFailed(f"{url} did not answer 200 within {timeout_s:g} s:\n{log_tail(log)}")
