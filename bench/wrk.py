"""The load generator: Debian's `wrk`, run once per measurement, its `--latency` summary parsed.

Every system is driven by the same `run()`, so the figures differ only by what sits in front of the worker."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

# wrk prints times with the unit its value reads best in (`format_time_us` in wrk's units.c).
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
# A client timeout well past any p99 measured here, so a slow system shows as slow, not as errors.
TIMEOUT_S = 10
# One wrk thread: on the 2-core machine the targets are set for, a second thread would take CPU from the system
# measured, and one epoll loop drives 512 connections faster than any system here answers them (it drives the
# bare worker at about 48,000 requests/s).
THREADS = 1


class WrkFailed(Exception):
    """wrk exited non-zero or printed no summary; the message holds its output."""


@dataclass(frozen=True)
class Measurement:
    """One wrk run: requests per second, latency percentiles in milliseconds, and its errors."""

    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def _time_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def parse(output: str, connections: int) -> Measurement:
    """The figures of wrk's `--latency` output. Raises `WrkFailed` when a figure it always prints is missing.
    wrk prints "Socket errors" and "Non-2xx or 3xx responses" only when there were some: absent means 0. A 3xx
    counts as a success in wrk's line; the no-op worker never answers one, so the count is of failures."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    p50 = re.search(rf"^\s+50(?:\.000)?%\s+{_TIME}", output, re.MULTILINE)
    p99 = re.search(rf"^\s+99(?:\.000)?%\s+{_TIME}", output, re.MULTILINE)
    if rate is None or p50 is None or p99 is None:
        raise WrkFailed(f"wrk printed no latency summary:\n{output}")
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Measurement(
        connections=connections,
        requests_per_s=float(rate.group(1)),
        p50_ms=_time_ms(*p50.groups()),
        p99_ms=_time_ms(*p99.groups()),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def run(url: str, connections: int, duration_s: float, headers: Mapping[str, str] | None = None) -> Measurement:
    """Drive `url` with GETs on `connections` keep-alive connections for `duration_s` seconds."""
    command = [
        "wrk",
        f"-t{THREADS}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={TIMEOUT_S}s",
        "--latency",
    ]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration_s + TIMEOUT_S + 30)
    if done.returncode != 0:
        raise WrkFailed(f"wrk exited {done.returncode}: {done.stderr or done.stdout}")
    return parse(done.stdout, connections)
