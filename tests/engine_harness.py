"""Fixtures that put the test harness on the real container engine, for the reconciler tests that run real
containers. A test module takes them by importing them:

    from tests.engine_harness import database_url, fake_runtime  # noqa: F401

`fake_runtime` then replaces the harness's in-memory runtime with the engine (the harness sets its
installation id; it mounts host files from the harness's data dir, as the server's does) and removes every
object, network and volume of that installation at the end; `database_url` is SQLite only,
since runtime behaviour does not depend on the backend, which the in-memory runtime tests cover on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from dockyard.config import Settings
from dockyard.runtimes.engine import EngineRuntime
from tests.engine import remove_networks


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}"


@pytest.fixture
async def fake_runtime(
    engine_url: str, docker_client: docker.DockerClient, settings: Settings
) -> AsyncIterator[EngineRuntime]:
    runtime = EngineRuntime(engine_url, installation_id="", host_path_root=settings.data_dir)
    yield runtime
    if runtime.installation_id:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"dockyard.installation={runtime.installation_id}"}
        ):
            container.remove(force=True)
        remove_networks(runtime.installation_id)
        for volume in docker_client.volumes.list(filters={"label": f"dockyard.installation={runtime.installation_id}"}):
            volume.remove(force=True)
