"""The cold-start group: first-request latency of an endpoint at zero workers, its image already on the machine,
broken down into the phases Dockyard itself records on `/metrics`.

Each trial waits until the endpoint has no worker at all (the last one removed, so the reconciler has nothing
left to do), then sends one request through the gateway and times it to the answer. The phases come from the
server's per-endpoint totals, read before and after the trial (each trial adds exactly one observation to
each, so the difference is that trial's figure; a trial that adds any other count is an error, not a sample):

- decision: `dockyard_autoscaler_scale_from_zero_seconds`, the request finding no ready worker to the
  autoscaler writing the scale-up;
- container create+start: `dockyard_worker_container_start_seconds`, the worker row being inserted (wanted)
  to its container running;
- readiness detected: `dockyard_worker_cold_start_seconds` (wanted to the prober's callback for the worker's
  first good health check) less the above;
- first dispatch: `dockyard_gateway_first_dispatch_seconds`, the worker pushed ready to the waiting request
  resuming with it;
- rest: the total less all of these: the reconciler taking up the decision, the worker's answer and the way
  back to the client."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import charts, podman, serverless
from bench.dockyard_server import Server
from bench.group import Section, Settings
from bench.latency import percentile
from bench.report import target_row
from dockyard.client import Client

TRIALS = 20
IDLE_TIMEOUT_S = 1
ZERO_TIMEOUT_S = 60.0
METRICS_TIMEOUT_S = 10.0
ENDPOINT_NAME = "bench-coldstart"
CHART = "coldstart-phases.png"

DECISION = "dockyard_autoscaler_scale_from_zero_seconds"
CONTAINER = "dockyard_worker_container_start_seconds"
COLD = "dockyard_worker_cold_start_seconds"
DISPATCH = "dockyard_gateway_first_dispatch_seconds"
RECORDED = (DECISION, CONTAINER, COLD, DISPATCH)

# The targets (for a 2-core machine, the image present).
MAX_P50_S = 0.5
MAX_P95_S = 1.0
MAX_DISPATCH_P95_MS = 50.0


@dataclass(frozen=True)
class Trial:
    """One cold start, in seconds: the client's total and Dockyard's recorded figures."""

    total: float
    decision: float
    container: float
    cold: float  # wanted to ready, which holds `container`
    dispatch: float

    @property
    def ready(self) -> float:
        return self.cold - self.container

    @property
    def rest(self) -> float:
        return self.total - self.decision - self.cold - self.dispatch


# The rows of the breakdown: name, how a trial gives it, what records it.
PHASES: tuple[tuple[str, Callable[[Trial], float], str], ...] = (
    ("decision", lambda t: t.decision, f"`{DECISION}`"),
    ("container create+start", lambda t: t.container, f"`{CONTAINER}`"),
    ("readiness detected", lambda t: t.ready, f"`{COLD}` less the above"),
    ("first dispatch", lambda t: t.dispatch, f"`{DISPATCH}`"),
    ("rest: decision taken up, answer, way back", lambda t: t.rest, "total less the above"),
    ("**total** (client: request sent to answer read)", lambda t: t.total, "the client's clock"),
)


def _recorded_after(http: httpx.Client, server: Server, endpoint_id: str, before: dict[str, float]) -> dict[str, float]:
    """The endpoint's figures once each recorded phase has one more observation than in `before`; the
    worker's ready callback may commit after the answer reached the client."""
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    while True:
        after = serverless.metrics(http, server, endpoint_id)
        added = {name: after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0) for name in RECORDED}
        if all(count >= 1 for count in added.values()):
            if any(count != 1 for count in added.values()):
                raise RuntimeError(f"one cold start recorded more than one observation: {added}")
            return after
        if time.monotonic() > deadline:
            raise RuntimeError(f"Dockyard recorded no full cold start within {METRICS_TIMEOUT_S:g} s: {added}")
        time.sleep(0.05)


def _trial(client: Client, http: httpx.Client, server: Server, endpoint_id: str, url: str) -> Trial:
    serverless.wait_for_no_workers(client, endpoint_id, ZERO_TIMEOUT_S)
    before = serverless.metrics(http, server, endpoint_id)
    started = time.perf_counter()
    response = http.get(url, headers=server.headers)
    total = time.perf_counter() - started
    response.raise_for_status()
    after = _recorded_after(http, server, endpoint_id, before)

    def added(name: str) -> float:
        return after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)

    return Trial(total, added(DECISION), added(CONTAINER), added(COLD), added(DISPATCH))


