"""nginx (Debian's nginx-light) as a plain reverse proxy in front of the no-op worker: the floor of what a
proxy costs. One worker process, HTTP/1.1 keep-alive connections to the upstream, no access log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import processes
from bench.target import Target

# 512 client connections plus as many upstream ones must fit in the worker's connection table.
CONFIG = """\
worker_processes 1;
worker_rlimit_nofile 8192;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    upstream noop {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://noop;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /nginx-ready {{ return 200; }}
    }}
}}
"""


@contextmanager
def nginx_proxy(workdir: Path, upstream_port: int) -> Iterator[Target]:
    """nginx on a free loopback port proxying to `127.0.0.1:upstream_port`; stopped on exit."""
    prefix = workdir / "nginx"
    prefix.mkdir()
    port = processes.free_port()
    config = prefix / "nginx.conf"
    config.write_text(CONFIG.format(prefix=prefix, port=port, upstream_port=upstream_port))
    log = prefix / "nginx.log"
    process = processes.start(["nginx", "-p", str(prefix), "-c", str(config)], log)
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/nginx-ready", process, log, 30.0)
        yield Target(f"http://127.0.0.1:{port}/noop", cpu_session=process.pid)
    finally:
        processes.stop(process)
