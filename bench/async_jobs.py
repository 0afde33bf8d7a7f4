"""The async_jobs group: durable `run` submissions per second, `status` latency while they go on, and the hand-off
of a queued job to an idle warm worker. A real `dockyard server` on SQLite (bench/dockyard_server.py).

- Submissions: wrk POSTs `run` to an async endpoint with no workers (`max_replicas` 0), so what is measured is the
  queue alone; durable submissions are counted in the database (the endpoint's `inQueue` before and after the
  measured run), not taken from wrk's answers. Meanwhile one client polls `status` of jobs submitted before,
  one call every 5 ms on one keep-alive connection, and times each call.
- Hand-off: an endpoint with one warm worker (bench/job_worker.py, long-polling job-take) gets jobs one at a
  time through `runsync`, with a pause after each so that the worker is idle and waiting when the next comes.
  Each job's `created_at` (stamped as `run` writes the row, just before its commit) is compared with Dockyard's
  `started_at` (the worker's claim, committed before job-take answers) and with the worker's own clock when it
  read the job (the container shares the host's clock)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench import podman, wrk
from bench.dockyard_server import START_TIMEOUT_S, Server, delete_endpoint, dockyard_server
from bench.group import Section, Settings
from bench.latency import Sampler, percentile
from bench.report import target_row
from dockyard.client import Client
from dockyard.db.models import JobModel
from dockyard.db.session import Database

BENCH_DIR = Path(__file__).resolve().parent
WORKER_IMAGE = "localhost/dockyard-bench-job-worker:latest"
SUBMIT_CONNECTIONS = 32
POLLED_JOBS = 100
# A client polling its jobs, not a second load generator: one `status` every 5 ms.
STATUS_INTERVAL_S = 0.005
HANDOFF_JOBS = 200
# After each hand-off the worker posts its result and goes back to job-take; this pause leaves it waiting there.
HANDOFF_PAUSE_S = 0.02
HTTP_TIMEOUT_S = 30.0
INPUT = {"prompt": "bench"}

# The targets (for a 2-core machine).
MIN_SUBMISSIONS_PER_S = 2000.0
MAX_STATUS_P99_MS = 5.0
MAX_HANDOFF_P50_MS = 5.0


@dataclass
class Submissions:
    """The measured `run` load and the `status` samples taken meanwhile."""

    durable: int = 0
    seconds: float = 0.0
    answers: wrk.Measurement | None = None
    status_ms: list[float] = field(default_factory=list)
    status_errors: int = 0

    @property
    def per_s(self) -> float:
        return self.durable / self.seconds if self.seconds else 0.0


@dataclass
class Handoffs:
    """Per job, in ms: created -> claimed (Dockyard's record) and created -> in the worker's hands."""

    claimed_ms: list[float] = field(default_factory=list)
    received_ms: list[float] = field(default_factory=list)


@dataclass
class Results:
    submissions: Submissions | None = None
    handoffs: Handoffs | None = None
    broken: list[str] = field(default_factory=list)


def build_worker_image() -> str:
    """Build bench/JobWorker.Containerfile as `WORKER_IMAGE` (on the python image scripts/build-test-images
    makes) and return its name."""
    if subprocess.run(["podman", "image", "exists", podman.BASE_IMAGE], capture_output=True).returncode != 0:
        raise RuntimeError(f"{podman.BASE_IMAGE} is missing: run scripts/build-test-images")
    command = ["podman", "build", "-q", "-f", str(BENCH_DIR / "JobWorker.Containerfile"), "-t", WORKER_IMAGE]
    build = subprocess.run([*command, str(BENCH_DIR)], capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"podman build of {WORKER_IMAGE} failed: {build.stderr[-2000:]}")
    return WORKER_IMAGE


def _endpoint(name: str, image: str, workers: int) -> dict[str, Any]:
    return {
        "type": "async",
        "name": name,
        "product_id": "serverless.cpu",
        "image": image,
        "worker_config": {"min_replicas": workers, "max_replicas": workers, "idle_timeout": 600},
    }


def _queued(api: httpx.Client, endpoint_id: str) -> int:
    answer = api.get(f"/v1/{endpoint_id}/health")
    answer.raise_for_status()
    return int(answer.json()["jobs"]["inQueue"])


def _submit(api: httpx.Client, endpoint_id: str) -> str:
    answer = api.post(f"/v1/{endpoint_id}/run", json={"input": INPUT})
    answer.raise_for_status()
    return str(answer.json()["id"])


def _wrk_post(url: str, headers: dict[str, str], duration_s: float, script: Path) -> tuple[wrk.Measurement, float]:
    """wrk's POSTs of `script` to `url`: its figures, and the seconds it ran for by its own count."""
    command = ["wrk", f"-t{wrk.THREADS}", f"-c{SUBMIT_CONNECTIONS}", f"-d{max(1, round(duration_s))}s"]
    command += [f"--timeout={wrk.TIMEOUT_S}s", "--latency", "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration_s + wrk.TIMEOUT_S + 30)
    if done.returncode != 0:
        raise wrk.WrkFailed(f"wrk exited {done.returncode}: {done.stderr or done.stdout}")
    ran = re.search(r"requests in ([\d.]+)(us|ms|s|m|h)", done.stdout)
    if ran is None:
        raise wrk.WrkFailed(f"wrk printed no duration:\n{done.stdout}")
    return wrk.parse(done.stdout, SUBMIT_CONNECTIONS), wrk.time_ms(*ran.groups()) / 1000


def measure_submissions(server: Server, settings: Settings, workdir: Path) -> Submissions:
    """wrk's `run` load on a fresh endpoint without workers, with `status` polled meanwhile (module docstring)."""
    script = workdir / "run.lua"
    body = json.dumps({"input": INPUT})
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    with Client(server.url, server.key) as client:
        endpoint_id = str(client.create_endpoint(_endpoint("bench-queue", podman.BASE_IMAGE, 0))["id"])
    url = f"{server.url}/v1/{endpoint_id}/run"
    result = Submissions()
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=HTTP_TIMEOUT_S) as api:
        polled = [_submit(api, endpoint_id) for _ in range(POLLED_JOBS)]
        _wrk_post(url, server.headers, settings.warmup_s, script)
        before = _queued(api, endpoint_id)
        turn = itertools.cycle(polled)

        def poll() -> bool:
            return api.get(f"/v1/{endpoint_id}/status/{next(turn)}").status_code == 200

        sampler = Sampler(poll, STATUS_INTERVAL_S)
        sampler.start()
        try:
            result.answers, result.seconds = _wrk_post(url, server.headers, settings.duration_s, script)
        finally:
            sampler.stop()
        time.sleep(0.5)  # a submission wrk gave up on at its end may still commit; it is counted, as it is durable
        result.durable = _queued(api, endpoint_id) - before
    result.status_ms, result.status_errors = sampler.samples_ms, sampler.errors
    print(
        f"bench:   {result.per_s:,.0f} durable run/s; status p50 {_ms(result.status_ms, 0.5)} ms "
        f"p99 {_ms(result.status_ms, 0.99)} ms",
        flush=True,
    )
    return result


async def _job_times(database_url: str, job_ids: list[str]) -> list[tuple[datetime, datetime, float]]:
    """(created_at, started_at, the worker's received_at) of each job, from the server's database."""
    db = Database(database_url)
    try:
        async with db.read() as session:
            rows = await session.scalars(select(JobModel).where(JobModel.id.in_(job_ids)))
            times = []
            for job in rows:
                if job.started_at is None or job.output is None:
                    raise RuntimeError(f"job {job.id} was not run: {job.status.value}")
                times.append((job.created_at, job.started_at, float(json.loads(job.output)["received_at"])))
            return times
    finally:
        await db.dispose()


def measure_handoffs(server: Server) -> Handoffs:
    """`HANDOFF_JOBS` jobs one at a time to an endpoint with one idle warm worker (module docstring)."""
    image = build_worker_image()
    with Client(server.url, server.key) as client:
        endpoint_id = str(client.create_endpoint(_endpoint("bench-handoff", image, 1))["id"])
        try:
            client.wait_for_endpoint(endpoint_id, timeout=START_TIMEOUT_S)
            job_ids = []
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=HTTP_TIMEOUT_S) as api:
                for _ in range(HANDOFF_JOBS):
                    answer = api.post(f"/v1/{endpoint_id}/runsync", json={"input": INPUT})
                    answer.raise_for_status()
                    if answer.json()["status"] != "COMPLETED":
                        raise RuntimeError(f"a job did not complete: {answer.json()}")
                    job_ids.append(str(answer.json()["id"]))
                    time.sleep(HANDOFF_PAUSE_S)
            # Read before the endpoint is deleted: its jobs go with it.
            times = asyncio.run(_job_times(server.database_url, job_ids))
        finally:
            delete_endpoint(client, endpoint_id)
    result = Handoffs()
    for created, started, received in times:
        result.claimed_ms.append((started - created).total_seconds() * 1000)
        result.received_ms.append((received - created.timestamp()) * 1000)
    print(
        f"bench:   hand-off p50 {_ms(result.claimed_ms, 0.5)} ms (claimed), "
        f"{_ms(result.received_ms, 0.5)} ms (at the worker)",
        flush=True,
    )
    return result


