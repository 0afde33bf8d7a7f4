"""The gateway group: one no-op worker, driven directly and through Dockyard's gateway, nginx and Ray Serve, with
the same wrk runs at 1, 64 and 512 connections.

Order within a run: the worker container comes from Dockyard's endpoint, so Dockyard starts first; direct,
Dockyard and nginx are measured while it runs (all three hit that same container); Ray Serve, which runs its own
replica of the handler, is measured after Dockyard is gone, so neither takes CPU from the other."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import charts, podman, processes, ray_serve, wrk
from bench.dockyard_target import dockyard_gateway, standalone_gateways
from bench.group import Section, Settings
from bench.nginx_proxy import nginx_proxy
from bench.report import target_row
from bench.target import MAX_CONCURRENT_PER_WORKER, Target

CONNECTIONS = (1, 64, 512)
DIRECT, DOCKYARD, NGINX, RAY = "direct", "Dockyard gateway", "nginx", "Ray Serve"
# The scale-out path on the same machine: `dockyard gateway --workers 2`, one process per core.
GATEWAY_PROCESSES = 2
DOCKYARD_SCALED = f"Dockyard gateway, {GATEWAY_PROCESSES} processes"
# What a user gets who sets no `max_concurrent_per_worker`: the endpoint's default, one request at a time per worker
# (a GPU model server rarely serves more at once), so the gateway queues the rest in front of the worker.
DEFAULT_CONCURRENCY = 1
DOCKYARD_DEFAULT = f"Dockyard gateway, max_concurrent_per_worker {DEFAULT_CONCURRENCY} (the default)"
CHART = "gateway-latency.png"
CHART_CONNECTIONS = 64

# The targets (for a 2-core machine).
MIN_NGINX_RATIO = 0.5
MIN_RAY_RATIO = 20.0
MAX_ADDED_P50_MS = 0.2
MAX_P99_GROWTH = 10.0


@dataclass
class SystemResult:
    """A system's measurements by connection count, or why it has none (`skipped`: a peer not installed)."""

    name: str
    runs: dict[int, wrk.Measurement] = field(default_factory=dict)
    error: str = ""
    skipped: bool = False
    # CPU time per request of the system in front of the worker (µs), by connection count, where it is countable.
    cpu_us: dict[int, float] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return len(self.runs) == len(CONNECTIONS)

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs.values())

    @property
    def p99_growth(self) -> float:
        return self.runs[512].p99_ms / self.runs[1].p99_ms


def _measure(name: str, start: Callable[[], AbstractContextManager[Target]], settings: Settings) -> SystemResult:
    """Start the system, warm it up and measure it at each connection count; a failure is recorded, not raised."""
    result = SystemResult(name)
    print(f"bench: {name}", flush=True)
    try:
        with start() as target:
            for connections in CONNECTIONS:
                wrk.run(target.url, connections, settings.warmup_s, target.headers)
                session = target.cpu_session
                cpu_before = processes.cpu_seconds(session) if session is not None else 0.0
                run = wrk.run(target.url, connections, settings.duration_s, target.headers)
                result.runs[connections] = run
                if session is not None and run.requests_per_s > 0:
                    used = processes.cpu_seconds(session) - cpu_before
                    result.cpu_us[connections] = used * 1e6 / (run.requests_per_s * settings.duration_s)
                print(
                    f"bench:   {connections:>3} connections: {run.requests_per_s:>9.0f} req/s  "
                    f"p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms  errors {run.errors}",
                    flush=True,
                )
    except Exception as exc:  # any failure of one system is reported; the others still run
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"bench: {name} failed:\n{traceback.format_exc()}", flush=True)
    return result


@contextmanager
def _given(target: Target) -> Iterator[Target]:
    """A target something else keeps running (the worker, the gateway in front of it)."""
    yield target


