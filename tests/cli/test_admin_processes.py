"""`dockyard admin processes`: the live servers and gateways and the leases they hold, as a table and as JSON."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from prometheus_client import CollectorRegistry
from typer.testing import CliRunner, Result

from dockyard.cli import app as cli_app
from dockyard.core.status import ProcessKind
from dockyard.db.migrate import migrate
from dockyard.db.session import Database
from dockyard.reconcilers.supervisor import Supervisor
from dockyard.services.processes import ProcessRecord


def admin(data_dir: Path, *args: str) -> Result:
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("DOCKYARD_")}
    env["DOCKYARD_ENGINE_URL"] = "unix:///nonexistent.sock"
    return CliRunner().invoke(cli_app, ["admin", *args, "--data-dir", str(data_dir)], env=env)


async def two_processes(url: str) -> tuple[str, str]:
    """A server holding the lease and a gateway, as their processes would leave the database."""
    await migrate(url)
    db = Database(url)
    try:
        server = ProcessRecord(db, ProcessKind.SERVER, "10.0.0.1:8080", lease_seconds=60.0)
        gateway = ProcessRecord(db, ProcessKind.GATEWAY, "10.0.0.2:8081", lease_seconds=60.0)
        await server.register()
        await gateway.register()
        await gateway.drain()
        assert await Supervisor(db, CollectorRegistry(), lease_seconds=60.0, process=server).acquire() == 1
        return server.id, gateway.id
    finally:
        await db.dispose()


def test_admin_processes_lists_the_processes_and_the_lease_holder(tmp_path: Path) -> None:
    assert admin(tmp_path, "processes").exit_code == 1  # no database: refused, not made
    server_id, gateway_id = asyncio.run(two_processes(f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}"))

    as_json = admin(tmp_path, "processes", "--json")
    assert as_json.exit_code == 0, as_json.output
    listed = {process["id"]: process for process in json.loads(as_json.stdout)}
    assert listed.keys() == {server_id, gateway_id}
    assert [(lease["name"], lease["token"]) for lease in listed[server_id]["leases"]] == [("reconcilers", 1)]
    assert (listed[server_id]["kind"], listed[server_id]["state"]) == ("server", "serving")
    assert (listed[gateway_id]["kind"], listed[gateway_id]["state"], listed[gateway_id]["leases"]) == (
        "gateway",
        "draining",
        [],
    )

    table = admin(tmp_path, "processes")
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert server_id in text
    assert gateway_id in text
    assert "reconcilers (token 1," in text
    assert "draining" in text