def _measure(settings: Settings, workdir: Path, trials: list[Trial]) -> None:
    """Append each trial to `trials` as it is measured, so a failure keeps the ones before it."""
    request = serverless.endpoint_request(
        ENDPOINT_NAME, "", max_replicas=1, max_concurrent=1, idle_timeout_s=IDLE_TIMEOUT_S, per_worker=1
    )
    with podman.engine_service(workdir) as engine_url:
        request["image"] = podman.build_noop_image()
        with (
            serverless.server(workdir, engine_url) as server,
            serverless.endpoint(server, request) as (client, endpoint_id, url),
            httpx.Client(timeout=60.0) as http,
        ):
            if settings.warmup_s > 0:
                # The first container of the run also warms the engine's caches; it is not a sample.
                _trial(client, http, server, endpoint_id, url)
            for number in range(1, TRIALS + 1):
                trial = _trial(client, http, server, endpoint_id, url)
                trials.append(trial)
                print(
                    f"bench:   trial {number:>2}: {trial.total * 1000:7.1f} ms (decision {trial.decision * 1000:.1f}, "
                    f"container {trial.container * 1000:.1f}, ready {trial.ready * 1000:.1f}, "
                    f"dispatch {trial.dispatch * 1000:.2f}, rest {trial.rest * 1000:.1f})",
                    flush=True,
                )


def run(settings: Settings, workdir: Path) -> Section:
    print("bench: cold start", flush=True)
    trials: list[Trial] = []
    error = ""
    try:
        _measure(settings, workdir, trials)
    except Exception as exc:  # reported in the section; the trials measured before it still count
        error = f"{type(exc).__name__}: {exc}"
        print(f"bench: cold start failed:\n{traceback.format_exc()}", flush=True)
    chart = ""
    if trials:
        shown = PHASES[:-1]  # the phases, not their total
        rows = [[phase(t) * 1000 for _, phase, _ in shown] for t in trials]
        chart = charts.stacked_phases(settings.charts_dir, CHART, [name for name, _, _ in shown], rows)
    broken = [f"cold start: {error}"] if error else []
    return Section(markdown=render(trials, error, chart), broken=broken)


def _ms(value: float) -> str:
    """Milliseconds, to the microsecond below one (the hand-off is that short) and to the tenth above."""
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"


def render(trials: list[Trial], error: str, chart: str) -> str:
    """The group's section: each phase's p50 and p95 over the trials, and the issue's targets."""
    parts = [
        "## Cold start",
        "",
        f"First-request latency of a sync endpoint at zero workers (the no-op worker, {podman.NOOP_IMAGE}, "
        f"already on the machine; `min_replicas` 0, `idle_timeout` {IDLE_TIMEOUT_S} s, autoscaler tick "
        f"{serverless.AUTOSCALE_INTERVAL_S:g} s). Each of {len(trials)} trials (of {TRIALS}) waits until the "
        "endpoint lists no worker (the last one removed), then times one GET through the gateway; one untimed "
        "trial comes first. The phases are what Dockyard records on `/metrics`, read before and after each trial "
        "(one observation each per trial). Times in ms.",
        "",
    ]
    if error:
        parts += [f"Stopped early: {error}", ""]
    if not trials:
        return "\n".join([*parts, "No trial was measured."])
    parts += ["| phase | p50 | p95 | recorded by |", "| --- | ---: | ---: | --- |"]
    for name, phase, source in PHASES:
        values = [phase(t) * 1000 for t in trials]
        parts.append(f"| {name} | {_ms(percentile(values, 0.5))} | {_ms(percentile(values, 0.95))} | {source} |")
    totals = [t.total for t in trials]
    dispatch_ms = [t.dispatch * 1000 for t in trials]
    parts += [
        "",
        "The p50 and p95 of each phase are taken over the trials on their own, so they do not add up to the total's.",
        "",
        "Targets of the issue (2-core machine, image present):",
        "",
        "| figure | measured | target | met |",
        "| --- | ---: | --- | --- |",
        target_row("cold start p50 (s)", percentile(totals, 0.5), 3, False, MAX_P50_S),
        target_row("cold start p95 (s)", percentile(totals, 0.95), 3, False, MAX_P95_S),
        target_row(
            "readiness seen to first dispatch p95 (ms)", percentile(dispatch_ms, 0.95), 3, False, MAX_DISPATCH_P95_MS
        ),
        "",
    ]
    if chart:
        parts += [chart, ""]
    return "\n".join(parts)
