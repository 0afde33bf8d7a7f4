"""Network keepers against a real Podman: one organization's network stays isolated from another's whatever a
third organization's containers do, when its last container stops, when its network is removed, and when a
keeper was stopped (as a host's restart stops every pod) before an object starts on its network.

netavark's iptables driver, as Debian 12 ships it (1.4), lifted every network's isolation whenever one network's
last container stopped: without keepers, these tests' intruder reaches the server (engine_keepers.py says more).
On an engine without that defect they pass either way."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import docker
import pytest

from dockyard.runtimes.engine import EngineRuntime
from dockyard.runtimes.engine_keepers import LABEL_KEEPER, keeper_name
from tests.engine import answered, http_probe, network_of, remove_networks
from tests.runtimes.test_engine_networks import HTTPD, SLEEP, probe_until_answered, started

pytestmark = pytest.mark.engine


def keepers(installation_id: str) -> dict[str, str]:
    """The installation's keeper pods by name, with their state."""
    listed = subprocess.run(
        ["podman", "pod", "ps", "--format", "json", "--filter", f"label={LABEL_KEEPER}={installation_id}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return {str(pod["Name"]): str(pod["Status"]) for pod in json.loads(listed.stdout or "[]")}


async def two_organizations(runtime: EngineRuntime, image: str, engine: docker.DockerClient) -> tuple[Any, str]:
    """Organization A's server (answering its neighbour on A's network) and organization B's container on its own
    network: the intruder, and the address of the server it must not reach."""
    net_a, net_b = f"{runtime.installation_id}-a", f"{runtime.installation_id}-b"
    server = await started(runtime, image, "a1", HTTPD, network=net_a, org="org-a")
    friend = engine.containers.get(await started(runtime, image, "a2", SLEEP, network=net_a, org="org-a"))
    intruder = engine.containers.get(await started(runtime, image, "b1", SLEEP, network=net_b, org="org-b"))
    address = network_of(engine.containers.get(server))[1]["IPAddress"]
    await probe_until_answered(friend, address, 8080)
    return intruder, address


async def isolated(intruder: Any, host: str) -> bool:
    code, output = await asyncio.to_thread(http_probe, intruder, host, 8080)
    return code != 0 and not answered((code, output))


async def test_another_networks_last_container_stopping_lifts_no_isolation(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    net_a, net_b, net_c = (f"{runtime.installation_id}-{suffix}" for suffix in "abc")
    server = await started(runtime, busybox_image, "a1", HTTPD, network=net_a, org="org-a")
    friend = engine.containers.get(await started(runtime, busybox_image, "a2", SLEEP, network=net_a, org="org-a"))
    intruder = engine.containers.get(await started(runtime, busybox_image, "b1", SLEEP, network=net_b, org="org-b"))
    address = network_of(engine.containers.get(server))[1]["IPAddress"]
    await probe_until_answered(friend, address, 8080)
    assert await isolated(intruder, address)
    assert keepers(runtime.installation_id) == {keeper_name(net): "Running" for net in (net_a, net_b)}
    # The keepers are no workloads: the runtime lists none of them as its objects.
    assert len(await runtime.list_managed()) == 3

    # A third organization's only container stops: its network's keeper is still on it, so nothing is torn down.
    third = await started(runtime, busybox_image, "c1", SLEEP, network=net_c, org="org-c")
    await runtime.stop(third, timeout=0)
    assert await isolated(intruder, address)

    # Its network goes: the keeper's removal tears the network down, and the restart of another puts it back.
    await runtime.remove(third)
    await runtime.remove_network(net_c)
    assert keeper_name(net_c) not in keepers(runtime.installation_id)
    assert await runtime.list_networks() == [net_a, net_b]
    assert await isolated(intruder, address)
    await probe_until_answered(friend, address, 8080)


async def test_a_stopped_keeper_runs_again_before_an_object_starts_on_its_network(
    runtime: EngineRuntime, busybox_image: str
) -> None:
    net = f"{runtime.installation_id}-a"
    first = await started(runtime, busybox_image, "a1", SLEEP, network=net, org="org-a")
    await runtime.stop(first, timeout=0)
    await asyncio.to_thread(
        subprocess.run, ["podman", "pod", "stop", "--time", "0", keeper_name(net)], check=True, capture_output=True
    )
    assert keepers(runtime.installation_id) == {keeper_name(net): "Exited"}
    await runtime.start(first)
    assert keepers(runtime.installation_id) == {keeper_name(net): "Running"}


async def test_another_installations_last_network_going_lifts_no_isolation(
    runtime: EngineRuntime, busybox_image: str, engine_url: str, engine: docker.DockerClient
) -> None:
    """The rule is the engine's: when another installation removes its only network, whose keeper was the last
    container there, a keeper of this installation's is restarted to put the rule back."""
    intruder, address = await two_organizations(runtime, busybox_image, engine)
    neighbour = EngineRuntime(engine_url, installation_id=f"{runtime.installation_id}-other")
    theirs = f"{neighbour.installation_id}-c"
    try:
        object_id = await started(neighbour, busybox_image, "c1", SLEEP, network=theirs, org="org-c")
        await neighbour.remove(object_id)
        await neighbour.remove_network(theirs)
        assert keepers(neighbour.installation_id) == {}
        assert await isolated(intruder, address)
    finally:
        remove_networks(neighbour.installation_id)
        await neighbour.close()


async def test_a_keeper_that_will_not_restart_is_passed_over_for_another(
    runtime: EngineRuntime, busybox_image: str, engine_url: str, engine: docker.DockerClient
) -> None:
    """A keeper stuck where the engine will not restart it (paused here; a server killed while the engine stopped a
    keeper leaves one `Error`) keeps no other keeper from putting the rule back when a network goes."""
    intruder, address = await two_organizations(runtime, busybox_image, engine)
    # Its keeper's name sorts before every other: the one a removal would pick first.
    stuck = EngineRuntime(engine_url, installation_id=f"0000{runtime.installation_id}")
    neighbour = EngineRuntime(engine_url, installation_id=f"{runtime.installation_id}-other")
    stuck_net, theirs = f"{stuck.installation_id}-s", f"{neighbour.installation_id}-c"
    try:
        await stuck.remove(await started(stuck, busybox_image, "s1", SLEEP, network=stuck_net, org="org-s"))
        pause = ["podman", "pod", "pause", keeper_name(stuck_net)]
        await asyncio.to_thread(subprocess.run, pause, check=True, capture_output=True)
        object_id = await started(neighbour, busybox_image, "c1", SLEEP, network=theirs, org="org-c")
        await neighbour.remove(object_id)
        await neighbour.remove_network(theirs)
        assert keepers(stuck.installation_id) == {keeper_name(stuck_net): "Paused"}
        assert keepers(neighbour.installation_id) == {}
        assert await isolated(intruder, address)
    finally:
        remove_networks(stuck.installation_id)
        remove_networks(neighbour.installation_id)
        await stuck.close()
        await neighbour.close()
