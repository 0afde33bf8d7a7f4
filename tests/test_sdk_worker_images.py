"""The example workers built on the official SDKs (examples/ppio-worker, examples/runpod-worker) run in their
images before any end-to-end test relies on them: each is started with `podman run` and no webhook
environment, and its handlers run one job the way its SDK tests a worker locally (`--test_input`; for a
generator under `runpod`, whose `--test_input` does not iterate one, the SDK's local API server)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest


def _run(image: str, *args: str, handler: str = "echo") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "run", "--rm", "-e", f"HANDLER={handler}", image, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _test_input(image: str, request: dict[str, Any], handler: str = "echo") -> subprocess.CompletedProcess[str]:
    return _run(image, "python3", "handler.py", "--test_input", json.dumps({"input": request}), handler=handler)


@pytest.mark.parametrize("sdk", ["ppio", "runpod"])
def test_the_image_has_its_sdk_and_python_3_11(sdk_worker_images: dict[str, str], sdk: str) -> None:
    module = {"ppio": "ppio_gpus", "runpod": "runpod"}[sdk]
    probe = _run(sdk_worker_images[sdk], "python3", "-c", f"import sys, {module}; print(sys.version_info[:2])")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "(3, 11)"


def test_ppio_echo_answers_its_input_with_the_worker_id(sdk_worker_images: dict[str, str]) -> None:
    started = time.monotonic()
    result = _test_input(sdk_worker_images["ppio"], {"prompt": "hi", "sleep": 1})
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started >= 1
    output = json.loads(result.stdout.splitlines()[-1])["output"]
    assert output["sdk"] == "ppio"
    assert output["input"] == {"prompt": "hi", "sleep": 1}
    assert output["worker"]


def test_ppio_failure_is_the_jobs_error(sdk_worker_images: dict[str, str]) -> None:
    result = _test_input(sdk_worker_images["ppio"], {"fail": "out of tokens"})
    assert result.returncode == 1
    error = json.loads(json.loads(result.stdout.splitlines()[-1])["error"])
    assert error["error_message"] == "out of tokens"


def test_ppio_generator_yields_its_parts_aggregated(sdk_worker_images: dict[str, str]) -> None:
    result = _test_input(sdk_worker_images["ppio"], {"parts": 4, "delay": 0.01}, handler="generator")
    assert result.returncode == 0, result.stdout + result.stderr
    parts = json.loads(result.stdout.splitlines()[-1])["output"]
    assert [part["part"] for part in parts] == [0, 1, 2, 3]
    assert len({part["worker"] for part in parts}) == 1


def test_ppio_generator_failure_after_its_parts(sdk_worker_images: dict[str, str]) -> None:
    result = _test_input(sdk_worker_images["ppio"], {"parts": 2, "delay": 0, "fail": "late"}, handler="generator")
    assert result.returncode == 1
    assert "late" in json.loads(result.stdout.splitlines()[-1])["error"]


def test_runpod_echo_answers_its_input_with_the_worker_id(sdk_worker_images: dict[str, str]) -> None:
    result = _test_input(sdk_worker_images["runpod"], {"prompt": "hi"})
    assert result.returncode == 0, result.stdout + result.stderr
    # The SDK logs the job's result as a Python literal on the line it ends with.
    assert "Job local_test completed successfully." in result.stdout
    line = next(line for line in result.stdout.splitlines() if "Job result:" in line)
    assert "'sdk': 'runpod'" in line
    assert "'input': {'prompt': 'hi'}" in line
    assert "'worker': '" in line


def test_runpod_failure_is_the_jobs_error(sdk_worker_images: dict[str, str]) -> None:
    result = _test_input(sdk_worker_images["runpod"], {"fail": "out of tokens"})
    assert result.returncode == 1
    assert '"error_message": "out of tokens"' in result.stdout


@pytest.fixture
def runpod_generator_api(sdk_worker_images: dict[str, str]) -> Iterator[str]:
    """The runpod image's generator handler behind the SDK's local job API; yields its base URL."""
    serve = ["python3", "handler.py", "--rp_serve_api", "--rp_api_host", "0.0.0.0"]
    started = subprocess.run(
        [
            "podman",
            "run",
            "-d",
            "--rm",
            "-e",
            "HANDLER=generator",
            "-p",
            "127.0.0.1::8000",
            sdk_worker_images["runpod"],
            *serve,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    container = started.stdout.strip()
    try:
        address = subprocess.run(
            ["podman", "port", container, "8000"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        url = f"http://{address}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    logs = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
                    pytest.fail(f"the SDK's local API did not start: {logs.stdout}{logs.stderr}")
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "1", container], capture_output=True)


def test_runpod_generator_yields_its_parts_aggregated(runpod_generator_api: str) -> None:
    answer = httpx.post(f"{runpod_generator_api}/runsync", json={"input": {"parts": 3, "delay": 0.01}}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "COMPLETED"
    assert [part["part"] for part in body["output"]] == [0, 1, 2]