def _measure(settings: Settings, workdir: Path) -> Results:
    """Hand-off first, on an empty queue table; then the submissions. A failure of either is recorded and the
    other still runs; a server that does not start fails both."""
    results = Results()
    print("bench: async jobs", flush=True)
    try:
        with (
            podman.engine_service(workdir) as engine_url,
            # The submissions pile up in a queue no worker takes from, past the default `queued_jobs` quota (10,000):
            # the bench lifts it, so what it measures is the queue's speed, not the quota's refusals.
            dockyard_server(workdir, engine_url, for_workers=True, quota_queued_jobs=str(2**31 - 1)) as server,
        ):
            try:
                results.handoffs = measure_handoffs(server)
            except Exception as exc:  # reported in the section; the submissions still run
                print(f"bench: hand-off failed:\n{traceback.format_exc()}", flush=True)
                results.broken.append(f"hand-off: {type(exc).__name__}: {exc}")
            try:
                results.submissions = measure_submissions(server, settings, workdir)
            except Exception as exc:  # reported in the section
                print(f"bench: submissions failed:\n{traceback.format_exc()}", flush=True)
                results.broken.append(f"submissions: {type(exc).__name__}: {exc}")
    except Exception as exc:  # the server or the engine did not start: nothing was measured
        print(f"bench: the Dockyard server failed:\n{traceback.format_exc()}", flush=True)
        results.broken.append(f"the Dockyard server failed: {type(exc).__name__}: {exc}")
    return results


