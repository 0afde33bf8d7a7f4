"""Latency samples the benchmark takes itself (rather than wrk): percentiles and a timed loop of calls."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in (0, 1]) of a non-empty sample: a value that was measured."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Sampler:
    """Calls `call` on a thread of its own until `stop()`, starting one every `interval_s` (back to back when a
    call takes longer), timing each call in ms; a call that raises or returns False counts as an error, not as a
    sample."""

    call: Callable[[], bool]
    interval_s: float
    samples_ms: list[float] = field(default_factory=list)
    errors: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        next_start = time.perf_counter()
        while not self._stopping.wait(max(0.0, next_start - time.perf_counter())):
            started = time.perf_counter()
            next_start = started + self.interval_s
            try:
                ok = self.call()
            except Exception:  # any failure of one call is counted; the loop goes on
                ok = False
            elapsed_ms = (time.perf_counter() - started) * 1000
            if ok:
                self.samples_ms.append(elapsed_ms)
            else:
                self.errors += 1
