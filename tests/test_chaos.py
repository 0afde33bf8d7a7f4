"""Acceptance under faults: three `dockyard server` and two `dockyard gateway` processes on one real PostgreSQL and
real Podman, the nginx configuration of docs/load-balancing.md in front of the servers for the async workers'
webhooks. Clients send sync requests round-robin to all five processes and submit 2,000 async jobs, half with
PPIO's client to `ppio-gpus` workers and half with RunPod's to `runpod` workers, round-robin over the servers;
every 10 s for 3 minutes one process chosen at random is killed with SIGKILL and started again.

Afterwards: every job the clients were answered an id for completed with the output of its own input, each read
through the client of its SDK; no number was answered two ids; every worker row has exactly one container and no
container is left without a row; and every sync request or submission that failed was one the killed process
held when it died (tests/chaos.py keeps that ledger). A submission that failed so is made again by its client,
as a client without an idempotency key must; one that the dead server had committed before it died is a job the
client never heard of, and is counted."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from sqlalchemy import select

from dockyard.core.status import JobStatus, WorkerStatus
from dockyard.db.models import JobModel, WorkerModel
from dockyard.db.session import Database
from dockyard.runtimes.base import LABEL_ID, LABEL_INSTALLATION, LABEL_KIND
from dockyard.services.worker_runspec import CONTAINER_HOST
from tests.chaos import Ledger, Submitted, job_input, killer, read_job, submitter, sync_client
from tests.cluster import Cluster, Kind, Member, cluster_env, leader, running
from tests.nginx_front import nginx_front
from tests.pg import PostgresServer
from tests.reconcilers.test_crash import installation_of
from tests.servers import new_key, remove_installation, wait_for

# About 5 minutes: a minute to start, the 3 minutes of chaos, the jobs' end and the convergence after.
pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(900)]

SERVERS = 3
GATEWAYS = 2
JOBS_PER_SDK = 1000
KILL_EVERY = 10.0
KILLS = 18  # 3 minutes
SUBMIT_SECONDS = 150.0  # the submissions spread over most of the chaos
SYNC_CLIENTS = 4
WORKERS = 2  # per endpoint
FINISH_SECONDS = 180.0
CONVERGE_SECONDS = 90.0
SEED = int(os.environ.get("DOCKYARD_CHAOS_SEED", "15"))


def settings(front_api_port: int, front_gateway_url: str) -> dict[str, str]:
    """What every process is started with beyond the database and the engine: fast loops, a short control lease
    and job lease, and the load balancer's addresses as its public ones."""
    return {
        "LEASE_SECONDS": "3",
        "RECONCILE_INTERVAL": "0.5",
        "AUTOSCALE_INTERVAL": "0.2",
        "HEALTH_CHECK_INTERVAL": "0.5",
        "GATEWAY_SYNC_INTERVAL": "0.2",
        "GATEWAY_REPORT_INTERVAL": "0.2",
        "JOB_LEASE_SECONDS": "6",
        "JOB_MAX_ATTEMPTS": "20",
        "ZOMBIE_GRACE_SECONDS": "5",
        "MISSING_DEBOUNCE_SECONDS": "3",
        "STOP_TIMEOUT_SECONDS": "2",
        "LOG_LEVEL": "info",
        "PUBLIC_URL": f"http://127.0.0.1:{front_api_port}",
        "WORKER_WEBHOOK_URL": f"http://{CONTAINER_HOST}:{front_api_port}",
        "GATEWAY_URL": front_gateway_url,
    }


def create_endpoint(api: httpx.Client, body: dict[str, Any]) -> str:
    answer = api.post("/gpus/v2/endpoints", json=body)
    assert answer.status_code == 200, answer.text
    endpoint_id: str = answer.json()["id"]
    return endpoint_id


def async_body(name: str, image: str, envs: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "async",
        "name": name,
        "product_id": "serverless.cpu",
        "image": image,
        "envs": [{"key": key, "value": value} for key, value in envs.items()],
        "worker_config": {"min_replicas": WORKERS, "max_replicas": WORKERS, "idle_timeout": 600},
    }


