"""Keepers: on Podman, a paused pod on each organization's network, so that netavark never lifts isolation.

netavark's iptables firewall driver (every netavark before 2.0 unless its nftables driver is chosen; Debian 12
ships 1.4) tears a network's firewall down when the last container on it stops, and that teardown deletes the
`FORWARD -j NETAVARK_ISOLATION_1` rule that every isolated network shares: from then until a container next starts
on an isolated network, no organization's network is isolated from any other's (measured on Podman 4.3.1 with
netavark 1.4.0: a container of one organization reached another's server once a third organization's only
container had stopped). A stop that leaves another container on its network tears nothing down, and a start
puts the rule back. So each network gets a keeper, a pod whose infra container (Podman's own `pause`, built
locally, no registry) runs for as long as the network exists: no workload's stop is ever the network's last.
Removing a network stops its keeper last, which lifts the rule, so the removal then restarts another keeper,
whose start puts the rule back.

A keeper is found by its own label, `dockyard.network-keeper=<installation>`, never by the installation label
that marks managed objects: its infra container carries the pod's labels, and must not look like a workload to
`list_managed` (it would be a zombie to remove). Docker isolates bridge networks by rules that no container's
stop removes, so it has no keepers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import docker
import requests

from dockyard.runtimes.base import RuntimeFailure
from dockyard.runtimes.engine_objects import podman_message

Call = Callable[..., Awaitable[Any]]

LABEL_KEEPER = "dockyard.network-keeper"  # on a keeper pod and its infra container: the installation it keeps for
LABEL_KEPT = "dockyard.network"  # the network it keeps
_LIBPOD_PODS = "/v4.0.0/libpod/pods"


def keeper_name(network: str) -> str:
    return f"{network}-keeper"


def is_keeper(container: dict[str, Any]) -> bool:
    """Whether a container of the engine's list is a keeper's infra container."""
    return LABEL_KEEPER in (container.get("Labels") or {})


class NetworkKeepers:
    """The keeper pods of one Podman engine's networks; `call` runs a blocking SDK call the way the runtime does."""

    def __init__(self, call: Call) -> None:
        self._call = call

    async def _pods(
        self, client: docker.DockerClient, method: str, path: str, ok: tuple[int, ...], what: str, **kwargs: Any
    ) -> requests.Response:
        url = f"{client.api.base_url}{_LIBPOD_PODS}{path}"
        response: requests.Response = await self._call(
            client.api.request, method, url, timeout=client.api.timeout, **kwargs
        )
        if response.status_code not in ok:
            raise RuntimeFailure(f"could not {what}: {podman_message(response)}")
        return response

    async def keep(self, client: docker.DockerClient, network: str, installation_id: str) -> None:
        """Make sure `network`'s keeper exists and runs (made if missing, started if stopped: a host's restart
        stops every pod). Idempotent; a keeper made meanwhile by another process is fine."""
        name = quote(keeper_name(network), safe="")
        found = await self._pods(client, "GET", f"/{name}/json", (200, 404), f"look up the keeper of {network}")
        if found.status_code == 200 and found.json().get("State") == "Running":
            return
        if found.status_code == 404:
            body = {
                "name": keeper_name(network),
                "labels": {LABEL_KEEPER: installation_id, LABEL_KEPT: network},
                "netns": {"nsmode": "bridge"},
                "Networks": {network: {}},
            }
            await self._pods(client, "POST", "/create", (200, 201, 409), f"make the keeper of {network}", json=body)
        await self._pods(client, "POST", f"/{name}/start", (200, 304), f"start the keeper of {network}")

    async def release(self, client: docker.DockerClient, network: str, installation_id: str) -> None:
        """Remove `network`'s keeper, then restart another keeper: the removed one may have been the last container
        on its network, whose teardown lifted every network's isolation, and a start puts it back. Another of this
        installation's keepers is restarted if there is one, else any other installation's on the engine (the rule
        is the engine's, not the installation's). Call it with nothing else left on `network`."""
        name = quote(keeper_name(network), safe="")
        await self._pods(
            client, "DELETE", f"/{name}", (200, 404), f"remove the keeper of {network}", params={"force": "true"}
        )
        filters = json.dumps({"label": [LABEL_KEEPER]})
        listed = await self._pods(client, "GET", "/json", (200,), "list the keepers", params={"filters": filters})
        others = [pod for pod in listed.json() if pod.get("Name") != keeper_name(network)]
        if not others:
            return  # no isolated network is left to isolate
        own = [pod for pod in others if (pod.get("Labels") or {}).get(LABEL_KEEPER) == installation_id]
        # This installation's keepers first, then any; running ones before the rest: a keeper can be stuck (a
        # server killed while the engine stopped it leaves its infra container `Stopping`, its pod `Error`), and
        # one that will not restart must not keep another from putting the rule back.
        by_name = sorted(own, key=_name) + sorted((pod for pod in others if pod not in own), key=_name)
        failures: list[str] = []
        for pod in sorted(by_name, key=lambda pod: pod.get("Status") != "Running"):
            restart = f"/{quote(_name(pod), safe='')}/restart"
            try:
                await self._pods(client, "POST", restart, (200, 404), f"restart the keeper {_name(pod)}")
            except RuntimeFailure as failure:
                failures.append(str(failure))
                continue
            return
        raise RuntimeFailure("no network keeper restarted, isolation may be lifted: " + "; ".join(failures))


def _name(pod: dict[str, Any]) -> str:
    return str(pod["Name"])