def _measure_all(settings: Settings, workdir: Path) -> list[SystemResult]:
    results: list[SystemResult] = []
    try:
        with podman.engine_service(workdir) as engine_url:
            image = podman.build_noop_image()
            with dockyard_gateway(workdir, engine_url, image) as (gateway, worker_port, limit):
                direct = Target(f"http://127.0.0.1:{worker_port}/noop")
                results.append(_measure(DIRECT, lambda: _given(direct), settings))
                results.append(_measure(DOCKYARD, lambda: _given(gateway), settings))
                limit(DEFAULT_CONCURRENCY)
                results.append(_measure(DOCKYARD_DEFAULT, lambda: _given(gateway), settings))
                limit(MAX_CONCURRENT_PER_WORKER)
                scaled = _measure(
                    DOCKYARD_SCALED, lambda: standalone_gateways(workdir, gateway, GATEWAY_PROCESSES), settings
                )
                results.append(scaled)
                results.append(_measure(NGINX, lambda: nginx_proxy(workdir, worker_port), settings))
    except Exception as exc:  # without the worker none of the three runs: say why in the report
        print(f"bench: the Dockyard endpoint and its worker failed:\n{traceback.format_exc()}", flush=True)
        done = {result.name for result in results}
        reason = f"the Dockyard endpoint and its worker failed: {type(exc).__name__}: {exc}"
        everyone = (DIRECT, DOCKYARD, DOCKYARD_DEFAULT, DOCKYARD_SCALED, NGINX)
        results += [SystemResult(name, error=reason) for name in everyone if name not in done]
    missing = ray_serve.unavailable_reason()
    if missing is not None:
        results.append(SystemResult(RAY, error=missing, skipped=True))
    else:
        results.append(_measure(RAY, lambda: ray_serve.ray_serve(workdir), settings))
    return results


def run(settings: Settings, workdir: Path) -> Section:
    results = _measure_all(settings, workdir)
    broken = [f"{r.name}: {r.error}" for r in results if not r.measured and not r.skipped]
    return Section(markdown=render(results, settings) + _chart(results, settings), broken=broken)


def _chart(results: list[SystemResult], settings: Settings) -> str:
    """The latency distribution of each measured system at `CHART_CONNECTIONS` connections, as a chart below
    the tables ("" when no system has wrk's finer percentiles)."""
    distributions = {r.name: r.runs[CHART_CONNECTIONS].percentiles_ms for r in results if r.measured}
    distributions = {name: points for name, points in distributions.items() if points}
    if not distributions:
        return ""
    return "\n" + charts.latency_percentiles(settings.charts_dir, CHART, CHART_CONNECTIONS, distributions) + "\n"


def _ms(value: float) -> str:
    return f"{value:.3f}"


def _errors(result: SystemResult) -> str:
    non_2xx = sum(run.non_2xx for run in result.runs.values())
    socket = sum(run.socket_errors for run in result.runs.values())
    return "0" if result.errors == 0 else f"{result.errors} (non-2xx {non_2xx}, socket {socket})"


