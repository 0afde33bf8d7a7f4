"""The gpu group: the example GPU worker (examples/gpu-worker), one worker of a sync endpoint on the machine's GPU,
driven directly (its published port) and through Dockyard's gateway at 1 and 32 requests in flight: requests per
second and p50/p99 latency, the GPU named in the section.

On a machine without an NVIDIA GPU, or without the worker's image (examples/gpu-worker/build-image, which
scripts/gpu-check runs), the section says what is missing and the group counts as measured, not broken: a GPU is
a peer this machine does not have.

wrk sends GETs alone; the model answers POSTs with a JSON body. The load comes from `drive`: one Python process
with N connections, each sending its next request when the last is answered. At 32 it may bound what is measured
before the worker or the gateway does; it is the same for both paths, so the difference between them stands."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import podman
from bench.dockyard_server import START_TIMEOUT_S, Server, delete_endpoint, dockyard_server
from bench.group import Section, Settings
from bench.latency import percentile
from dockyard.client import Client
from dockyard.config import new_token

IMAGE = "localhost/dockyard-gpu-worker:latest"
WORKER_PORT = 8080
CONCURRENCY = (1, 32)
# Eight rows of the model's 64 inputs, drawn from a seeded generator by the worker itself: a small body.
REQUEST = {"seed": 1, "batch": 8}
PRODUCT_ID = "bench.gpu.1x"
ENDPOINT_NAME = "bench-gpu"
DIRECT, DOCKYARD = "direct", "Dockyard gateway"
# The worker's cold start imports PyTorch and initialises CUDA.
WORKER_START_TIMEOUT_S = max(START_TIMEOUT_S, 300.0)
HTTP_TIMEOUT_S = 30.0


def nvml_gpu() -> tuple[str | None, str]:
    """(why there is no GPU to measure on, or None; the first GPU's name as NVML gives it, or "")."""
    try:
        import pynvml
    except ImportError:
        return "no GPU: nvidia-ml-py is not installed", ""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no GPU: NVML could not be loaded ({exc})", ""
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return "no GPU: NVML lists none", ""
        return None, str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)))
    finally:
        pynvml.nvmlShutdown()


def unavailable_reason() -> tuple[str | None, str]:
    """(why this machine cannot run the group, or None; the GPU's name)."""
    missing, name = nvml_gpu()
    if missing is not None:
        return missing, name
    if subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True).returncode != 0:
        return f"no GPU worker image: {IMAGE} is missing (examples/gpu-worker/build-image makes it)", name
    return None, name


@dataclass
class Run:
    """One measured run: answers with status 200 and their latencies, failures, and the seconds it lasted."""

    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 0.5) if self.latencies_ms else 0.0

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 0.99) if self.latencies_ms else 0.0


