"""A recreated container keeps its host ports on real Podman: an update that recreates it publishes it on the
host port it had, and when that port is taken on the host by then, it runs on another and its reason and a
`PortsChanged` event say which changed, from what to what."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dockyard.core.status import ContainerStatus
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.engine import EngineRuntime
from tests.conftest import Harness
from tests.engine_harness import database_url, fake_runtime  # noqa: F401
from tests.reconcilers.conftest import event_types, make_containers, make_template, must_row
from tests.reconcilers.test_containers_engine import engine_reconciler, until  # noqa: F401

pytestmark = pytest.mark.engine


async def _update(harness: Harness, container_id: str, template_id: str, mode: str) -> None:
    answer = await harness.client.put(
        f"/api/v1/containers/{container_id}",
        json={"name": "box", "templateId": template_id, "envs": [{"name": "MODE", "value": mode}]},
    )
    assert answer.status_code == 200, answer.text


async def _recreated(harness: Harness, container_id: str, generation: int) -> bool:
    row = await must_row(harness, container_id)
    return row.observed_generation == generation and row.status == ContainerStatus.RUNNING


def _host_port(published: list[dict[str, object]]) -> int:
    (entry,) = published
    return int(str(entry["port"]))


@pytest.fixture
def occupied() -> Iterator[list[socket.socket]]:
    """Sockets a test binds on the host, closed at its end."""
    sockets: list[socket.socket] = []
    yield sockets
    for held in sockets:
        held.close()


async def test_an_update_keeps_the_host_port_and_says_when_it_cannot(
    harness: Harness,
    engine_reconciler: ContainerReconciler,  # noqa: F811
    fake_runtime: EngineRuntime,  # noqa: F811
    busybox_image: str,
    occupied: list[socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    template_id = await make_template(harness.client, image=busybox_image)
    (container_id,) = await make_containers(harness.client, template_id)
    await until(engine_reconciler, lambda: _recreated(harness, container_id, 1), "running")
    first = _host_port((await must_row(harness, container_id)).published_ports)

    await _update(harness, container_id, template_id, "one")
    await until(engine_reconciler, lambda: _recreated(harness, container_id, 2), "recreated")
    row = await must_row(harness, container_id)
    assert _host_port(row.published_ports) == first
    assert row.reason == ""

    # Something on the host takes the port in the moment between the old object's removal and the new one's start.
    remove = fake_runtime.remove

    async def remove_then_occupy(object_id: str) -> None:
        await remove(object_id)
        if occupied:  # the failed start's object is removed too
            return
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("0.0.0.0", first))
        held.listen()
        occupied.append(held)

    monkeypatch.setattr(fake_runtime, "remove", remove_then_occupy)
    await _update(harness, container_id, template_id, "two")
    await until(engine_reconciler, lambda: _recreated(harness, container_id, 3), "recreated on another port")
    row = await must_row(harness, container_id)
    second = _host_port(row.published_ports)
    assert second != first
    assert f"8080/tcp {first} -> {second}" in row.reason
    assert "PortsChanged" in await event_types(harness, container_id)

    # The reason stays while it runs on the new port: later passes do not clear it.
    monkeypatch.undo()
    await engine_reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).reason == row.reason
