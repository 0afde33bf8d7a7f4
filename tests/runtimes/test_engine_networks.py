"""EngineRuntime's networks against a real Podman: objects naming one network reach each other and no object of
another network reaches them; a port given a host address is published there only; a network is removed only
when no object is on it, and a create never loses its network to a concurrent removal.

Each test gets its own installation id (the `runtime` fixture) and names its networks after it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import replace
from typing import Any

import docker
import pytest

from dockyard.config import default_public_address
from dockyard.runtimes.base import LABEL_INSTALLATION, LABEL_MANAGED, LABEL_ORG, PortBinding, RuntimeFailure
from dockyard.runtimes.engine import EngineRuntime
from tests.engine import answered, http_probe, network_of, remove_networks
from tests.runtimes.test_engine import PATIENCE_SECONDS, http_get, spec_for

pytestmark = pytest.mark.engine

HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/tmp"]
SLEEP = ["sleep", "300"]


def podman_network(name: str) -> dict[str, Any]:
    """Podman's own view of a network (the compatible API leaves out its options)."""
    done = subprocess.run(["podman", "network", "inspect", name], check=True, capture_output=True, text=True)
    (network,) = json.loads(done.stdout)
    return dict(network)


async def started(
    runtime: EngineRuntime, image: str, suffix: str, command: list[str], *, org: str = "", **fields: Any
) -> str:
    """Create and start an object; `org` labels it as that organization's, as the services do."""
    spec = spec_for(runtime, image, suffix, command, **fields)
    if org:
        spec = replace(spec, labels={**spec.labels, LABEL_ORG: org})
    created = await runtime.create(spec)
    await runtime.start(created.id)
    return created.id


async def probe_until_answered(container: Any, host: str, port: int) -> tuple[int, str]:
    """Probe until an answer comes (the server in the target may still be starting), within the patience."""
    async with asyncio.timeout(PATIENCE_SECONDS):
        while True:
            probe = await asyncio.to_thread(http_probe, container, host, port)
            if answered(probe):
                return probe
            await asyncio.sleep(0.2)


async def loopback_answers(port: int) -> None:
    """The host's loopback gets an HTTP answer on `port` (the server behind it may still be starting)."""
    async with asyncio.timeout(PATIENCE_SECONDS):
        while True:
            try:
                answer = await asyncio.to_thread(http_get, port)
                break
            except OSError:  # not listening yet
                await asyncio.sleep(0.05)
    assert answer.startswith(b"HTTP/1."), answer