def run(settings: Settings, workdir: Path) -> Section:
    results = _measure(settings, workdir)
    return Section(markdown=render(results, settings), broken=results.broken)


def _ms(samples: list[float], fraction: float) -> str:
    return f"{percentile(samples, fraction):.3f}" if samples else "n/a"


def render(results: Results, settings: Settings) -> str:
    """The group's section of RESULTS.md: what was run, its figures, and the issue's targets."""
    parts = [
        "## Async jobs",
        "",
        "A `dockyard server` on SQLite (its own data dir; the local Podman through the run's own API service).",
        "",
        f"Submissions: wrk (-t{wrk.THREADS}, {SUBMIT_CONNECTIONS} keep-alive connections) POSTs `run` "
        f"(`{json.dumps({'input': INPUT})}`) to an async endpoint with `max_replicas` 0, so no "
        f"worker takes a job and the figure is the queue's: {settings.duration_s:g} s after a "
        f"{settings.warmup_s:g} s warm-up. Durable submissions are the jobs the database holds at the end less "
        "those before (the endpoint's `inQueue`), over wrk's measured seconds. Meanwhile one client (httpx, one "
        f"keep-alive connection) polls `status` of {POLLED_JOBS} jobs submitted before the run, one call every "
        f"{STATUS_INTERVAL_S * 1000:g} ms (or at once after a slower one).",
        "",
        f"Hand-off: an endpoint with one warm worker (bench/job_worker.py in a container of {WORKER_IMAGE}: "
        f"long-polls job-take, answers at once) gets {HANDOFF_JOBS} jobs through `runsync`, one at a time, with "
        f"{HANDOFF_PAUSE_S * 1000:g} ms after each so the worker is back in its long poll. From each job's "
        "`created_at` (stamped as `run` writes the row, just before its commit): to `started_at`, the claim "
        "Dockyard commits before job-take answers (what `delayTime` reports, there in whole ms); and to the "
        "worker's own clock when it read the job-take answer (a container shares the host's clock).",
        "",
        "| figure | p50 | p99 | count |",
        "| --- | ---: | ---: | ---: |",
    ]
    sub, hand = results.submissions, results.handoffs
    if sub is not None:
        answers = sub.answers
        parts += [
            f"| `run` answer latency under load (ms) | {answers.p50_ms:.3f} | {answers.p99_ms:.3f} "
            f"| {sub.durable:,} durable, {answers.errors} errors |"
            if answers is not None
            else "| `run` | n/a | n/a | |",
            f"| `status` latency meanwhile (ms) | {_ms(sub.status_ms, 0.5)} | {_ms(sub.status_ms, 0.99)} "
            f"| {len(sub.status_ms):,}, {sub.status_errors} errors |",
        ]
    if hand is not None:
        parts += [
            f"| hand-off, created -> claimed (ms) | {_ms(hand.claimed_ms, 0.5)} | {_ms(hand.claimed_ms, 0.99)} "
            f"| {len(hand.claimed_ms)} |",
            f"| hand-off, created -> at the worker (ms) | {_ms(hand.received_ms, 0.5)} "
            f"| {_ms(hand.received_ms, 0.99)} | {len(hand.received_ms)} |",
        ]
    status_p99 = percentile(sub.status_ms, 0.99) if sub is not None and sub.status_ms else None
    handoff_p50 = percentile(hand.received_ms, 0.5) if hand is not None and hand.received_ms else None
    parts += [
        "",
        "Targets of the issue (2-core machine):",
        "",
        "| figure | measured | target | met |",
        "| --- | ---: | --- | --- |",
        target_row("durable `run` submissions/s", sub.per_s if sub else None, 0, True, MIN_SUBMISSIONS_PER_S),
        target_row("`status` p99 while submitting (ms)", status_p99, 3, False, MAX_STATUS_P99_MS),
        target_row("hand-off p50, created -> at the worker (ms)", handoff_p50, 3, False, MAX_HANDOFF_P50_MS),
        "",
    ]
    notes = [
        note
        for missed, note in (
            (sub is not None and sub.per_s < MIN_SUBMISSIONS_PER_S, _SUBMISSIONS_BOUND),
            (status_p99 is not None and status_p99 > MAX_STATUS_P99_MS, _STATUS_BOUND),
            (handoff_p50 is not None and handoff_p50 > MAX_HANDOFF_P50_MS, _HANDOFF_BOUND),
        )
        if missed
    ]
    if notes:
        parts += ["What bounds the targets missed, and what would pass them:", "", *notes, ""]
    return "\n".join(parts)


