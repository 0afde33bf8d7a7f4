"""The load generator: Debian's `wrk`, run once per measurement, its `--latency` summary parsed, plus the
finer percentiles (`PERCENTILES`) that a Lua `done` hook prints from wrk's own latency histogram.

Every system is driven by the same `run()`, so the figures differ only by what sits in front of the worker."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# wrk prints times with the unit its value reads best in (`format_time_us` in wrk's units.c).
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
# A client timeout well past any p99 measured here, so a slow system shows as slow, not as errors.
TIMEOUT_S = 10
# One wrk thread: on the 2-core machine the targets are set for, a second thread would take CPU from the system
# measured, and one epoll loop drives 512 connections faster than any system here answers them (the gateway
# group's `direct` row is it driving the bare worker).
THREADS = 1
# The points of the latency distribution charted per system; `--latency` alone prints only 50, 75, 90 and 99.
PERCENTILES = (1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99)
# wrk calls `done` once after the run; `latency:percentile(p)` is in microseconds.
_LUA_PERCENTILES = ", ".join(f"{p:g}" for p in PERCENTILES)
DONE_SCRIPT = f"""\
done = function(summary, latency, requests)
  for _, p in ipairs({{{_LUA_PERCENTILES}}}) do
    io.write(string.format("percentile %g %d\\n", p, latency:percentile(p)))
  end
end
"""


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
    # (percentile, ms) at each of `PERCENTILES`; empty when wrk printed none.
    percentiles_ms: tuple[tuple[float, float], ...] = ()

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def time_ms(value: str, unit: str) -> float:
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
    points = re.findall(r"^percentile ([\d.]+) (\d+)$", output, re.MULTILINE)
    return Measurement(
        connections=connections,
        requests_per_s=float(rate.group(1)),
        p50_ms=time_ms(*p50.groups()),
        p99_ms=time_ms(*p99.groups()),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        percentiles_ms=tuple((float(p), int(us) / 1000) for p, us in points),
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
    with tempfile.TemporaryDirectory(prefix="dockyard-wrk-") as scratch:
        script = Path(scratch) / "done.lua"
        script.write_text(DONE_SCRIPT)
        done = subprocess.run(
            [*command, "-s", str(script), url], capture_output=True, text=True, timeout=duration_s + TIMEOUT_S + 30
        )
    if done.returncode != 0:
        raise WrkFailed(f"wrk exited {done.returncode}: {done.stderr or done.stdout}")
    return parse(done.stdout, connections)
