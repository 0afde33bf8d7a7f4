"""What a benchmark drives: a URL and the headers every request carries."""

from __future__ import annotations

from dataclasses import dataclass, field

# Concurrency is what is measured: each system may hand its one worker (or replica) as many requests at once as
# the largest run has connections, as nginx does, so none of them queues in front of a worker that could answer.
MAX_CONCURRENT_PER_WORKER = 1024


@dataclass(frozen=True)
class Target:
    """`url` is requested with GET, with `headers`, by the load generator. `cpu_session`: the session (as started
    by bench/processes.py) whose processes are the system in front of the worker, so that a run counts their CPU
    time per request; None where the system is not one such session (the bare worker, Ray Serve)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    cpu_session: int | None = None
