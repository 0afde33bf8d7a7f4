"""The control_plane group: the containers API of a real `dockyard server` on SQLite (bench/dockyard_server.py)
with 10,000 containers: `GET` of one, a page of 100, and `count=100` real containers from request to all running.

Running 10,000 real containers is beyond the 2-core machine the targets are set for, so the 10,000 are rows:
written through the project's models into the server's database while it runs, each a copy of what
`POST /api/v1/containers` records from the same template, except that it is `stopped`, desired `stopped` and
was never created. The reconciler leaves such a row alone (services' "stopped on request": nothing to create,
stop or remove; it is at rest, so a pass only counts it by status, as it would a real stopped container), and
the API lists and gets it like any other. The 100 containers are real: busybox containers created through the
API in one request, polled through the list until all run, then deleted through the API and waited gone."""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from bench import podman, wrk
from bench.dockyard_server import Server, dockyard_server
from bench.group import Section, Settings
from bench.report import target_row
from dockyard.client import Client
from dockyard.core.status import ContainerStatus, DesiredState
from dockyard.db.base import new_id, utcnow
from dockyard.db.models import ApiKeyModel, ContainerModel, TemplateModel
from dockyard.db.session import Database
from dockyard.secrets import hash_api_key
from dockyard.services.bootstrap import LOCAL_IDC

BUSYBOX_IMAGE = "localhost/dockyard-busybox:latest"
PRODUCT = "cpu.small"
SEEDED = 10_000
SEED_BATCH = 1_000
PAGE_SIZE = 100
RUN_COUNT = 100
RUN_NAME = "bench-run"
# A shell that ends at once on SIGTERM (as PID 1 it has no default handling), so a delete is not a stop timeout.
RUN_COMMAND = "sh -c 'trap \"exit 0\" TERM; while :; do sleep 1; done'"
# What the reconciler writes on a never-created container desired stopped; a row that says it already is left be.
STOPPED_REASON = "stopped on request"
POLL_S = 0.1
RUN_TIMEOUT_S = 300.0
# What this group needs beyond a fresh install's defaults, set explicitly (`_measure`): the bench organization holds
# the 10,000 seeded rows and the 100 real containers (each cpu.small, 1 vCPU and 1 GB: stopped rows count against
# the quotas too), past the default quotas; and the host is declared big enough to place the 100 at once (sleeping
# busyboxes), whatever this machine's cores and memory, which placement would otherwise count.
_HELD = SEEDED + RUN_COUNT

# The targets (for a 2-core machine).
MAX_GET_P99_MS = 5.0
MAX_PAGE_P99_MS = 20.0
MAX_ALL_RUNNING_S = 30.0


@dataclass
class Results:
    get_one: wrk.Measurement | None = None
    first_page: wrk.Measurement | None = None
    last_page: wrk.Measurement | None = None
    all_running_s: float | None = None
    all_gone_s: float | None = None
    broken: list[str] = field(default_factory=list)


async def _seed(database_url: str, key: str, template_id: str) -> None:
    """`SEEDED` stopped, never-created container rows of the key's organization, from the template's spec."""
    db = Database(database_url)
    try:
        async with db.read() as session:
            api_key = await session.scalar(select(ApiKeyModel).where(ApiKeyModel.key_hash == hash_api_key(key)))
            template = await session.get(TemplateModel, template_id)
        if api_key is None or template is None:
            raise RuntimeError("the bench key or template is missing from the server's database")
        # Older than anything created later, one ms apart, so the list's order is the order written.
        start = utcnow() - timedelta(hours=1)
        for first in range(0, SEEDED, SEED_BATCH):
            async with db.write() as session:
                session.add_all(
                    ContainerModel(
                        id=new_id(),
                        org_id=api_key.org_id,
                        member_id=api_key.member_id,
                        name=f"seeded-{number + 1}",
                        idc_id=LOCAL_IDC,
                        product_id=PRODUCT,
                        template_id=template.id,
                        command=RUN_COMMAND,
                        spec=template.spec,
                        desired=DesiredState.STOPPED,
                        status=ContainerStatus.STOPPED,
                        reason=STOPPED_REASON,
                        created_at=start + timedelta(milliseconds=number),
                    )
                    for number in range(first, min(first + SEED_BATCH, SEEDED))
                )
    finally:
        await db.dispose()