async def _drive(url: str, headers: dict[str, str], concurrency: int, duration_s: float) -> Run:
    body = json.dumps(REQUEST).encode()
    headers = {**headers, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    run = Run(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=HTTP_TIMEOUT_S) as client:
        started = time.perf_counter()
        end = started + duration_s

        async def connection() -> None:
            while time.perf_counter() < end:
                sent = time.perf_counter()
                try:
                    answer = await client.post(url, content=body, headers=headers)
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    run.latencies_ms.append((time.perf_counter() - sent) * 1000)
                else:
                    run.errors += 1

        await asyncio.gather(*(connection() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
    return run


def drive(url: str, headers: dict[str, str], concurrency: int, duration_s: float) -> Run:
    """POST `REQUEST` to `url` on `concurrency` keep-alive connections for `duration_s` seconds."""
    return asyncio.run(_drive(url, headers, concurrency, duration_s))


def _endpoint_request() -> dict[str, Any]:
    return {
        "type": "sync",
        "name": ENDPOINT_NAME,
        "product_id": PRODUCT_ID,
        "image": IMAGE,
        "ports": [WORKER_PORT],
        "health_check": {"path": "/health", "port": WORKER_PORT},
        "worker_config": {
            "min_replicas": 1,
            "max_replicas": 1,
            # As many at once as the most connections, so the gateway queues nothing the worker could take.
            "max_concurrent_per_worker": max(CONCURRENCY),
            "request_timeout": 60,
        },
    }


def _create_product(server: Server, admin_token: str) -> None:
    """A serverless product of one of the node's GPUs, by the model Dockyard found."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=server.url, headers=admin, timeout=HTTP_TIMEOUT_S) as http:
        nodes = http.get("/admin/v1/nodes")
        nodes.raise_for_status()
        gpus = [gpu for node in nodes.json() for gpu in node["gpus"]]
        if not gpus:
            raise RuntimeError("Dockyard found no GPU on a machine where NVML lists one")
        product = {
            "id": PRODUCT_ID,
            "idc_id": "local",
            "category": "serverless",
            "gpu_model": gpus[0]["model"],
            "gpu_count": 1,
            "cpu": 4,
            "memory_mb": 16 * 1024,
        }
        http.post("/admin/v1/products", json=product).raise_for_status()


def _measure(settings: Settings, workdir: Path, runs: dict[str, list[Run]]) -> None:
    """Fill `runs` by path as they are measured, so a failure keeps the ones before it."""
    admin_token = new_token()
    with (
        podman.engine_service(workdir) as engine_url,
        # Health checks 5 s apart (the default): 36 failed ones give the worker's cold start 3 minutes.
        dockyard_server(workdir, engine_url, admin_token=admin_token, health_startup_failures="36") as server,
        Client(server.url, server.key) as client,
    ):
        _create_product(server, admin_token)
        endpoint_id = str(client.create_endpoint(_endpoint_request())["id"])
        try:
            endpoint = client.wait_for_endpoint(endpoint_id, timeout=WORKER_START_TIMEOUT_S)
            worker_id = next(w["id"] for w in endpoint["workers"] if w["status"]["status"] == "ready")
            port = podman.published_port(engine_url, worker_id, WORKER_PORT)
            targets = {
                DIRECT: (f"http://127.0.0.1:{port}/infer", {}),
                DOCKYARD: (f"{str(endpoint['url']).rstrip('/')}/infer", server.headers),
            }
            for concurrency in CONCURRENCY:
                for name, (url, headers) in targets.items():
                    drive(url, headers, concurrency, settings.warmup_s)
                    run = drive(url, headers, concurrency, settings.duration_s)
                    runs[name].append(run)
                    print(
                        f"bench:   {name}, {concurrency:>2} in flight: {run.requests_per_s:8.0f} req/s  "
                        f"p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms  errors {run.errors}",
                        flush=True,
                    )
        finally:
            delete_endpoint(client, endpoint_id)


def run(settings: Settings, workdir: Path) -> Section:
    print("bench: gpu", flush=True)
    missing, gpu = unavailable_reason()
    if missing is not None:
        print(f"bench: gpu not measured: {missing}", flush=True)
        return Section(markdown=render({}, settings, gpu, missing, ""), broken=[])
    runs: dict[str, list[Run]] = {DIRECT: [], DOCKYARD: []}
    error = ""
    try:
        _measure(settings, workdir, runs)
    except Exception as exc:  # reported in the section; the runs measured before it still count
        error = f"{type(exc).__name__}: {exc}"
        print(f"bench: gpu failed:\n{traceback.format_exc()}", flush=True)
    return Section(markdown=render(runs, settings, gpu, "", error), broken=[f"gpu: {error}"] if error else [])


def _ms(value: float) -> str:
    return f"{value:.3f}"


def render(runs: dict[str, list[Run]], settings: Settings, gpu: str, missing: str, error: str) -> str:
    """The group's section: each path's figures at each concurrency, and what the gateway adds over direct."""
    parts = [
        "## GPU",
        "",
        f"The example GPU worker (examples/gpu-worker: a seeded MLP, 64 → 1024 → 1024 → 10, in float32) on "
        f"{gpu or 'no GPU'}, one worker of a sync endpoint (`max_concurrent_per_worker` {max(CONCURRENCY)}), each "
        f"request `{json.dumps(REQUEST)}` (8 rows drawn by the worker) to `POST /infer`, reached directly (the "
        "worker's published port) and through Dockyard's gateway. The load is one Python process (httpx) with N "
        "keep-alive connections, each sending its next request when the last is answered; "
        f"{settings.duration_s:g} s measured after a {settings.warmup_s:g} s warm-up. Latencies in ms.",
        "",
    ]
    if missing:
        return "\n".join([*parts, f"not measured: {missing}", ""])
    if error:
        parts += [f"Stopped early: {error}", ""]
    measured = [(name, run) for name, path_runs in runs.items() for run in path_runs]
    if not measured:
        return "\n".join([*parts, "No run was measured.", ""])
    parts += ["| path | in flight | req/s | p50 | p99 | errors |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, run in sorted(measured, key=lambda item: (item[1].concurrency, item[0] != DIRECT)):
        parts.append(
            f"| {name} | {run.concurrency} | {run.requests_per_s:,.0f} | {_ms(run.p50_ms)} | {_ms(run.p99_ms)} "
            f"| {run.errors} |"
        )
    direct = {run.concurrency: run for run in runs.get(DIRECT, [])}
    gateway = {run.concurrency: run for run in runs.get(DOCKYARD, [])}
    both = [n for n in CONCURRENCY if n in direct and n in gateway and direct[n].latencies_ms]
    if both:
        parts += [
            "",
            "Added by the gateway over direct:",
            "",
            "| in flight | added p50 | added p99 | req/s / direct's |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for n in both:
            ratio = gateway[n].requests_per_s / direct[n].requests_per_s if direct[n].requests_per_s else 0.0
            parts.append(
                f"| {n} | {gateway[n].p50_ms - direct[n].p50_ms:+.3f} | {gateway[n].p99_ms - direct[n].p99_ms:+.3f} "
                f"| {ratio:.2f} |"
            )
    return "\n".join([*parts, ""])
