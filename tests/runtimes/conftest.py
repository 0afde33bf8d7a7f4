"""Fixtures of the runtime tests on a real engine: a plain SDK client, and an `EngineRuntime` of a fresh
installation id whose objects, volumes and networks are removed at the end."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from dockyard.runtimes.base import LABEL_INSTALLATION
from dockyard.runtimes.engine import EngineRuntime
from tests.engine import remove_networks


@pytest.fixture
def engine(engine_url: str) -> Iterator[docker.DockerClient]:
    """A plain SDK client, to look at what the engine really holds."""
    client = docker.DockerClient(base_url=engine_url, version="auto")
    yield client
    client.close()


@pytest.fixture
async def runtime(
    engine_url: str, busybox_image: str, engine: docker.DockerClient, tmp_path: Path
) -> AsyncIterator[EngineRuntime]:
    """A runtime of a fresh installation whose data dir (the only host directory it mounts from) is tmp_path."""
    installation = f"test-{uuid.uuid4().hex[:12]}"
    runtime = EngineRuntime(engine_url, installation_id=installation, host_path_root=tmp_path)
    try:
        yield runtime
    finally:
        for obj in await runtime.list_managed():
            await runtime.remove(obj.id)
        for volume in engine.volumes.list(filters={"label": f"{LABEL_INSTALLATION}={installation}"}):
            volume.remove(force=True)
        remove_networks(installation)
        await runtime.close()
