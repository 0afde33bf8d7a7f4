"""`GET /api/v1/containers/{id}/logs` on real Podman over a real socket: `tail` gives the last lines, `follow`
streams lines as the container prints them and ends when it exits, and no `since` or `tail` a user sends is an
unhandled error."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.db.models import IdcModel
from dockyard.runtimes.engine import EngineRuntime
from tests.conftest import ADMIN_TOKEN
from tests.engine import remove_networks
from tests.live import serving

pytestmark = pytest.mark.engine

DEADLINE = 30.0
# Five lines at once, then one more a moment later, then exit: a follower sees the late line arrive.
SCRIPT = "for i in 1 2 3 4 5; do echo line$i; done; sleep 2; echo late; sleep 1"


@pytest.fixture
def server(tmp_path: Path, engine_url: str, busybox_image: str) -> Iterator[tuple[str, str]]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}",
        admin_token=ADMIN_TOKEN,
        public_address="127.0.0.1",
        reconcile_interval=0.2,
        engine_url=engine_url,
    )
    installation: list[str] = []

    def factory(idc: IdcModel, context: ServerContext) -> EngineRuntime:
        installation.append(context.installation_id)
        return EngineRuntime(engine_url, installation_id=context.installation_id)

    with serving(create_app(settings, runtime_factory=factory)) as url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=url, headers=admin) as client:
            org = client.post("/admin/v1/organizations", json={"name": "logs"}).json()
            key = client.post(f"/admin/v1/organizations/{org['id']}/keys", json={}).json()["key"]
        try:
            yield url, key
        finally:
            engine = docker.DockerClient(base_url=engine_url)
            for container in engine.containers.list(
                all=True, filters={"label": f"dockyard.installation={installation[0]}"}
            ):
                container.remove(force=True)
            remove_networks(installation[0])
            engine.close()


def _start(client: httpx.Client, image: str) -> str:
    template = client.post("/api/v1/templates", json={"name": "talker", "path": image, "command": f"sh -c '{SCRIPT}'"})
    assert template.status_code == 200, template.text
    created = client.post(
        "/api/v1/containers",
        json={
            "count": 1,
            "idc": "local",
            "product": "cpu.small",
            "name": "talker",
            "templateId": template.json()["id"],
        },
    )
    assert created.status_code == 200, created.text
    container_id: str = created.json()[0]["id"]
    end = time.monotonic() + DEADLINE
    while client.get(f"/api/v1/containers/{container_id}/logs").status_code == 409:  # not started yet
        assert time.monotonic() < end, "the container never started"
        time.sleep(0.1)
    return container_id


def test_follow_streams_lines_as_printed_then_tail_reads_the_last(server: tuple[str, str], busybox_image: str) -> None:
    url, key = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=DEADLINE) as client:
        container_id = _start(client, busybox_image)

        received = ""
        seen_early_at = seen_late_at = 0.0
        with client.stream("GET", f"/api/v1/containers/{container_id}/logs", params={"follow": "true"}) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            for chunk in answer.iter_text():
                received += chunk
                if "line5" in received and not seen_early_at:
                    seen_early_at = time.monotonic()
                if "late" in received and not seen_late_at:
                    seen_late_at = time.monotonic()
        # The stream ended by itself (the container exited), after the early lines had arrived on their own.
        assert received.splitlines() == ["line1", "line2", "line3", "line4", "line5", "late"]
        assert 0 < seen_early_at < seen_late_at

        tail = client.get(f"/api/v1/containers/{container_id}/logs", params={"tail": 2})
        assert tail.status_code == 200
        assert tail.text.splitlines() == ["line5", "late"]


def test_since_at_or_before_the_epoch_answers_everything_and_no_value_is_an_unhandled_error(
    server: tuple[str, str], busybox_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As found: `since=0` (also `-1` and the epoch in RFC 3339) was a 500 whose traceback, rendered with its
    locals on the event loop, froze every tenant for seconds; it reads from the beginning now."""
    url, key = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=DEADLINE) as client:
        container_id = _start(client, busybox_image)
        logs = f"/api/v1/containers/{container_id}/logs"
        end = time.monotonic() + DEADLINE
        while "late" not in client.get(logs).text:  # the container has printed everything
            assert time.monotonic() < end, "the container never printed its last line"
            time.sleep(0.2)
        everything = ["line1", "line2", "line3", "line4", "line5", "late"]
        caplog.clear()
        for since in ("0", "-1", "-1e300", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"):
            answer = client.get(logs, params={"since": since})
            assert answer.status_code == 200, (since, answer.text)
            assert answer.text.splitlines() == everything, since
        for since in ("99999999999", "9999-12-31T23:59:59Z"):  # the future: nothing yet
            answer = client.get(logs, params={"since": since})
            assert answer.status_code == 200, (since, answer.text)
            assert answer.text == ""
        for since in ("1e300", "nan", "inf", "10000-01-01T00:00:00Z"):
            answer = client.get(logs, params={"since": since})
            assert answer.status_code == 422, (since, answer.text)
            assert answer.json()["details"][0]["field"] == "since"
        assert client.get(logs, params={"tail": 0}).text == ""
        with client.stream("GET", logs, params={"since": "0", "follow": "true", "tail": 1}) as followed:
            assert followed.status_code == 200
            assert followed.read().decode().splitlines() == ["late"]
    unhandled = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert unhandled == []