# What the profiles (py-spy on the server under this group's load, their figures in RESULTS.md's last section)
# showed, for the section to state when a target is missed.
_SUBMISSIONS_BOUND = (
    "- **Submissions.** The database is not the bound: `run` calls that arrive together are committed in one "
    "write transaction (job_queue/inserts.py) that reads their endpoint once. The bound is the API process: "
    "one event loop on one core, where each `run` costs uvicorn's HTTP parsing, the key check, pydantic's "
    "validation and its share of the group commit (`run` and `status` already bypass FastAPI, "
    "api/jobs_lean.py), while wrk takes the other core. What would raise it: more API "
    "processes on one database, whose held job-takes would then be woken through the database (PostgreSQL's "
    "LISTEN/NOTIFY, or a short poll on SQLite)."
)
_STATUS_BOUND = (
    "- **`status` while submitting.** Each `status` is one point read on the event loop's own thread "
    "(db/session.py `Database.first`); its p99 is the wait for a turn of a loop that the submissions keep "
    "busy, behind the requests already in that turn. What would lower it: a second API process, so that reads "
    "and submissions stop sharing one loop."
)
_HANDOFF_BOUND = (
    "- **Hand-off.** The claim is committed soon after the job (the `claimed` row above says how soon); the rest is "
    "job-take's answer crossing to the worker's container over rootless networking and the worker reading it. "
    "What would lower it: handing the committed job to a held job-take straight from the `run` that made it, "
    "with the claim in the same group transaction."
)
