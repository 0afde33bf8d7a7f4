"""Fixtures for tests against a real container engine: a private Podman API service for the session
and the locally built test images (scripts/build-test-images makes them; no registry is reachable).

A test that needs the engine takes `engine_url`; where Podman is missing it is skipped with that reason,
and runs wherever Podman is installed (CI installs it)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from tests.live import free_port

ROOT = Path(__file__).resolve().parent.parent
BUSYBOX_IMAGE = "localhost/dockyard-busybox:latest"
PYTHON_IMAGE = "localhost/dockyard-python:latest"


def _image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], capture_output=True).returncode == 0


def _ensure_image(name: str) -> None:
    if not _image_exists(name):
        subprocess.run([str(ROOT / "scripts" / "build-test-images")], check=True)
    if not _image_exists(name):
        pytest.fail(f"test image {name} is missing and scripts/build-test-images did not make it")


def _stop(process: subprocess.Popen[bytes], directory: Path) -> None:
    """End a server this module started, then remove its directory."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def podman_service(env: dict[str, str] | None = None) -> Iterator[str]:
    """`unix://...` of a Podman API service of its own, with `env` added to its environment (the session's
    service gets none; `private_registry`'s gets the registries.conf that trusts the test registry)."""
    if shutil.which("podman") is None:
        pytest.skip("needs Podman (apt-get install podman runc; scripts/install-deps does it)")
    directory = Path(tempfile.mkdtemp(prefix="dockyard-engine-"))
    socket_path = directory / "podman.sock"
    url = f"unix://{socket_path}"
    # conmon inherits the service's working directory and, on cgroup v1, drops an `oom` marker file there
    # when a container is OOM-killed: keep it in the session's directory, not the project.
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        cwd=directory,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "service.log", "wb"),  # noqa: SIM115 - lives as long as the service
    )
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"podman system service did not start: {(directory / 'service.log').read_text()}")
        time.sleep(0.05)
    try:
        yield url
    finally:
        _stop(process, directory)


@pytest.fixture(scope="session")
def engine_url() -> Iterator[str]:
    """`unix://...` of a Podman API service started for this test session."""
    with podman_service() as url:
        os.environ.setdefault("DOCKYARD_TEST_ENGINE_URL", url)
        yield url


