"""SIGTERM on a real `dockyard server` process: the request in flight is answered, the process exits 0, its row
in `processes` is gone, and on PostgreSQL a second server takes the control lease at once rather than at its
expiry. And `/healthz` answers 503 while a server drains."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import ADMIN_TOKEN, Harness
from tests.pg import PostgresServer, postgres_available
from tests.servers import ServerProcess, wait_for

LEASE_SECONDS = 20  # long, so that a takeover at the next try cannot be mistaken for one at the expiry


def server_env(data: Path, database_url: str, secret: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(
        DOCKYARD_DATA_DIR=str(data),
        DOCKYARD_DATABASE_URL=database_url,
        DOCKYARD_SECRET_KEY=secret,
        DOCKYARD_ADMIN_TOKEN=ADMIN_TOKEN,
        DOCKYARD_ENGINE_URL="unix:///nonexistent.sock",
        DOCKYARD_LEASE_SECONDS=str(LEASE_SECONDS),
        DOCKYARD_DRAIN_SECONDS="20",
        DOCKYARD_LOG_LEVEL="info",
    )
    return env


def processes(server: ServerProcess) -> dict[str, dict[str, object]]:
    answer = httpx.get(f"{server.url}/admin/v1/processes", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 200, answer.text
    return {process["id"]: process for process in answer.json()}


def lease_of(server: ServerProcess) -> tuple[str, dict[str, str]] | None:
    """The holder of the `reconcilers` lease and the lease, as `server` lists them."""
    for process_id, process in processes(server).items():
        for lease in process["leases"]:  # type: ignore[attr-defined]
            if lease["name"] == "reconcilers":
                return process_id, lease
    return None


def pid_of(process_id: str) -> int:
    return int(process_id.split(":")[1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_answers_the_request_in_flight_exits_0_and_hands_the_lease_over(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}"
    else:
        postgres: PostgresServer | None = request.getfixturevalue("postgres")
        if postgres is None:
            pytest.skip(f"PostgreSQL half skipped: {postgres_available()}")
        database_url = asyncio.run(postgres.create_database())
    secret = Fernet.generate_key().decode()
    first = ServerProcess(server_env(tmp_path / "a", database_url, secret), tmp_path / "a.log")
    second = ServerProcess(server_env(tmp_path / "b", database_url, secret), tmp_path / "b.log")
    try:
        first.start()
        wait_for("the first server holding the lease", lambda: lease_of(first), 30)
        if backend == "postgresql":
            second.start()  # SQLite serves one server: a second one is this test's PostgreSQL half only
        holder, lease = wait_for("the lease", lambda: lease_of(first), 30)
        assert first.process is not None
        assert pid_of(holder) == first.process.pid

        # A request in flight: its head is in, its body still coming when SIGTERM arrives.
        body = b'{"name": "drained"}'
        with socket.create_connection(("127.0.0.1", first.port), timeout=30) as connection:
            connection.sendall(
                b"POST /admin/v1/organizations HTTP/1.1\r\nHost: dockyard\r\n"
                + f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:5]
            )
            time.sleep(0.5)
            first.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)  # uvicorn has closed its listener and is waiting for this request
            connection.sendall(body[5:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b'"name":"drained"' in answer.replace(b" ", b"")
        assert first.process.wait(timeout=30) == 0, first.log_tail()
        assert "draining" in first.log()

        if backend == "sqlite":
            first.start()  # the same database, read again: the drained server left no row and no lease
            listed = processes(first)
            assert holder not in listed
            return
        took_over, new_lease = wait_for("the second server taking the lease", lambda: lease_of(second), 15)
        assert second.process is not None
        assert pid_of(took_over) == second.process.pid
        assert new_lease["token"] == lease["token"] + 1  # type: ignore[operator]
        # Taken once released, not once expired: before the expiry the first server's lease had just before SIGTERM.
        released_lease_expiry = datetime.fromisoformat(lease["expires_at"])
        assert datetime.fromisoformat(new_lease["acquired_at"]) < released_lease_expiry
        assert holder not in processes(second)
    finally:
        first.stop()
        second.stop()


async def test_healthz_answers_503_while_the_server_drains(harness: Harness) -> None:
    assert (await harness.client.get("/healthz")).status_code == 200
    harness.context.drain.begin()
    answer = await harness.client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "draining"