async def test_objects_of_one_network_reach_each_other_and_none_of_another(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    net_a, net_b = f"{runtime.installation_id}-a", f"{runtime.installation_id}-b"
    server = await started(runtime, busybox_image, "a1", HTTPD, network=net_a, org="org-a")
    neighbour = await started(runtime, busybox_image, "a2", SLEEP, network=net_a, org="org-a")
    stranger = await started(runtime, busybox_image, "b1", SLEEP, network=net_b, org="org-b")
    target = engine.containers.get(server)
    name, settings = network_of(target)
    assert name == net_a
    assert network_of(engine.containers.get(stranger))[0] == net_b

    await probe_until_answered(engine.containers.get(neighbour), settings["IPAddress"], 8080)
    code, output = await asyncio.to_thread(http_probe, engine.containers.get(stranger), settings["IPAddress"], 8080)
    assert code != 0, output
    assert not answered((code, output)), output

    for network, org in ((net_a, "org-a"), (net_b, "org-b")):
        details = podman_network(network)
        assert details["labels"] == {
            LABEL_MANAGED: "true",
            LABEL_INSTALLATION: runtime.installation_id,
            LABEL_ORG: org,
        }
        assert details["options"] == {"isolate": "true"}
    assert await runtime.list_networks() == [net_a, net_b]


async def test_a_port_given_a_host_address_is_published_there_only(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    net = f"{runtime.installation_id}-a"
    ports = [PortBinding(8080, host_ip="127.0.0.1")]
    server_id = await started(runtime, busybox_image, "web", HTTPD, network=net, ports=ports)
    neighbour = engine.containers.get(await started(runtime, busybox_image, "peer", SLEEP, network=net))
    obj = await runtime.inspect(server_id)
    assert obj is not None
    (port,) = obj.ports
    assert (port.container_port, port.host_ip) == (8080, "127.0.0.1")
    await loopback_answers(port.host_port)

    # Even a container of the same network reaches the published port neither on its bridge's gateway (the
    # host as containers see it) nor on the host's outward address.
    gateway = network_of(neighbour)[1]["Gateway"]
    for host in (gateway, default_public_address()):
        code, output = await asyncio.to_thread(http_probe, neighbour, host, port.host_port)
        assert code != 0, (host, output)
        assert not answered((code, output)), (host, output)


async def test_a_network_is_removed_only_when_no_object_is_on_it(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    net = f"{runtime.installation_id}-a"
    created = await runtime.create(spec_for(runtime, busybox_image, "idle", SLEEP, network=net))
    with pytest.raises(RuntimeFailure) as raised:
        await runtime.remove_network(net)  # a created object, never started, holds it too
    assert net in raised.value.reason
    assert "in use" in raised.value.reason
    assert await runtime.list_networks() == [net]

    await runtime.remove(created.id)
    await runtime.remove_network(net)
    assert await runtime.list_networks() == []
    await runtime.remove_network(net)  # missing is fine

    again = await started(runtime, busybox_image, "again", SLEEP, network=net)
    assert network_of(engine.containers.get(again))[0] == net
    assert await runtime.list_networks() == [net]


async def test_a_create_never_loses_its_network_to_a_concurrent_removal(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    net = f"{runtime.installation_id}-a"
    for attempt in range(6):
        spec = spec_for(runtime, busybox_image, f"race{attempt}", SLEEP, network=net)
        removal, created = await asyncio.gather(
            runtime.remove_network(net), runtime.create(spec), return_exceptions=True
        )
        assert not isinstance(created, BaseException), created
        assert removal is None or isinstance(removal, RuntimeFailure), removal
        assert network_of(engine.containers.get(created.id))[0] == net
        assert await runtime.list_networks() == [net]
        await runtime.remove(created.id)


async def test_list_networks_holds_only_this_installations(
    runtime: EngineRuntime, busybox_image: str, engine_url: str, engine: docker.DockerClient
) -> None:
    neighbour = EngineRuntime(engine_url, installation_id=f"{runtime.installation_id}-other")
    theirs = spec_for(neighbour, busybox_image, "theirs", SLEEP, network=f"{neighbour.installation_id}-b")
    try:
        await runtime.create(spec_for(runtime, busybox_image, "ours", SLEEP, network=f"{runtime.installation_id}-a"))
        await neighbour.create(theirs)
        assert await runtime.list_networks() == [f"{runtime.installation_id}-a"]
        assert await neighbour.list_networks() == [f"{neighbour.installation_id}-b"]
    finally:
        await neighbour.remove(theirs.name)
        remove_networks(neighbour.installation_id)
        await neighbour.close()


async def test_a_network_mode_replaces_networks_and_a_loopback_port_stays_out_of_reach(
    runtime: EngineRuntime, busybox_image: str, engine_url: str, engine: docker.DockerClient
) -> None:
    """With slirp4netns each container has a network stack of its own: no network is made, and a port published
    on loopback answers the host but not another container knocking on the host's address."""
    # The same installation, so the `runtime` fixture removes what this one makes.
    slirp = EngineRuntime(engine_url, installation_id=runtime.installation_id, network_mode="slirp4netns")
    network = f"{slirp.installation_id}-a"
    try:
        ports = [PortBinding(8080, host_ip="127.0.0.1")]
        server_id = await started(slirp, busybox_image, "slirp-web", HTTPD, network=network, ports=ports)
        other = engine.containers.get(await started(slirp, busybox_image, "slirp-peer", SLEEP, network=network))
        assert engine.containers.get(server_id).attrs["HostConfig"]["NetworkMode"] == "slirp4netns"
        assert await slirp.list_networks() == []
        obj = await slirp.inspect(server_id)
        assert obj is not None
        (port,) = obj.ports
        assert port.host_ip == "127.0.0.1"
        await loopback_answers(port.host_port)
        code, output = await asyncio.to_thread(http_probe, other, default_public_address(), port.host_port)
        assert code != 0, output
        assert not answered((code, output)), output
    finally:
        await slirp.close()


async def inspected_networks(runtime: EngineRuntime, object_id: str) -> tuple[str, ...]:
    obj = await runtime.inspect(object_id)
    assert obj is not None
    return obj.networks


async def test_an_object_is_moved_onto_a_network_and_off_every_other_while_it_runs(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    """As an object an older Dockyard made on the default network is moved: onto its organization's network (made
    isolated and labelled), off the default one, reported by both the listing and inspect, without a restart; a
    second move changes nothing, and a missing object is a `RuntimeFailure`."""
    server = await started(runtime, busybox_image, "old", HTTPD, org="org-a")  # no network: the engine's default
    target = engine.containers.get(server)
    started_at = target.attrs["State"]["StartedAt"]
    assert await inspected_networks(runtime, server) == ("podman",)
    net = f"{runtime.installation_id}-a"
    neighbour = await started(runtime, busybox_image, "peer", SLEEP, network=net, org="org-a")

    await runtime.move_to_network(server, net, "org-a")
    await runtime.move_to_network(server, net, "org-a")

    (listed,) = [obj for obj in await runtime.list_managed() if obj.id == server]
    assert listed.networks == (net,)
    assert await inspected_networks(runtime, server) == (net,)
    name, settings = network_of(target)
    assert name == net
    assert (target.attrs["State"]["Running"], target.attrs["State"]["StartedAt"]) == (True, started_at)
    await probe_until_answered(engine.containers.get(neighbour), settings["IPAddress"], 8080)
    assert podman_network(net)["options"] == {"isolate": "true"}
    assert podman_network(net)["labels"][LABEL_ORG] == "org-a"
    with pytest.raises(RuntimeFailure, match="not found"):
        await runtime.move_to_network(f"{runtime.installation_id}-missing", net, "org-a")

    # Under a network mode of its own the runtime reports no network of its choosing and moves nothing.
    slirp = EngineRuntime(runtime.url, installation_id=runtime.installation_id, network_mode="slirp4netns")
    try:
        assert await inspected_networks(slirp, server) == ()
        await slirp.move_to_network(server, f"{runtime.installation_id}-b", "org-a")
        assert network_of(target)[0] == net
    finally:
        await slirp.close()
