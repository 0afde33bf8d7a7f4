"""The autoscaling group: an endpoint at zero workers takes a step of load (0 to `CLIENTS` concurrent clients,
each request held `SLEEP_MS` by the no-op worker), keeps it for the run's duration, then loses it and goes
back to zero. Measured: the time from the step to the scale-up decision and to new workers taking requests,
and the worker count and queue depth over the whole run (sampled, and charted).

Sources, sampled every `SAMPLE_S`: live workers (pending, starting or ready) from the endpoint's GET, which
lists a worker as soon as the reconciler inserts it after a scale-up; workers taking requests, queue depth and
requests in flight from the gateway's `/metrics` gauges (`dockyard_gateway_ready_workers`, `_queue_depth`,
`_in_flight`). The first decision also comes exact from
`dockyard_autoscaler_scale_from_zero_seconds`; the others are seen by sampling, so within `SAMPLE_S`."""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import charts, podman, serverless
from bench.dockyard_server import Server
from bench.group import Section, Settings
from bench.latency import percentile
from bench.report import target_row

CLIENTS = 8
SLEEP_MS = 200
MAX_REPLICAS = 4
PER_WORKER = 2  # the concurrency policy's value, and each worker's slots: CLIENTS fill MAX_REPLICAS exactly
IDLE_TIMEOUT_S = 2
SAMPLE_S = 0.1
BEFORE_S = 1.0
MIN_STEP_S = 5.0
ZERO_TIMEOUT_S = 90.0
ENDPOINT_NAME = "bench-autoscale"
CHART = "autoscale-timeline.png"
DECISION = "dockyard_autoscaler_scale_from_zero_seconds"

# The target (2-core machine).
MAX_DECISION_S = 1.0


@dataclass(frozen=True)
class Sample:
    """The endpoint at `at` seconds from the start of sampling."""

    at: float
    live: int
    ready: int
    queued: int
    in_flight: int


@dataclass
class Run:
    """Everything one load step gave: the samples, when the load started and stopped (seconds on the samples'
    clock), each request's latency, the failed requests, and the exact first decision (None: not recorded)."""

    samples: list[Sample] = field(default_factory=list)
    step_at: float = 0.0
    stop_at: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_decision_s: float | None = None

    def first(self, predicate: str, at_least: int) -> float | None:
        """Seconds from the step to the first sample after it whose `predicate` figure is >= `at_least`."""
        for sample in self.samples:
            if sample.at >= self.step_at and getattr(sample, predicate) >= at_least:
                return sample.at - self.step_at
        return None

    @property
    def back_to_zero(self) -> float | None:
        """Seconds from the load stopping to the first sample with no live worker."""
        for sample in self.samples:
            if sample.at >= self.stop_at and sample.live == 0:
                return sample.at - self.stop_at
        return None


async def _sample(http: httpx.AsyncClient, server: Server, endpoint_id: str, started: float) -> Sample:
    figures_page = await http.get(f"{server.url}/metrics", headers=server.metrics_headers)
    endpoint = await http.get(f"{server.url}/gpus/v2/endpoints/{endpoint_id}", headers=server.headers)
    figures_page.raise_for_status()
    endpoint.raise_for_status()
    figures = serverless.parse_metrics(figures_page.text, endpoint_id)
    return Sample(
        at=time.perf_counter() - started,
        live=serverless.live_workers(endpoint.json()),
        ready=int(figures.get("dockyard_gateway_ready_workers", 0)),
        queued=int(figures.get("dockyard_gateway_queue_depth", 0)),
        in_flight=int(figures.get("dockyard_gateway_in_flight", 0)),
    )


async def _client(http: httpx.AsyncClient, url: str, headers: dict[str, str], stop: asyncio.Event, run: Run) -> None:
    """One client: a request at a time, back to back, until `stop`."""
    while not stop.is_set():
        sent = time.perf_counter()
        try:
            response = await http.get(url, params={"sleep_ms": SLEEP_MS}, headers=headers)
        except httpx.HTTPError:
            run.errors += 1
            continue
        if response.status_code == 200:
            run.latencies_ms.append((time.perf_counter() - sent) * 1000)
        else:
            run.errors += 1


async def _step(server: Server, endpoint_id: str, url: str, load_s: float, run: Run) -> None:
    """Sample throughout; start the clients `BEFORE_S` in, stop them `load_s` later, and keep sampling until
    the endpoint is back to zero live workers (or `ZERO_TIMEOUT_S` after the stop)."""
    limits = httpx.Limits(max_connections=CLIENTS + 4)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as http:
        started = time.perf_counter()
        stop = asyncio.Event()
        clients: list[asyncio.Task[None]] = []
        try:
            while True:
                sample = await _sample(http, server, endpoint_id, started)
                run.samples.append(sample)
                if not clients and sample.at >= BEFORE_S:
                    run.step_at = time.perf_counter() - started
                    clients = [
                        asyncio.create_task(_client(http, url, server.headers, stop, run)) for _ in range(CLIENTS)
                    ]
                elif clients and not stop.is_set() and sample.at >= run.step_at + load_s:
                    stop.set()
                    await asyncio.gather(*clients)
                    run.stop_at = time.perf_counter() - started
                elif stop.is_set() and (sample.live == 0 or sample.at > run.stop_at + ZERO_TIMEOUT_S):
                    break
                await asyncio.sleep(max(0.0, SAMPLE_S - (time.perf_counter() - started - sample.at)))
        finally:
            stop.set()
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
        after = serverless.parse_metrics(
            (await http.get(f"{server.url}/metrics", headers=server.metrics_headers)).text, endpoint_id
        )
        if after.get(f"{DECISION}_count") == 1:
            run.first_decision_s = after[f"{DECISION}_sum"]


