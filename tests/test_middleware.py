"""The request-body bound over a real socket (uvicorn on a loopback port): a body over `max_body_bytes` is
413 with the one error body, whether its size is declared (Content-Length) or only streamed (chunked)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeRuntime
from tests.live import serving

LIMIT = 4096


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("body-limit")
    settings = Settings(
        data_dir=directory,
        database_url=f"sqlite+aiosqlite:///{directory / 'dockyard.db'}",
        admin_token=ADMIN_TOKEN,
        max_body_bytes=LIMIT,
        run_reconcilers=False,
        engine_url="unix:///nonexistent.sock",
    )
    app = create_app(settings, runtime_factory=lambda idc, context: FakeRuntime())
    with serving(app) as url:
        yield url


HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}


def _assert_413(answer: httpx.Response) -> None:
    assert answer.status_code == 413, answer.text
    body = answer.json()
    assert body == {
        "code": 413,
        "reason": "PAYLOAD_TOO_LARGE",
        "message": f"request body over the limit of {LIMIT} bytes; send less",
        "details": [],
    }


def _organization(name_length: int) -> bytes:
    return json.dumps({"name": "o" * name_length}).encode()


def test_declared_length_over_the_limit(server_url: str) -> None:
    body = _organization(LIMIT)
    assert len(body) > LIMIT
    answer = httpx.post(f"{server_url}/admin/v1/organizations", content=body, headers=HEADERS)
    _assert_413(answer)


def test_streamed_body_over_the_limit(server_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(8):
            yield b"o" * 1024
        yield b'"}'

    with httpx.Client() as client:
        request = client.build_request(
            "POST", f"{server_url}/admin/v1/organizations", content=chunks(), headers=HEADERS
        )
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        _assert_413(client.send(request))


def test_bodies_within_the_limit_pass(server_url: str) -> None:
    declared = httpx.post(f"{server_url}/admin/v1/organizations", content=_organization(100), headers=HEADERS)
    assert declared.status_code == 200, declared.text
    assert declared.json()["name"] == "o" * 100

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        yield b"s" * 200
        yield b'"}'

    streamed = httpx.post(f"{server_url}/admin/v1/organizations", content=chunks(), headers=HEADERS)
    assert streamed.status_code == 200, streamed.text
    assert streamed.json()["name"] == "s" * 200
