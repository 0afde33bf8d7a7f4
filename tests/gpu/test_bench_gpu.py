"""The `gpu` bench group where it runs anywhere: its load generator against a real local HTTP server, its section
from given runs, and its answer on a machine without a GPU (not measured, and not broken)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bench import gpu
from bench.group import Settings


def answering(status: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    return Handler


@pytest.fixture(params=[200, 500])
def worker(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), answering(request.param))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/infer", request.param
    finally:
        server.shutdown()
        server.server_close()


def test_the_load_generator_times_answers_and_counts_failures(worker: tuple[str, int]) -> None:
    url, status = worker
    run = gpu.drive(url, {}, concurrency=4, duration_s=0.5)
    assert run.concurrency == 4
    assert run.seconds >= 0.5
    if status == 200:
        assert run.errors == 0
        assert len(run.latencies_ms) > 4
        assert all(latency > 0 for latency in run.latencies_ms)
        assert run.requests_per_s == pytest.approx(len(run.latencies_ms) / run.seconds)
    else:
        assert run.latencies_ms == []
        assert run.errors > 4


def test_the_section_sets_the_gateway_beside_direct_at_each_concurrency() -> None:
    runs = {
        gpu.DIRECT: [gpu.Run(1, 1.0, [1.0, 2.0]), gpu.Run(32, 2.0, [4.0] * 20)],
        gpu.DOCKYARD: [gpu.Run(1, 1.0, [1.5, 2.5], errors=1), gpu.Run(32, 2.0, [5.0] * 10)],
    }
    text = gpu.render(runs, Settings(duration_s=10, warmup_s=3), "NVIDIA H100 80GB HBM3", "", "")
    assert text.startswith("## GPU")
    assert "on NVIDIA H100 80GB HBM3," in text
    assert "| direct | 1 | 2 | 1.000 | 2.000 | 0 |" in text
    assert "| Dockyard gateway | 1 | 2 | 1.500 | 2.500 | 1 |" in text
    assert "| Dockyard gateway | 32 | 5 | 5.000 | 5.000 | 0 |" in text
    assert "| 1 | +0.500 | +0.500 | 1.00 |" in text
    assert "| 32 | +1.000 | +1.000 | 0.50 |" in text


def test_without_a_gpu_the_group_is_not_measured_and_not_broken(tmp_path: Path) -> None:
    missing, _ = gpu.unavailable_reason()
    if missing is None:
        pytest.skip("this machine has a GPU and the worker's image: the group measures there")
    section = gpu.run(Settings(duration_s=1, warmup_s=0, charts_dir=tmp_path), tmp_path)
    assert section.broken == []
    assert section.markdown.startswith("## GPU")
    assert f"not measured: {missing}" in section.markdown
    assert "no GPU" in missing or "no GPU worker image" in missing
