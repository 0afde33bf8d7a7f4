"""An in-memory runtime that keeps the contract of `dockyard.runtimes.base.Runtime`, for fast unit tests
of reconciler logic. Real-engine tests prove the same behaviour on Podman; this one never stands alone."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

from dockyard.runtimes.base import (
    LABEL_INSTALLATION,
    LABEL_MANAGED,
    LABEL_ORG,
    ExecResult,
    HostCapacity,
    ObjectState,
    PortTaken,
    PublishedPort,
    PullPolicy,
    RegistryAuth,
    RunSpec,
    RuntimeFailure,
    RuntimeObject,
    RuntimeUnavailable,
)

DEFAULT_NETWORK = "default"
"""Where the fake puts an object whose `RunSpec.network` is "" (Podman's `podman`, Docker's `bridge`)."""


FAKE_LOG_TIME = b"2026-01-01T00:00:00.000000001Z"  # every line's time when read with timestamps


class FakeRuntime:
    def __init__(self, installation_id: str = "test", images: set[str] | None = None) -> None:
        self.installation_id = installation_id
        self.images = images if images is not None else {"localhost/busybox:latest"}
        self.objects: dict[str, RuntimeObject] = {}
        self.specs: dict[str, RunSpec] = {}
        self.volumes: dict[str, dict[str, str]] = {}
        self.networks: dict[str, dict[str, str]] = {}  # name -> labels
        self.output: dict[str, list[bytes]] = {}
        self.calls: list[tuple[str, str]] = []
        self.available = True
        self.fail_start: dict[str, str] = {}  # image -> reason
        self.taken_ports: set[int] = set()  # host ports something else on the host holds
        # image -> the only credentials its registry accepts; in `images` too once pulled, which a create with
        # `PullPolicy.IF_NOT_PRESENT` then runs whoever asks (the host's cache is shared)
        self.private: dict[str, RegistryAuth] = {}
        # The host's size: far beyond what a test asks, unless the test is about capacity.
        self.host = HostCapacity(cpus=1024.0, memory_mb=16 * 1024 * 1024)
        self._ids = itertools.count(1)
        self._ports = itertools.count(30000)

    def _check(self) -> None:
        if not self.available:
            raise RuntimeUnavailable("fake runtime is down")

    def _find(self, object_id: str) -> RuntimeObject | None:
        if object_id in self.objects:
            return self.objects[object_id]
        return next((o for o in self.objects.values() if o.name == object_id), None)

    async def probe(self) -> str:
        self._check()
        return "fake 1.0"

    async def create(self, spec: RunSpec) -> RuntimeObject:
        self._check()
        self.calls.append(("create", spec.name))
        if existing := self._find(spec.name):
            return existing
        accepted = self.private.get(spec.image)
        if accepted is not None and spec.pull_policy == PullPolicy.ALWAYS and spec.registry_auth != accepted:
            raise RuntimeFailure(f"image {spec.image} needs registry credentials that can pull it: unauthorized")
        if spec.image not in self.images:
            raise RuntimeFailure(f"image {spec.image} not found")
        labels = {**spec.labels, LABEL_MANAGED: "true", LABEL_INSTALLATION: self.installation_id}
        if spec.network:
            own = {LABEL_MANAGED: "true", LABEL_INSTALLATION: self.installation_id}
            self.networks.setdefault(spec.network, {**own, LABEL_ORG: spec.labels.get(LABEL_ORG, "")})
        obj = RuntimeObject(
            id=f"c{next(self._ids):06d}",
            name=spec.name,
            labels=labels,
            state=ObjectState.CREATED,
            networks=(spec.network or DEFAULT_NETWORK,),
        )
        self.objects[obj.id] = obj
        self.specs[obj.id] = spec
        self.output[obj.id] = []
        return obj

    async def start(self, object_id: str) -> RuntimeObject:
        self._check()
        obj = self._find(object_id)
        if obj is None:
            raise RuntimeFailure(f"container {object_id} not found")
        self.calls.append(("start", obj.name))
        spec = self.specs[obj.id]
        if reason := self.fail_start.get(spec.image):
            raise RuntimeFailure(reason)
        for port in spec.ports:
            if port.host_port in self.taken_ports:
                raise PortTaken(f"host port {port.host_port} is already in use on the host")
        ports = [
            PublishedPort(p.container_port, p.host_port or next(self._ports), p.protocol, p.host_ip) for p in spec.ports
        ]
        obj = replace(obj, state=ObjectState.RUNNING, ports=ports, started_at=datetime.now(UTC), exit_code=None)
        self.objects[obj.id] = obj
        return obj

    def exit(self, object_id: str, code: int, oom: bool = False) -> None:
        """Test hook: the process inside ends by itself."""
        obj = self._find(object_id)
        assert obj is not None
        self.objects[obj.id] = replace(obj, state=ObjectState.EXITED, exit_code=code, oom_killed=oom)

    def vanish(self, object_id: str) -> None:
        """Test hook: the object disappears behind Dockyard's back."""
        obj = self._find(object_id)
        assert obj is not None
        del self.objects[obj.id]

    async def stop(self, object_id: str, timeout: int = 10) -> None:
        self._check()
        obj = self._find(object_id)
        if obj is None:
            return
        self.calls.append(("stop", obj.name))
        if obj.state == ObjectState.RUNNING:
            self.objects[obj.id] = replace(obj, state=ObjectState.EXITED, exit_code=143)

    async def restart(self, object_id: str, timeout: int = 10) -> RuntimeObject:
        await self.stop(object_id, timeout)
        return await self.start(object_id)

    async def remove(self, object_id: str) -> None:
        self._check()
        obj = self._find(object_id)
        if obj is not None:
            self.calls.append(("remove", obj.name))
            del self.objects[obj.id]

    async def inspect(self, object_id: str) -> RuntimeObject | None:
        self._check()
        return self._find(object_id)

    async def list_managed(self) -> list[RuntimeObject]:
        self._check()
        return [o for o in self.objects.values() if o.labels.get(LABEL_INSTALLATION) == self.installation_id]

    async def logs(
        self,
        object_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[bytes]:
        obj = self._find(object_id)
        if obj is None:
            raise RuntimeFailure(f"container {object_id} not found")
        lines = self.output[obj.id]
        for line in lines if tail is None else lines[max(len(lines) - tail, 0) :]:  # tail=0: none, as engines
            yield (FAKE_LOG_TIME + b" " + line) if timestamps else line

    async def exec(self, object_id: str, command: list[str]) -> ExecResult:
        return ExecResult(0, "")

    async def capacity(self) -> HostCapacity:
        self._check()
        return self.host

    async def ensure_volume(self, name: str, labels: dict[str, str], size_gb: int = 0) -> None:
        self.volumes.setdefault(name, labels)

    async def remove_volume(self, name: str) -> None:
        self.volumes.pop(name, None)

    async def list_networks(self) -> list[str]:
        self._check()
        return sorted(n for n, labels in self.networks.items() if labels[LABEL_INSTALLATION] == self.installation_id)

    async def remove_network(self, name: str) -> None:
        self._check()
        if any(name in obj.networks for obj in self.objects.values()):
            raise RuntimeFailure(f"network {name} is in use")
        self.networks.pop(name, None)

    async def move_to_network(self, object_id: str, network: str, org: str) -> None:
        self._check()
        obj = self._find(object_id)
        self.calls.append(("move", obj.name if obj is not None else object_id))
        if obj is None:
            raise RuntimeFailure(f"container {object_id} not found")
        own = {LABEL_MANAGED: "true", LABEL_INSTALLATION: self.installation_id}
        self.networks.setdefault(network, {**own, LABEL_ORG: org})
        self.objects[obj.id] = replace(obj, networks=(network,))

    async def close(self) -> None:
        return None