def _measure_reads(server: Server, settings: Settings, seeded_id: str, results: Results) -> None:
    """wrk on one connection: GET of one seeded container, the first page of 100, the last page of 100."""
    base = f"{server.url}/api/v1/containers"
    last = SEEDED // PAGE_SIZE
    runs = {
        "get_one": f"{base}/{seeded_id}",
        "first_page": f"{base}?page=1&pageSize={PAGE_SIZE}",
        "last_page": f"{base}?page={last}&pageSize={PAGE_SIZE}",
    }
    for name, url in runs.items():
        wrk.run(url, 1, settings.warmup_s, server.headers)
        measured = wrk.run(url, 1, settings.duration_s, server.headers)
        setattr(results, name, measured)
        print(f"bench:   {name}: p50 {measured.p50_ms:.3f} ms p99 {measured.p99_ms:.3f} ms", flush=True)


def _run_statuses(api: httpx.Client) -> list[str]:
    answer = api.get("/api/v1/containers", params={"name": RUN_NAME, "pageSize": RUN_COUNT + 1})
    answer.raise_for_status()
    return [str(item["status"]) for item in answer.json()["items"]]


def _until(api: httpx.Client, done: str, started: float) -> float:
    """Poll the run's containers through the list every `POLL_S` until `done` holds; the seconds since
    `started`. An `error` status stops the wait."""
    deadline = started + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        statuses = _run_statuses(api)
        if "error" in statuses:
            raise RuntimeError(f"a container failed: {statuses.count('error')} of {len(statuses)} in error")
        if (done == "running" and statuses.count("running") == RUN_COUNT) or (done == "gone" and not statuses):
            return time.monotonic() - started
        time.sleep(POLL_S)
    raise TimeoutError(f"the {RUN_COUNT} containers were not {done} within {RUN_TIMEOUT_S:g} s")


def _measure_run(server: Server, template_id: str, results: Results) -> None:
    """`count=100` containers from the POST to all running, then deleted and waited gone (always, even after a
    failure, so that none outlives the group)."""
    request = {"count": RUN_COUNT, "idc": LOCAL_IDC, "product": PRODUCT, "name": RUN_NAME, "templateId": template_id}
    ids: list[str] = []
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60.0) as api:
        try:
            started = time.monotonic()
            created = api.post("/api/v1/containers", json=request)
            created.raise_for_status()
            ids = [str(item["id"]) for item in created.json()]
            results.all_running_s = _until(api, "running", started)
            print(f"bench:   {RUN_COUNT} containers running after {results.all_running_s:.2f} s", flush=True)
        finally:
            started = time.monotonic()
            for container_id in ids:
                api.delete(f"/api/v1/containers/{container_id}").raise_for_status()
            if ids:
                results.all_gone_s = _until(api, "gone", started)
                print(f"bench:   and gone {results.all_gone_s:.2f} s after the deletes began", flush=True)


def _measure(settings: Settings, workdir: Path) -> Results:
    results = Results()
    print("bench: control plane", flush=True)
    try:
        with (
            podman.engine_service(workdir) as engine_url,
            dockyard_server(
                workdir,
                engine_url,
                quota_containers=str(_HELD),
                quota_vcpus=str(_HELD),
                quota_memory_mb=str(_HELD * 1024),
                node_cpus=str(RUN_COUNT),
                node_memory_mb=str(RUN_COUNT * 1024),
            ) as server,
        ):
            with Client(server.url, server.key) as client:
                template = {"name": "bench", "path": BUSYBOX_IMAGE, "command": RUN_COMMAND}
                template_id = str(client.create_template(template)["id"])
                asyncio.run(_seed(server.database_url, server.key, template_id))
                listed = client.list_containers(page=1, page_size=1)
                if listed["total"] != SEEDED:
                    raise RuntimeError(f"the list counts {listed['total']} containers after seeding {SEEDED}")
                seeded_id = str(listed["items"][0]["id"])
            try:
                _measure_reads(server, settings, seeded_id, results)
            except Exception as exc:  # reported in the section; the containers still run
                print(f"bench: reads failed:\n{traceback.format_exc()}", flush=True)
                results.broken.append(f"GET and list: {type(exc).__name__}: {exc}")
            try:
                _measure_run(server, template_id, results)
            except Exception as exc:  # reported in the section
                print(f"bench: {RUN_COUNT} containers failed:\n{traceback.format_exc()}", flush=True)
                results.broken.append(f"{RUN_COUNT} containers: {type(exc).__name__}: {exc}")
    except Exception as exc:  # the server, the engine or the seeding failed: nothing was measured
        print(f"bench: the Dockyard server failed:\n{traceback.format_exc()}", flush=True)
        results.broken.append(f"the Dockyard server or its {SEEDED:,} rows failed: {type(exc).__name__}: {exc}")
    return results


