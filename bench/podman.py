"""The container engine side of a run: a private Podman API service (as scripts/quickstart and the tests start
one), the no-op worker's image, and the removal of whatever containers the run's Dockyard left behind."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker

from bench import processes

BENCH_DIR = Path(__file__).resolve().parent
NOOP_IMAGE = "localhost/dockyard-bench-noop:latest"
BASE_IMAGE = "localhost/dockyard-python:latest"


def build_noop_image() -> str:
    """Build bench/Containerfile as `NOOP_IMAGE` and return its name. Its base, the local python image, is made by
    scripts/build-test-images (scripts/bench runs scripts/install-deps, which runs it)."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], capture_output=True).returncode != 0:
        raise RuntimeError(f"{BASE_IMAGE} is missing: run scripts/build-test-images")
    build = subprocess.run(["podman", "build", "-q", "-t", NOOP_IMAGE, str(BENCH_DIR)], capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"podman build of {NOOP_IMAGE} failed: {build.stderr[-2000:]}")
    return NOOP_IMAGE


@contextmanager
def engine_service(workdir: Path) -> Iterator[str]:
    """A `podman system service` on a socket in `workdir`, for this run only; yields its `unix://` URL."""
    socket_path = workdir / "podman.sock"
    url = f"unix://{socket_path}"
    log = workdir / "podman-service.log"
    process = processes.start(["podman", "system", "service", "--time=0", url], log)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise processes.StartFailed(f"podman system service did not start:\n{processes.log_tail(log)}")
            time.sleep(0.05)
        yield url
    finally:
        processes.stop(process)


def published_port(engine_url: str, worker_id: str, container_port: int) -> int:
    """The host port the container of Dockyard worker `worker_id` publishes `container_port` on."""
    client = docker.DockerClient(base_url=engine_url)
    try:
        containers = client.containers.list(filters={"label": f"dockyard.id={worker_id}"})
        if not containers:
            raise RuntimeError(f"no running container carries the label dockyard.id={worker_id}")
        bindings = containers[0].ports.get(f"{container_port}/tcp") or []
        if not bindings:
            raise RuntimeError(f"worker {worker_id} publishes no host port for {container_port}/tcp")
        return int(bindings[0]["HostPort"])
    finally:
        client.close()


def remove_installation_containers(engine_url: str, installation_id: str) -> list[str]:
    """Force-remove every container labelled with this run's Dockyard installation (its database is the run's
    own, so no other installation's containers carry that id), then the networks they were on; the names of
    the containers removed."""
    client = docker.DockerClient(base_url=engine_url)
    try:
        removed = []
        label = f"dockyard.installation={installation_id}"
        for container in client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
            removed.append(container.name or container.id or "?")
        # The networks' keeper pods first (they hold the networks), by their own label.
        keepers = f"dockyard.network-keeper={installation_id}"
        pods = subprocess.run(["podman", "pod", "ls", "-q", "--filter", f"label={keepers}"], capture_output=True)
        if pod_ids := pods.stdout.decode().split():
            subprocess.run(["podman", "pod", "rm", "--force", *pod_ids], capture_output=True)
        # Podman's CLI, not the compatible API, whose network list strips `isolate` from Podman's cached networks.
        networks = subprocess.run(["podman", "network", "ls", "-q", "--filter", f"label={label}"], capture_output=True)
        if names := networks.stdout.decode().split():
            subprocess.run(["podman", "network", "rm", *names], capture_output=True)
        return removed
    finally:
        client.close()