def _figures(results: list[SystemResult]) -> list[str]:
    lines = [
        "| system | req/s at 64 | CPU µs/request at 64 | p50 at 1 | p99 at 1 | p50 at 64 | p99 at 64 | p99 at 512 "
        "| p99(512) / p99(1) | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if not r.measured:
            reason = r.error.splitlines()[0] if r.error else "unknown"
            lines.append(f"| {r.name} | not measured: {reason} |" + " |" * 8)
            continue
        one, many, most = r.runs[1], r.runs[64], r.runs[512]
        cpu = f"{r.cpu_us[64]:.0f}" if 64 in r.cpu_us else "-"
        lines.append(
            f"| {r.name} | {many.requests_per_s:,.0f} | {cpu} | {_ms(one.p50_ms)} | {_ms(one.p99_ms)} "
            f"| {_ms(many.p50_ms)} | {_ms(many.p99_ms)} | {_ms(most.p99_ms)} | {r.p99_growth:.1f} | {_errors(r)} |"
        )
    return lines


def _added(results: list[SystemResult], direct: SystemResult) -> list[str]:
    lines = [
        "| in front of the worker | added p50 at 1 | added p99 at 1 | added p50 at 64 | added p99 at 64 "
        "| req/s at 64 / direct's |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if r is direct or not r.measured:
            continue
        one, many, bare_one, bare_many = r.runs[1], r.runs[64], direct.runs[1], direct.runs[64]
        added = (
            one.p50_ms - bare_one.p50_ms,
            one.p99_ms - bare_one.p99_ms,
            many.p50_ms - bare_many.p50_ms,
            many.p99_ms - bare_many.p99_ms,
        )
        share = many.requests_per_s / bare_many.requests_per_s
        lines.append(f"| {r.name} | {' | '.join(f'{a:+.3f}' for a in added)} | {share:.2f} |")
    return lines


def _targets(by_name: dict[str, SystemResult]) -> list[str]:
    lines = ["| figure (Dockyard gateway) | measured | target | met |", "| --- | ---: | --- | --- |"]
    dockyard = by_name.get(DOCKYARD)
    if dockyard is None or not dockyard.measured:
        return [*lines, "| all | not measured | | |"]

    def ratio(peer_name: str, system: SystemResult = dockyard) -> float | None:
        peer = by_name.get(peer_name)
        if peer is None or not peer.measured or not system.measured:
            return None
        return system.runs[64].requests_per_s / peer.runs[64].requests_per_s

    direct = by_name.get(DIRECT)
    added_p50 = dockyard.runs[1].p50_ms - direct.runs[1].p50_ms if direct and direct.measured else None
    scaled = by_name.get(DOCKYARD_SCALED, SystemResult(DOCKYARD_SCALED))
    return [
        *lines,
        target_row("throughput at 64 / nginx's", ratio(NGINX), 2, True, MIN_NGINX_RATIO),
        target_row("throughput at 64 / Ray Serve's", ratio(RAY), 1, True, MIN_RAY_RATIO),
        target_row(
            f"the same, {GATEWAY_PROCESSES} gateway processes / nginx's", ratio(NGINX, scaled), 2, True, MIN_NGINX_RATIO
        ),
        target_row(
            f"the same, {GATEWAY_PROCESSES} gateway processes / Ray Serve's", ratio(RAY, scaled), 1, True, MIN_RAY_RATIO
        ),
        target_row("added p50 at 1 connection (ms)", added_p50, 3, False, MAX_ADDED_P50_MS),
        target_row("p99 at 512 / p99 at 1", dockyard.p99_growth, 1, False, MAX_P99_GROWTH),
        target_row("errors (all runs)", dockyard.errors, 0, False, 0),
    ]


def render(results: list[SystemResult], settings: Settings) -> str:
    """The group's section of RESULTS.md: the figures of each system, the latency each adds over direct, and the
    issue's targets for Dockyard's gateway."""
    by_name = {r.name: r for r in results}
    direct = by_name[DIRECT]
    parts = [
        "## Gateway",
        "",
        f"One no-op worker (bench/noop_worker.py, a container of {podman.NOOP_IMAGE}, product `serverless.cpu`) "
        f"reached directly, through Dockyard's gateway (a sync endpoint with one worker, "
        f"`max_concurrent_per_worker` {MAX_CONCURRENT_PER_WORKER}, as nginx and Ray Serve put no bound there either; "
        f"the server's own gateway, then the same with the endpoint's default of {DEFAULT_CONCURRENCY}, as a `dockyard "
        f"server` started with no settings serves an endpoint created with none, then `dockyard gateway --workers "
        f"{GATEWAY_PROCESSES}` beside it), through nginx (one worker process, keep-alive "
        "upstream) and through Ray Serve (one replica of the same handler, outside the container). "
        f"Each figure is one wrk run of {settings.duration_s:g} s after a {settings.warmup_s:g} s warm-up "
        f"(wrk -t{wrk.THREADS}, GET, keep-alive); latencies in ms; 1, 64 and 512 are connections. CPU µs/request is "
        "the user and system CPU time of the proxy's processes over the run (/proc), divided by the requests it "
        "answered: the server's whole process for Dockyard (its loops included), nginx's master and worker.",
        "",
        *_figures(results),
        "",
    ]
    if direct.measured:
        parts += ["Latency added over direct (ms; negative: within noise):", "", *_added(results, direct), ""]
    parts += ["Targets of the issue (2-core machine):", "", *_targets(by_name), ""]
    parts += _bounds(by_name)
    return "\n".join(parts)


def _bounds(by_name: dict[str, SystemResult]) -> list[str]:
    """For each missed target: what the profile of the gateway shows bounds it, and what would pass it."""
    dockyard, nginx, scaled = by_name.get(DOCKYARD), by_name.get(NGINX), by_name.get(DOCKYARD_SCALED)
    if dockyard is None or not dockyard.measured:
        return []
    notes = []
    floors = [(MIN_NGINX_RATIO, by_name.get(NGINX)), (MIN_RAY_RATIO, by_name.get(RAY))]
    missed = [
        (peer, ratio)
        for ratio, peer in floors
        if peer and peer.measured and dockyard.runs[64].requests_per_s < ratio * peer.runs[64].requests_per_s
    ]
    if missed:
        scaled_ratios = (
            ", ".join(
                f"{scaled.runs[64].requests_per_s / peer.runs[64].requests_per_s:.2f} of {peer.name}'s "
                f"(target {ratio:g})"
                for peer, ratio in missed
            )
            if scaled is not None and scaled.measured
            else "not measured in this run"
        )
        notes.append(
            f"- **Throughput of one gateway process against {' and '.join(peer.name for peer, _ in missed)}.** "
            "One gateway process is one Python event loop on one core, and its CPU per request is uvicorn's own, "
            "the extra write to the worker and read of its answer, and Dockyard's path (key check, dispatcher, "
            "exchange, metrics, the upstream pool of gateway/upstream.py), Python's cost per call and per object "
            "spread thin over it (its profile is in this file's last section). What passes it is more gateway "
            "processes, each "
            f"with a core of its own (`dockyard gateway --workers N`): the row `{DOCKYARD_SCALED}` makes "
            f"{scaled_ratios}, on a machine where wrk and the worker take much of the second core."
        )
    one, most = dockyard.runs[1], dockyard.runs[512]
    if dockyard.p99_growth > MAX_P99_GROWTH:
        direct = by_name.get(DIRECT)
        peers = ", ".join(f"{r.name} {r.p99_growth:.1f}" for r in (direct, nginx) if r is not None and r.measured)
        tail = most.p99_ms / most.p50_ms
        needed = 512 / (MAX_P99_GROWTH * one.p99_ms / 1000)
        proxy_peer = (
            f", against nginx's {nginx.runs[512].requests_per_s:,.0f} at 512 connections here"
            if nginx is not None and nginx.measured
            else ""
        )
        spread = (
            f"no request waits far beyond its turn (p99 {most.p99_ms:.0f} ms against p50 {most.p50_ms:.0f} ms)"
            if tail <= 3
            else f"its tail is {tail:.1f} times its median at 512 connections: the loop also runs the server's "
            "reconcilers and autoscaler, whose passes hold it for milliseconds at a time"
        )
        notes.append(
            "- **p99 at 512 connections over p99 at 1.** At 512 connections every system here is saturated, so a "
            "request's latency is its wait behind the others: about connections / throughput by Little's law "
            f"({512 / most.requests_per_s * 1000:.0f} ms at the gateway's {most.requests_per_s:,.0f} req/s), "
            f"against a p99 at 1 connection of {one.p99_ms:.2f} ms. The same ratio for the others ({peers}) "
            f"shows the bound is the machine's throughput more than the gateway's fairness; {spread}. A ratio of "
            f"{MAX_P99_GROWTH:g} would need a p99 of {MAX_P99_GROWTH * one.p99_ms:.1f} ms at 512 connections, "
            f"about {needed:,.0f} req/s by the same law{proxy_peer}. What passes it is throughput (more gateway "
            "processes on more cores, or a stand-alone gateway without the server's loops beside it)."
        )
    if not notes:
        return []
    return ["What bounds the targets missed, and what would pass them:", "", *notes, ""]