def run(settings: Settings, workdir: Path) -> Section:
    results = _measure(settings, workdir)
    return Section(markdown=render(results, settings), broken=results.broken)


def _row(figure: str, measured: wrk.Measurement | None) -> str:
    if measured is None:
        return f"| {figure} | n/a | n/a | n/a | |"
    return (
        f"| {figure} | {measured.p50_ms:.3f} | {measured.p99_ms:.3f} | {measured.requests_per_s:,.0f} "
        f"| {measured.errors} |"
    )


def render(results: Results, settings: Settings) -> str:
    """The group's section of RESULTS.md: how the containers were made, the figures, and the issue's targets."""
    seconds = f"{results.all_running_s:.2f}" if results.all_running_s is not None else "n/a"
    gone = f"{results.all_gone_s:.2f}" if results.all_gone_s is not None else "n/a"
    return "\n".join(
        [
            "## Control plane",
            "",
            f"A `dockyard server` on SQLite with {SEEDED:,} containers in one organization. They are rows, not "
            "containers: written through the project's models into the server's database while it runs, each "
            f"what `POST /api/v1/containers` records from the same template ({BUSYBOX_IMAGE}, product "
            f"`{PRODUCT}`), but `stopped`, desired `stopped` and never created, which the reconciler leaves as "
            "they are (a pass counts them by status, reading no row: they are at rest) and the API serves like "
            "any other container. "
            f"Each read is one wrk run (-t{wrk.THREADS}, 1 keep-alive connection) of {settings.duration_s:g} s "
            f"after a {settings.warmup_s:g} s warm-up; latencies in ms.",
            "",
            "| request | p50 | p99 | req/s | errors |",
            "| --- | ---: | ---: | ---: | --- |",
            _row("`GET /api/v1/containers/{id}`", results.get_one),
            _row(f"first page of {PAGE_SIZE} (`page=1&pageSize={PAGE_SIZE}`)", results.first_page),
            _row(f"last page of {PAGE_SIZE} (`page={SEEDED // PAGE_SIZE}`)", results.last_page),
            "",
            f"Then {RUN_COUNT} real containers ({BUSYBOX_IMAGE}, a shell that sleeps) in one "
            f"`POST /api/v1/containers` with `count` {RUN_COUNT}, on the local Podman, timed from the POST until "
            f"the list (polled every {POLL_S * 1000:g} ms) shows all {RUN_COUNT} `running`: {seconds} s. Deleted "
            f"through the API, they were all gone {gone} s after the deletes began.",
            "",
            "Targets of the issue (2-core machine):",
            "",
            "| figure | measured | target | met |",
            "| --- | ---: | --- | --- |",
            target_row(
                "`GET` one container, p99 (ms)",
                results.get_one.p99_ms if results.get_one else None,
                3,
                False,
                MAX_GET_P99_MS,
            ),
            target_row(
                f"a page of {PAGE_SIZE} of {SEEDED:,}, p99 (ms), the slower of first and last",
                max(results.first_page.p99_ms, results.last_page.p99_ms)
                if results.first_page and results.last_page
                else None,
                3,
                False,
                MAX_PAGE_P99_MS,
            ),
            target_row(f"`count={RUN_COUNT}` to all running (s)", results.all_running_s, 2, False, MAX_ALL_RUNNING_S),
            "",
        ]
    )