async def stored(database_url: str, endpoint_ids: Sequence[str]) -> tuple[list[JobModel], list[WorkerModel]]:
    db = Database(database_url)
    try:
        async with db.read() as session:
            jobs = await session.scalars(select(JobModel).where(JobModel.endpoint_id.in_(endpoint_ids)))
            workers = await session.scalars(select(WorkerModel).where(WorkerModel.endpoint_id.in_(endpoint_ids)))
            return list(jobs), list(workers)
    finally:
        await db.dispose()


def runtime_objects(engine_url: str, installation: str) -> Counter[str]:
    """How many containers of the installation carry each row id (workers and containers alike)."""
    engine = docker.DockerClient(base_url=engine_url)
    try:
        listed = engine.containers.list(all=True, filters={"label": f"{LABEL_INSTALLATION}={installation}"})
        return Counter(c.labels.get(LABEL_ID, "") for c in listed if LABEL_KIND in c.labels)
    finally:
        engine.close()


def converged(database_url: str, engine_url: str, installation: str, endpoint_ids: Sequence[str]) -> str:
    """Empty once every endpoint runs its workers, each row READY with exactly one container and no container
    without a row; else what is not so yet."""
    _, workers = asyncio.run(stored(database_url, endpoint_ids))
    objects = runtime_objects(engine_url, installation)
    rows = {worker.id: worker.status for worker in workers}
    problems = []
    if len(rows) != WORKERS * len(endpoint_ids):
        problems.append(f"{len(rows)} worker rows for {WORKERS * len(endpoint_ids)} wanted")
    problems += [f"worker {row} is {status}" for row, status in rows.items() if status != WorkerStatus.READY]
    problems += [f"worker {row} has {objects[row]} containers" for row in rows if objects[row] != 1]
    problems += [f"orphan container of {row or 'no id'} ({count})" for row, count in objects.items() if row not in rows]
    return "; ".join(problems)


