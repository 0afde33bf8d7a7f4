"""The nginx configuration that docs/load-balancing.md documents, run for real in front of processes of this
machine: the documented `dockyard.conf` is taken from the page as written, its example upstream addresses and
listening ports replaced, and wrapped in the few main-context lines a private nginx needs (its pid, logs and
temporary files under one directory)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.live import free_port

DOC = Path(__file__).resolve().parent.parent / "docs" / "load-balancing.md"
_UPSTREAM_SERVER = re.compile(r"^(\s*)server \S+?(\s+max_fails[^;]*);\n", re.MULTILINE)

MAIN = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    include {prefix}/dockyard.conf;
}}
"""


def documented_config() -> str:
    """The one ```nginx block of docs/load-balancing.md."""
    blocks = re.findall(r"```nginx\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1, f"{DOC.name} should hold exactly one nginx block, found {len(blocks)}"
    return str(blocks[0])


def _upstream(config: str, name: str, addresses: Sequence[str]) -> str:
    """`config` with the servers of upstream `name` replaced by `addresses`, each with the documented options."""
    start = config.index(f"upstream {name} {{")
    end = config.index("}", start)
    block = config[start:end]
    first = _UPSTREAM_SERVER.search(block)
    assert first is not None, f"upstream {name} lists no server"
    indent, options = first.group(1), first.group(2)
    servers = "".join(f"{indent}server {address}{options};\n" for address in addresses)
    return config[:start] + _UPSTREAM_SERVER.sub("", block).replace("{\n", "{\n" + servers, 1) + config[end:]


def local_config(servers: Sequence[int], gateways: Sequence[int], api_listen: str, gateway_listen: str) -> str:
    """The documented configuration with this machine's ports: the servers and gateways on loopback, the API's
    and the gateway's entry points listening on `api_listen` and `gateway_listen` (`host:port`). With no
    gateway the servers serve the gateway's entry point too, as each server serves the gateway."""
    config = documented_config()
    config = _upstream(config, "dockyard_servers", [f"127.0.0.1:{port}" for port in servers])
    config = _upstream(config, "dockyard_gateways", [f"127.0.0.1:{port}" for port in gateways or servers])
    assert config.count("listen 8080;") == 1, "the API's listening port moved"
    assert config.count("listen 8081;") == 1, "the gateway's listening port moved"
    return config.replace("listen 8080;", f"listen {api_listen};").replace("listen 8081;", f"listen {gateway_listen};")


@dataclass(frozen=True)
class Front:
    """nginx running the documented configuration: the API's and the gateway's entry points on loopback."""

    api_port: int
    gateway_port: int
    prefix: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def nginx_front(
    prefix: Path, servers: Sequence[int], gateways: Sequence[int], *, api_host: str = "127.0.0.1"
) -> Iterator[Front]:
    """nginx with the documented configuration in front of `servers` and `gateways` (loopback ports) until the
    block ends; the API's entry point listens on `api_host` (`0.0.0.0` so that containers reach it)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("needs nginx (apt-get install nginx-light; scripts/install-deps)")
    prefix.mkdir(parents=True, exist_ok=True)
    front = Front(free_port(), free_port(), prefix)
    config = local_config(servers, gateways, f"{api_host}:{front.api_port}", f"127.0.0.1:{front.gateway_port}")
    (prefix / "dockyard.conf").write_text(config)
    (prefix / "nginx.conf").write_text(MAIN.format(prefix=prefix))
    checked = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], capture_output=True)
    assert checked.returncode == 0, f"nginx -t refused the documented configuration:\n{checked.stderr.decode()}"
    log = (prefix / "nginx.out").open("wb")
    process = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"nginx exited at start:\n{front.error_log()}"
            try:
                httpx.get(front.api_url, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"nginx did not listen in time:\n{front.error_log()}"
                time.sleep(0.1)
        yield front
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