def _measure(settings: Settings, workdir: Path, run: Run) -> None:
    with podman.engine_service(workdir) as engine_url:
        request = serverless.endpoint_request(
            ENDPOINT_NAME,
            podman.build_noop_image(),
            max_replicas=MAX_REPLICAS,
            max_concurrent=PER_WORKER,
            idle_timeout_s=IDLE_TIMEOUT_S,
            per_worker=PER_WORKER,
        )
        with (
            serverless.server(workdir, engine_url) as server,
            serverless.endpoint(server, request) as (_, eid, url),
        ):
            asyncio.run(_step(server, eid, url, max(settings.duration_s, MIN_STEP_S), run))


def run(settings: Settings, workdir: Path) -> Section:
    print("bench: autoscaling", flush=True)
    result = Run()
    error = ""
    try:
        _measure(settings, workdir, result)
    except Exception as exc:  # reported in the section with whatever was sampled before it
        error = f"{type(exc).__name__}: {exc}"
        print(f"bench: autoscaling failed:\n{traceback.format_exc()}", flush=True)
    chart = _chart(result, settings) if result.samples else ""
    return Section(markdown=render(result, error, chart), broken=[f"autoscaling: {error}"] if error else [])


def _chart(result: Run, settings: Settings) -> str:
    samples = result.samples
    marks = {"load on": result.step_at}
    if result.stop_at:
        marks["load off"] = result.stop_at
    return charts.timeline(
        settings.charts_dir,
        CHART,
        [s.at for s in samples],
        {
            "live workers (endpoint GET)": [s.live for s in samples],
            "workers taking requests (gateway)": [s.ready for s in samples],
        },
        {"queue depth": [s.queued for s in samples], "in flight": [s.in_flight for s in samples]},
        marks,
    )


def _s(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.2f}"


def render(result: Run, error: str, chart: str) -> str:
    """The group's section: the reaction times, the requests' figures, the target and the chart."""
    load_s = result.stop_at - result.step_at if result.stop_at else 0.0
    parts = [
        "## Autoscaling",
        "",
        f"A sync endpoint of the no-op worker at zero workers (`min_replicas` 0, `max_replicas` {MAX_REPLICAS}, "
        f"policy concurrency {PER_WORKER}, `max_concurrent_per_worker` {PER_WORKER}, `idle_timeout` "
        f"{IDLE_TIMEOUT_S} s, autoscaler tick {serverless.AUTOSCALE_INTERVAL_S:g} s). A load step from 0 to "
        f"{CLIENTS} clients, each sending one request at a time held {SLEEP_MS} ms by the worker "
        f"(`?sleep_ms={SLEEP_MS}`), for {load_s:.1f} s, then none until the endpoint is back to zero. Sampled "
        f"every {SAMPLE_S:g} s: live workers (pending, starting, ready) from the endpoint's GET; workers taking "
        "requests, queue depth and in flight from the gateway's `/metrics` gauges. Times in seconds from the "
        "step (back to zero: from the load stopping); sampled figures are within the sampling interval.",
        "",
    ]
    if error:
        parts += [f"Stopped early: {error}", ""]
    if not result.samples:
        return "\n".join([*parts, "Nothing was sampled."])
    latencies = result.latencies_ms
    parts += [
        "| figure | seconds | source |",
        "| --- | ---: | --- |",
        f"| scale-up decision (from zero) | {_s(result.first_decision_s)} | `{DECISION}` |",
        f"| first worker listed | {_s(result.first('live', 1))} | endpoint GET |",
        f"| {MAX_REPLICAS} workers listed | {_s(result.first('live', MAX_REPLICAS))} | endpoint GET |",
        f"| first worker taking requests | {_s(result.first('ready', 1))} | `dockyard_gateway_ready_workers` |",
        f"| {MAX_REPLICAS} workers taking requests | {_s(result.first('ready', MAX_REPLICAS))} "
        "| `dockyard_gateway_ready_workers` |",
        f"| back to zero after the load stopped | {_s(result.back_to_zero)} | endpoint GET |",
        "",
    ]
    if latencies:
        parts += [
            f"Requests: {len(latencies)} answered, {result.errors} failed; latency p50 "
            f"{percentile(latencies, 0.5):.0f} ms, p95 {percentile(latencies, 0.95):.0f} ms, max "
            f"{max(latencies):.0f} ms (each holds {SLEEP_MS} ms at the worker).",
            "",
        ]
    parts += [
        "Target of the issue (2-core machine):",
        "",
        "| figure | measured | target | met |",
        "| --- | ---: | --- | --- |",
        target_row("scale-up decision after the load step (s)", result.first_decision_s, 2, False, MAX_DECISION_S),
        "",
    ]
    if chart:
        parts += [chart, ""]
    return "\n".join(parts)