def serves(member: Member, endpoint_id: str, key: str) -> str:
    """How `member` answers a sync request now: its status code, or the error."""
    try:
        answer = httpx.post(
            f"{member.url}/{endpoint_id}/echo", content=b"x", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
    except httpx.HTTPError as error:
        return type(error).__name__
    return str(answer.status_code)


def paced(started: float) -> Callable[[int], None]:
    def pace(n: int) -> None:
        time.sleep(max(0.0, started + n * SUBMIT_SECONDS / JOBS_PER_SDK - time.monotonic()))

    return pace


def test_no_job_container_or_request_is_lost_when_processes_are_killed(
    tmp_path: Path,
    engine_url: str,
    postgres: PostgresServer | None,
    worker_images: dict[str, str],
    sdk_worker_images: dict[str, str],
) -> None:
    if postgres is None:
        pytest.skip("needs PostgreSQL: several servers share one database")
    database_url = asyncio.run(postgres.create_database())
    cluster = Cluster(tmp_path, cluster_env(database_url, engine_url))
    for _ in range(SERVERS):
        cluster.add(Kind.SERVER)
    for _ in range(GATEWAYS):
        cluster.add(Kind.GATEWAY)
    server_ports = [member.process.port for member in cluster.servers]
    gateway_ports = [member.process.port for member in cluster.gateways]
    installation = ""
    with nginx_front(tmp_path / "nginx", server_ports, gateway_ports, api_host="0.0.0.0") as front:
        cluster.set_env(settings(front.api_port, front.gateway_url))
        try:
            with running(cluster):
                installation = asyncio.run(installation_of(database_url))
                run_chaos(cluster, database_url, engine_url, installation, worker_images, sdk_worker_images)
        finally:
            if installation:
                remove_installation(engine_url, installation)


def run_chaos(
    cluster: Cluster,
    database_url: str,
    engine_url: str,
    installation: str,
    worker_images: dict[str, str],
    sdk_worker_images: dict[str, str],
) -> None:
    first = cluster.servers[0]
    key = new_key(first.url, "chaos")
    api = httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    sync_id = create_endpoint(
        api,
        {
            "type": "sync",
            "name": "chaos-sync",
            "product_id": "serverless.cpu",
            "image": worker_images["1"],
            "ports": [8080],
            "worker_config": {"min_replicas": WORKERS, "max_replicas": WORKERS, "request_timeout": 15},
        },
    )
    async_ids = {
        "ppio": create_endpoint(api, async_body("chaos-ppio", sdk_worker_images["ppio"], {"CONCURRENCY": "8"})),
        "runpod": create_endpoint(api, async_body("chaos-runpod", sdk_worker_images["runpod"], {"CONCURRENCY": "8"})),
    }
    endpoint_ids = [sync_id, *async_ids.values()]
    wait_for(
        "every worker ready",
        lambda: not converged(database_url, engine_url, installation, endpoint_ids),
        deadline=CONVERGE_SECONDS,
    )
    api.close()
    before = {member.name: serves(member, sync_id, key) for member in cluster.members}
    leader_before = leader(cluster, database_url)

    ledger = Ledger(cluster.members)
    submitted = {sdk: Submitted() for sdk in async_ids}
    stop = threading.Event()
    started = time.monotonic()
    threads = [
        threading.Thread(target=sync_client, args=(ledger, cluster.members, sync_id, key, stop), daemon=True)
        for _ in range(SYNC_CLIENTS)
    ]
    for sdk, endpoint_id in async_ids.items():
        for parity in (0, 1):
            numbers = range(parity, JOBS_PER_SDK, 2)
            arguments = (ledger, cluster.servers, sdk, endpoint_id, key, numbers, submitted[sdk], paced(started))
            threads.append(threading.Thread(target=submitter, args=arguments, daemon=True))
    for thread in threads:
        thread.start()
    killer(ledger, cluster.members, KILL_EVERY, KILLS, SEED)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client did not finish"
    chaos_seconds = time.monotonic() - started

    # Every job the clients know of ends; then each is read through its own SDK's client.
    deadline = time.monotonic() + FINISH_SECONDS
    while True:
        jobs, _ = asyncio.run(stored(database_url, list(async_ids.values())))
        open_jobs = [job for job in jobs if not JobStatus(job.status).final]
        if not open_jobs or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    servers = cluster.servers

    def read(item: tuple[int, str, int, str]) -> tuple[str, int, dict[str, Any] | str]:
        index, sdk, n, job_id = item
        try:
            return sdk, n, read_job(sdk, async_ids[sdk], job_id, key, servers[index % len(servers)].url)
        except Exception as error:  # a read that fails is a finding, reported with the rest
            return sdk, n, repr(error)

    items = [(i, sdk, n, job_id) for sdk in async_ids for i, (n, job_id) in enumerate(submitted[sdk].ids.items())]
    with ThreadPoolExecutor(8) as pool:
        reads = list(pool.map(read, items))
    jobs, _ = asyncio.run(stored(database_url, list(async_ids.values())))
    convergence = ""
    end = time.monotonic() + CONVERGE_SECONDS
    while convergence := converged(database_url, engine_url, installation, endpoint_ids):
        if time.monotonic() > end:
            break
        time.sleep(1.0)

    # The findings, all gathered before any is asserted, so that one run reports every broken invariant.
    problems: list[str] = []
    acknowledged = {job_id for sdk in async_ids for job_id in submitted[sdk].ids.values()}
    for sdk in async_ids:
        missing = set(range(JOBS_PER_SDK)) - set(submitted[sdk].ids)
        if missing:
            problems.append(f"{sdk}: {len(missing)} jobs never accepted")
    if len(acknowledged) != sum(len(submitted[sdk].ids) for sdk in async_ids):
        problems.append("one job id was answered for two submissions")
    wrong = [(sdk, n, state) for sdk, n, state in reads if not completed_with(state, job_input(sdk, n))]
    if wrong:
        problems.append(f"{len(wrong)} jobs not COMPLETED with their own input, e.g. {wrong[:3]}")
    by_id = {job.id: job for job in jobs}
    lost = acknowledged - set(by_id)
    if lost:
        problems.append(f"{len(lost)} acknowledged jobs have no row")
    unheard = [job for job in jobs if job.id not in acknowledged]
    unheard_open = [job.id for job in unheard if job.status != JobStatus.COMPLETED]
    if unheard_open:
        problems.append(f"{len(unheard_open)} jobs submitted by a dying server did not complete")
    reran = [job for job in jobs if job.attempts > 1]
    unexplained_reruns = [
        job.id
        for job in reran
        if not any(
            "lease expired" in str(r.get("outcome", "")) or "result lost" in str(r.get("outcome", ""))
            for r in job.history[:-1]
        )
    ]
    if unexplained_reruns:
        problems.append(f"{len(unexplained_reruns)} jobs ran again without a lost lease or result")
    if convergence:
        problems.append(f"not converged: {convergence}")
    problems += [
        f"{kill.member} did not start again: {kill.restart_failed}" for kill in ledger.kills if kill.restart_failed
    ]
    for kind in ("sync", "submit"):
        if unexplained := ledger.unexplained(kind):
            shown = Counter(f"{f.sent.member}: {f.what}" for f in unexplained).most_common(6)
            problems.append(f"{len(unexplained)} {kind} failures not held by a killed process: {shown}")

    print_summary(ledger, submitted, jobs, unheard, reran, before, leader_before, chaos_seconds)
    assert not problems, "\n".join(problems)


def completed_with(state: dict[str, Any] | str, expected: dict[str, Any]) -> bool:
    if not isinstance(state, dict) or state.get("status") != "COMPLETED":
        return False
    output = state.get("output")
    if isinstance(output, str):
        output = json.loads(output)
    return isinstance(output, dict) and output.get("input") == expected


def print_summary(
    ledger: Ledger,
    submitted: dict[str, Submitted],
    jobs: list[JobModel],
    unheard: list[JobModel],
    reran: list[JobModel],
    before: dict[str, str],
    leader_before: Member | None,
    chaos_seconds: float,
) -> None:
    lines = [
        f"chaos: {len(ledger.kills)} kills in {chaos_seconds:.0f} s (seed {SEED}); leader before: "
        f"{leader_before.name if leader_before else 'none'}; sync answer per process before: {before}",
        f"sync: {ledger.answered} answered in all kinds, {len(ledger.of('sync'))} sync failed "
        f"({len(ledger.unexplained('sync'))} not held by a killed process), {ledger.routed_around} sends routed around",
        f"jobs: {len(jobs)} rows, {sum(len(s.ids) for s in submitted.values())} acknowledged, "
        f"{sum(len(s.failed) for s in submitted.values())} submissions failed and were made again, "
        f"{len(unheard)} committed but never acknowledged, {len(reran)} ran more than once",
        "kill  at(s)  process     restart(s)  sync held/failed  submit held/failed",
    ]
    sync_counts, submit_counts = ledger.per_kill("sync"), ledger.per_kill("submit")
    for index, ((kill, sync_held, sync_failed), (_, sub_held, sub_failed)) in enumerate(
        zip(sync_counts, submit_counts, strict=True), 1
    ):
        lines.append(
            f"{index:4}  {kill.at:5.0f}  {kill.member:10}  {kill.restart_seconds:10.1f}  "
            f"{sync_held:4}/{sync_failed:<11}  {sub_held:4}/{sub_failed}"
        )
    failures = Counter(f"{f.sent.member}: {f.what}" for f in ledger.failures).most_common(10)
    lines.append(f"failures by process and kind: {failures}")
    print("\n".join(lines))
