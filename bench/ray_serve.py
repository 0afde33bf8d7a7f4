"""Ray Serve (`ray[serve]`) in front of the same no-op handler: bench/ray_app.py in its own process group."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import processes
from bench.target import Target

START_TIMEOUT_S = 180.0
ROOT = Path(__file__).resolve().parent.parent


def unavailable_reason() -> str | None:
    """Why Ray Serve cannot run here (not installed), or None when it can be tried."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        return 'ray[serve] is not installed (scripts/bench installs it with pip install "ray[serve]")'
    return None


@contextmanager
def ray_serve(workdir: Path) -> Iterator[Target]:
    """Start Ray with the no-op deployment on a free port; yield it once it answers; stop Ray on exit."""
    port = processes.free_port()
    log = workdir / "ray.log"
    # The replica process imports bench.ray_app and bench.noop_worker: the project root must be on its path.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = processes.start([sys.executable, "-m", "bench.ray_app", str(port)], log, env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready" not in processes.log_tail(log, 200).splitlines():
            if process.poll() is not None or time.monotonic() > deadline:
                raise processes.StartFailed(f"Ray Serve did not start:\n{processes.log_tail(log, 40)}")
            time.sleep(0.5)
        processes.wait_http(f"http://127.0.0.1:{port}/", process, log, 30.0)
        yield Target(f"http://127.0.0.1:{port}/noop")
    finally:
        processes.stop(process, grace_s=30.0)
