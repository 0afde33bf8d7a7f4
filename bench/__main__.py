"""`python -m bench [--duration S] [--warmup S] [--only GROUP ...]`: run the benchmark groups (all by default) and
rewrite bench/RESULTS.md.

Exit status: 0 once RESULTS.md is written with every system measured (a peer that is not installed is noted
there instead); 1 when something could not be measured for another reason (it says why). Timings never change it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.group import Section, Settings

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# Each names a module of this package with `run(settings, workdir) -> Section`, in the order RESULTS.md shows them.
GROUPS = ("gateway", "coldstart", "autoscale", "async_jobs", "control_plane", "multi_server", "gpu")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of the warm-up run before each")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the results file to rewrite")
    parser.add_argument(
        "--only", action="append", choices=GROUPS, metavar="GROUP", help=f"run only this group (repeatable): {GROUPS}"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like an error, so every server, container and proxy the run started is stopped and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings(duration_s=args.duration, warmup_s=args.warmup, charts_dir=args.output.resolve().parent)
    # scripts/bench names itself; run as a module, the command is this one.
    command = os.environ.get("DOCKYARD_BENCH_COMMAND") or shlex.join(["python", "-m", "bench", *argv])
    started, load_at_start = datetime.now(UTC), report.load_average()
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as workdir:
        for name in args.only or GROUPS:
            group_dir = Path(workdir) / name
            group_dir.mkdir()
            sections.append(importlib.import_module(f"bench.{name}").run(settings, group_dir))
    report.write(args.output, command, started, load_at_start, sections)
    print(f"bench: wrote {args.output}")
    broken = [line for section in sections for line in section.broken]
    for line in broken:
        print(f"bench: not measured: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