@pytest.fixture
def docker_client(engine_url: str) -> Iterator[docker.DockerClient]:
    """A docker SDK client of the session's engine, to look at or tamper with what Dockyard made."""
    client = docker.DockerClient(base_url=engine_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(engine_url: str) -> str:
    """A 2 MB image of Debian's busybox-static: sh, httpd, sleep, nc."""
    _ensure_image(BUSYBOX_IMAGE)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def python_image(engine_url: str) -> str:
    """A Debian minbase root with python3 (debootstrap, built once per machine)."""
    _ensure_image(PYTHON_IMAGE)
    return PYTHON_IMAGE


def remove_networks(installation_id: str) -> None:
    """Remove the networks an installation's runtime made (after its containers, which hold them). Through
    Podman's CLI: the Docker-compatible API's network list strips `isolate` from Podman's cached networks
    before Podman 5.1 (see dockyard.runtimes.engine_networks)."""
    keepers = subprocess.run(
        ["podman", "pod", "ls", "-q", "--filter", f"label=dockyard.network-keeper={installation_id}"],
        check=True,
        capture_output=True,
        text=True,
    )
    if pods := keepers.stdout.split():  # the networks' keepers hold them (dockyard.runtimes.engine_keepers)
        subprocess.run(["podman", "pod", "rm", "--force", *pods], check=True, capture_output=True)
    listed = subprocess.run(
        ["podman", "network", "ls", "-q", "--filter", f"label=dockyard.installation={installation_id}"],
        check=True,
        capture_output=True,
        text=True,
    )
    for name in listed.stdout.split():
        # --force removes whatever is still on the network too: once, after the SIGKILL test had removed every
        # labelled container, Podman still counted one on it ("has associated containers"). The network is this
        # installation's own, so nothing of another test's is on it.
        removed = subprocess.run(["podman", "network", "rm", "--force", name], capture_output=True, text=True)
        # A server still running may have removed it meanwhile, as it removes networks nothing is on.
        if removed.returncode != 0 and "network not found" not in removed.stderr:
            pytest.fail(f"podman network rm {name} failed: {removed.stderr}")


def network_of(container: Container) -> tuple[str, dict[str, Any]]:
    """The one network `container` is on: its name and the engine's settings for it (`IPAddress`, `Gateway`)."""
    container.reload()
    ((name, settings),) = container.attrs["NetworkSettings"]["Networks"].items()
    return name, settings


# Bounds every probe: a connection that is dropped times out instead of hanging the test.
PROBE_SECONDS = 5


def http_probe(container: Container, host: str, port: int, path: str = "/") -> tuple[int, str]:
    """From inside `container` (busybox), `GET path` from host:port over a plain TCP connection: the exit code
    and what came back. A refused or dropped connection gives a non-zero code and no HTTP status line."""
    request = f"GET {path} HTTP/1.0\\r\\n\\r\\n"
    script = f"printf '{request}' | timeout {PROBE_SECONDS} nc -w {PROBE_SECONDS - 2} {host} {port}"
    code, output = container.exec_run(["sh", "-c", script])
    return int(code), output.decode(errors="replace")


def answered(probe: tuple[int, str]) -> bool:
    """Whether an HTTP server answered the probe."""
    return "HTTP/1." in probe[1]


WORKER_IMAGE = "localhost/dockyard-worker"


@pytest.fixture(scope="session")
def worker_images(python_image: str) -> dict[str, str]:
    """The example endpoint worker (examples/worker) as two images that differ only in the version they
    report: {"1": "localhost/dockyard-worker:1", "2": "...:2"}. Rebuilt every session (a build of one COPY takes
    under a second), so a change to worker.py is always in the image."""
    images = {}
    for version in ("1", "2"):
        image = f"{WORKER_IMAGE}:{version}"
        subprocess.run(
            [
                "podman",
                "build",
                "-q",
                "--no-cache",
                "--build-arg",
                f"VERSION={version}",
                "-t",
                image,
                str(ROOT / "examples/worker"),
            ],
            check=True,
            capture_output=True,
        )
        images[version] = image
    return images


SDK_WORKERS = {"ppio": ("ppio-gpus", "0.0.2"), "runpod": ("runpod", "1.12.0"), "novita": ("novita-gpus", "0.0.1")}
"""The example worker of each official SDK: its directory under examples/ (`{name}-worker`) and its pinned
package on PyPI."""


PIP_INSTALL = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts"]


def _sdk_packages(package: str, version: str) -> Path:
    """`pip install --target` of the SDK and its dependencies, kept under the user's cache keyed by the version (the
    image's python is 3.11, like the one running the tests, so binary wheels fit): a machine downloads each once."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dockyard"
    target = cache / f"pip-{package}-{version}-py311"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=cache))
    install = subprocess.run(
        [*PIP_INSTALL, "--target", str(partial), f"{package}=={version}"],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        pytest.fail(f"pip could not install {package}=={version} for the SDK worker images: {install.stderr[-2000:]}")
    try:
        # Renamed into place whole, so a session started beside this one sees all of it or none of it.
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # the other session got there first
    return target


@pytest.fixture(scope="session")
def sdk_worker_images(python_image: str) -> dict[str, str]:
    """The async-endpoint workers written with the official SDKs (examples/ppio-worker, runpod-worker, novita-worker):
    {"ppio": "localhost/dockyard-ppio-worker:test-<digest>", "runpod": "..."}. Built every session from the example
    sources, so the images never lag behind them; the SDK layer comes from the build cache after the first time. The
    tag carries a digest of the sources and the SDK's version: the engine's image store is shared by every checkout
    on the machine, and one built from other sources under the same tag would be run in this session's place."""
    images = {}
    examples = ROOT / "examples"
    for name, (package, version) in SDK_WORKERS.items():
        context = examples / f"{name}-worker"
        digest = hashlib.sha256(f"{package}=={version}".encode())
        for source in sorted(path for path in context.rglob("*") if path.is_file()):
            digest.update(source.relative_to(context).as_posix().encode() + b"\0" + source.read_bytes())
        image = f"localhost/dockyard-{name}-worker:test-{digest.hexdigest()[:12]}"
        packages = _sdk_packages(package, version)
        build = subprocess.run(
            [
                "podman",
                "build",
                "-q",
                "--build-context",
                f"sdk={packages}",
                "-t",
                image,
                str(context),
            ],
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            pytest.fail(f"podman build of {image} failed: {build.stderr[-2000:]}")
        images[name] = image
    return images


@dataclass(frozen=True)
class Registry:
    """A private image registry on loopback (the distribution registry, with htpasswd authentication) and a Podman
    API service that reaches it over plain HTTP. Images pushed there are not tagged in the host's storage until an
    engine pulls them."""

    address: str  # 127.0.0.1:PORT
    username: str
    password: str
    engine_url: str

    def push(self, source: str, repository: str) -> str:
        """Push local image `source` as `repository` (`org/name:tag`) with the registry's credentials; returns the
        image's reference there."""
        reference = f"{self.address}/{repository}"
        subprocess.run(
            [
                "podman",
                "push",
                "--quiet",
                "--tls-verify=false",
                "--creds",
                f"{self.username}:{self.password}",
                source,
                f"docker://{reference}",
            ],
            check=True,
            capture_output=True,
        )
        return reference

    @staticmethod
    def forget(reference: str) -> None:
        """Remove the name `reference` from the host's storage (a pull made it), leaving the image and its other
        names as they are."""
        subprocess.run(["podman", "untag", reference, reference], capture_output=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # 401: it serves, and asks for credentials
    except OSError:
        return False


@pytest.fixture(scope="session")
def private_registry(busybox_image: str) -> Iterator[Registry]:
    """A `Registry` for the session. Needs Debian's docker-registry (the distribution registry) and apache2-utils'
    htpasswd; scripts/install-deps installs both."""
    for binary, package in (("docker-registry", "docker-registry"), ("htpasswd", "apache2-utils")):
        if shutil.which(binary) is None:
            pytest.skip(f"needs {binary} for a private registry (apt-get install {package}; scripts/install-deps)")
    directory = Path(tempfile.mkdtemp(prefix="dockyard-registry-"))
    username, password = "robot", f"pw-{uuid.uuid4().hex}"
    hashed = subprocess.run(["htpasswd", "-Bbn", username, password], check=True, capture_output=True, text=True)
    (directory / "htpasswd").write_text(hashed.stdout)
    address = f"127.0.0.1:{free_port()}"
    (directory / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {directory / 'storage'}}}}}\n"
        f"http: {{addr: '{address}'}}\n"
        f"auth: {{htpasswd: {{realm: dockyard-test, path: {directory / 'htpasswd'}}}}}\n"
    )
    # Short names resolve nowhere, and the test registry is reached over plain HTTP.
    (directory / "registries.conf").write_text(
        f'unqualified-search-registries = []\n\n[[registry]]\nlocation = "{address}"\ninsecure = true\n'
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(directory / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "registry.log", "wb"),  # noqa: SIM115 - lives as long as the registry
    )
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"http://{address}/v2/"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start: {(directory / 'registry.log').read_text()}")
            time.sleep(0.05)
        with podman_service({"CONTAINERS_REGISTRIES_CONF": str(directory / "registries.conf")}) as url:
            yield Registry(address, username, password, url)
    finally:
        _stop(process, directory)
