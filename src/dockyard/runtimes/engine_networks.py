"""The local engine's networks: made on demand when an object joins one, removed only when nothing is on it.

On Podman each is an `isolate=true` bridge: netavark drops traffic between it and every other isolated
network. Docker isolates user-defined bridge networks from one another by default (its DOCKER-ISOLATION
chains), so it needs no option. Containers of one network reach each other on it, by IP.

Podman's networks are made, looked up, listed and removed through its own API (`/libpod/networks`), never the
Docker-compatible one: before Podman 5.1 the compatible inspect and list delete `isolate` from the service's
cached copy of every network they show (containers/podman#22330), so a container the service starts on it
afterwards gets no isolation at all.

A create and a removal of the same network are serialised by a lock per name: a removal that comes first
leaves nothing for the create to find, so the create makes the network again; a create that comes first
has an object on the network before the removal looks, so the removal is refused. The look is needed on
Docker, which removes a network whose only objects are created but not started (Podman refuses). Moving an
object onto a network (`move`) holds the same lock while it connects.

An object is moved live, as `docker network connect`/`disconnect` and Podman's own connect and disconnect do it:
the object is connected to its network first, so it is never on none, then disconnected from every other; a
running object keeps running, its processes and its published ports (measured on Podman 4.3 with netavark).

On Podman each network also has a keeper (runtimes/engine_keepers.py), made with it, kept running whenever an
object joins or starts on it, and removed with it: it keeps netavark's iptables driver from lifting every
network's isolation when one network's last container stops.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import docker
import requests
from docker.errors import APIError, NotFound

from dockyard.runtimes.base import LABEL_INSTALLATION, PortBinding, RuntimeFailure
from dockyard.runtimes.engine_keepers import NetworkKeepers, is_keeper
from dockyard.runtimes.engine_objects import podman_message

Call = Callable[..., Awaitable[Any]]

# Podman's own API, at the first version that has every call used here.
_LIBPOD_NETWORKS = "/v4.0.0/libpod/networks"


def port_bindings(ports: list[PortBinding]) -> dict[str, int | tuple[str, int | None] | None]:
    """`containers.create`'s `ports`: each on its `host_ip` where one is given, else on every interface."""
    return {
        f"{port.container_port}/{port.protocol}": (port.host_ip, port.host_port) if port.host_ip else port.host_port
        for port in ports
    }


def _message(error: APIError) -> str:
    return str(error.explanation or error)


def _already(message: str) -> bool:
    """The engine's refusal of a connect or disconnect that was already done: "is already connected to network"
    (Podman), "already exists in network" (Docker), "is not connected to network" (both)."""
    lowered = message.lower()
    return "already connected" in lowered or "already exists in network" in lowered or "not connected" in lowered


