"""bench/RESULTS.md: the machine, the date, the exact command, then each group's section, rewritten by every run
so that they describe one run; then the section `KEPT_HEADING`, which every run keeps as it is: the profiles and
one-off measurements the code's design rests on, each saying how and when it was measured, so that no figure
needs to sit in a docstring."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from bench.group import Section

KEPT_HEADING = "## Measurements behind the code"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    found = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


def _memory_gib() -> str:
    found = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return f"{int(found.group(1)) / 1024 / 1024:.1f} GiB" if found else "unknown"


def _os_name() -> str:
    found = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.MULTILINE)
    return f"{found.group(1) if found else platform.system()}, kernel {platform.release()}"


def _version(command: list[str]) -> str:
    """The first line a tool prints about its version, or why there is none."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not available ({exc})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _python_package(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine shows as noise, above all in p99."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def machine() -> list[str]:
    """What the machine is, as report lines."""
    return [
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores",
        f"- memory: {_memory_gib()}",
        f"- OS: {_os_name()}",
        f"- Python {platform.python_version()}; dockyard {_python_package('dockyard')}; ray {_python_package('ray')}",
        f"- {_version(['wrk', '-v'])}; {_version(['nginx', '-v'])}; {_version(['podman', '--version'])}",
    ]


def _kept(path: Path) -> list[str]:
    """The section of `path` from `KEPT_HEADING` to its end, as the lines to write again; none if it has none."""
    text = _read(str(path))
    start = text.find(f"\n{KEPT_HEADING}\n")
    return [text[start + 1 :].rstrip(), ""] if start >= 0 else []


def write(path: Path, command: str, started: datetime, load_at_start: str, sections: list[Section]) -> None:
    kept = _kept(path)
    text = [
        "# Benchmark results",
        "",
        "Written by the last run of the command below; every run rewrites this file but its last section. "
        "Benchmarks are not tests: a missed target is reported here, never a failure.",
        "",
        f"- date: {started.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}`",
        *machine(),
        f"- load average (1, 5, 15 min) when the run started: {load_at_start}; when it ended: {load_average()}",
        "",
        "How to read: req/s is throughput (higher is better); latencies are wrk's percentiles in milliseconds "
        "(lower is better); 'added' is a system's latency minus the bare worker's at the same percentile and "
        "connection count; errors are non-2xx answers plus socket errors (connect, read, write, timeout).",
        "",
    ]
    for section in sections:
        text += [section.markdown.rstrip(), ""]
        if section.broken:
            text += ["Not measured because of a failure:", "", *(f"- {line}" for line in section.broken), ""]
    text += kept
    path.write_text("\n".join(text).rstrip() + "\n")


def target_row(figure: str, value: float | None, digits: int, at_least: bool, bound: float) -> str:
    """A row of the targets table: `value` shown with `digits` decimals, met when at least (or at most) `bound`."""
    target = f"{'>=' if at_least else '<='} {bound:g}"
    if value is None:
        return f"| {figure} | n/a | {target} | n/a |"
    met = value >= bound if at_least else value <= bound
    return f"| {figure} | {value:.{digits}f} | {target} | {'yes' if met else '**no**'} |"