class EngineNetworks:
    """The networks of one `EngineRuntime`; `call` runs a blocking SDK call the way the runtime does. Each
    method takes the client and whether the engine is Podman (`EngineFacts.kind`)."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._keepers = NetworkKeepers(call)
        # One lock per network name while anyone holds it; weak values drop a name nobody waits on.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _libpod(self, client: docker.DockerClient, method: str, path: str, **kwargs: Any) -> requests.Response:
        # The SDK's own calls carry its timeout; a plain request must be given it.
        url = f"{client.api.base_url}{_LIBPOD_NETWORKS}{path}"
        response: requests.Response = await self._call(
            client.api.request, method, url, timeout=client.api.timeout, **kwargs
        )
        return response

    @asynccontextmanager
    async def joining(
        self, client: docker.DockerClient, name: str, labels: dict[str, str], *, podman: bool
    ) -> AsyncIterator[None]:
        """Make sure `name` exists and keep it from being removed until the block, which creates the object
        that joins it, is done."""
        async with self._lock(name):
            if not await self._exists(client, name, podman):
                await self._create(client, name, labels, podman)
            if podman:
                await self._keepers.keep(client, name, labels[LABEL_INSTALLATION])
            yield

    async def keep(self, client: docker.DockerClient, networks: list[str], installation_id: str) -> None:
        """Podman: make sure the keeper of each of `networks` that is the installation's own runs (an object about
        to start there needs it: a host's restart stops every pod)."""
        own = set(await self.names(client, installation_id, podman=True))
        for name in networks:
            if name in own:
                async with self._lock(name):
                    await self._keepers.keep(client, name, installation_id)

    async def _exists(self, client: docker.DockerClient, name: str, podman: bool) -> bool:
        if podman:
            response = await self._libpod(client, "GET", f"/{quote(name, safe='')}/exists")
            if response.status_code in (204, 404):
                return response.status_code == 204
            raise RuntimeFailure(f"could not look up network {name}: {podman_message(response)}")
        try:
            await self._call(client.api.inspect_network, name)
        except NotFound:
            return False
        except APIError as error:
            raise RuntimeFailure(f"could not look up network {name}: {_message(error)}") from error
        return True

    async def _create(self, client: docker.DockerClient, name: str, labels: dict[str, str], podman: bool) -> None:
        """Make it; one made meanwhile by another process is fine (409 from both engines)."""
        if podman:
            # No DNS server, as on Podman's default network: aardvark-dns would answer on the bridge's gateway,
            # an address of the host that other organizations' containers reach too.
            body = {"name": name, "driver": "bridge", "labels": labels, "options": {"isolate": "true"}}
            response = await self._libpod(client, "POST", "/create", json={**body, "dns_enabled": False})
            if response.status_code not in (200, 201, 409):
                raise RuntimeFailure(f"could not create network {name}: {podman_message(response)}")
            return
        try:
            await self._call(client.api.create_network, name, driver="bridge", labels=labels, check_duplicate=True)
        except APIError as error:
            if error.status_code != 409 and "already exists" not in _message(error).lower():
                raise RuntimeFailure(f"could not create network {name}: {_message(error)}") from error

    async def move(
        self,
        client: docker.DockerClient,
        object_id: str,
        name: str,
        leave: list[str],
        labels: dict[str, str],
        *,
        podman: bool,
    ) -> None:
        """Connect `object_id` to `name` (made with `labels` if missing), then disconnect it from each of `leave`.
        Either step already done is fine."""
        async with self.joining(client, name, labels, podman=podman):
            await self._connection(client, "connect", object_id, name, podman)
        for other in leave:
            await self._connection(client, "disconnect", object_id, other, podman)

    async def _connection(
        self, client: docker.DockerClient, action: str, object_id: str, name: str, podman: bool
    ) -> None:
        """`action` ("connect" or "disconnect") `object_id` to or from `name`; already so is fine."""
        failed = f"could not {action} {object_id} {'to' if action == 'connect' else 'from'} network {name}"
        if podman:
            # Podman's own connect takes `container`; its disconnect is the compatible handler's (`Container`).
            body = {"container": object_id} if action == "connect" else {"Container": object_id}
            response = await self._libpod(client, "POST", f"/{quote(name, safe='')}/{action}", json=body)
            if response.status_code == 200:
                return
            message = podman_message(response)
            if _already(message):
                return
            raise RuntimeFailure(f"{failed}: {message}")
        call = (
            client.api.connect_container_to_network
            if action == "connect"
            else client.api.disconnect_container_from_network
        )
        try:
            await self._call(call, object_id, name)
        except APIError as error:
            if not _already(_message(error)):
                raise RuntimeFailure(f"{failed}: {_message(error)}") from error

    async def names(self, client: docker.DockerClient, installation_id: str, *, podman: bool) -> list[str]:
        """The networks labelled with `installation_id`."""
        label = f"{LABEL_INSTALLATION}={installation_id}"
        if podman:
            response = await self._libpod(client, "GET", "/json", params={"filters": json.dumps({"label": [label]})})
            if response.status_code != 200:
                raise RuntimeFailure(f"could not list networks: {podman_message(response)}")
            found = [(str(n["name"]), n.get("labels") or {}) for n in response.json()]
        else:
            try:
                listed: list[dict[str, Any]] = await self._call(client.api.networks, filters={"label": [label]})
            except APIError as error:
                raise RuntimeFailure(f"could not list networks: {_message(error)}") from error
            found = [(str(n["Name"]), n.get("Labels") or {}) for n in listed]
        # Only labelled ones: a filter some engine version ignored must not hand out another's network.
        return sorted(name for name, labels in found if labels.get(LABEL_INSTALLATION) == installation_id)

    async def remove(self, client: docker.DockerClient, name: str, installation_id: str, *, podman: bool) -> None:
        """Remove it unless an object, created or running, is on it (`RuntimeFailure` then); missing is fine."""
        async with self._lock(name):
            try:
                listed: list[dict[str, Any]] = await self._call(
                    client.api.containers, all=True, filters={"network": [name]}
                )
            except APIError as error:
                raise RuntimeFailure(f"could not list the containers on network {name}: {_message(error)}") from error
            users = [container for container in listed if not is_keeper(container)]
            if users:
                raise RuntimeFailure(f"network {name} is in use by {len(users)} container(s): remove them first")
            if podman:
                await self._keepers.release(client, name, installation_id)
                response = await self._libpod(client, "DELETE", f"/{quote(name, safe='')}")
                if response.status_code not in (200, 204, 404):
                    raise RuntimeFailure(f"could not remove network {name}: {podman_message(response)}")
                return
            try:
                await self._call(client.api.remove_network, name)
            except NotFound:
                return
            except APIError as error:
                raise RuntimeFailure(f"could not remove network {name}: {_message(error)}") from error
