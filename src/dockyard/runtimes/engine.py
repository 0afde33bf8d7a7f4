"""The local container engine runtime: Docker or Podman through the Docker Engine API (`docker` SDK).

The SDK blocks, so every call runs in a worker thread. The engine is probed lazily on first use (which
engine, the host's CPU count) and the answer cached: the server builds runtimes at start even when the
engine is down, and construction does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import Mount as DockerMount

from dockyard.runtimes.base import (
    LABEL_INSTALLATION,
    LABEL_MANAGED,
    LABEL_ORG,
    ExecResult,
    HostCapacity,
    PortTaken,
    PullPolicy,
    RunSpec,
    RuntimeFailure,
    RuntimeObject,
    RuntimeUnavailable,
)
from dockyard.runtimes.engine_networks import EngineNetworks, port_bindings
from dockyard.runtimes.engine_objects import (
    is_name_conflict,
    is_port_taken,
    is_storage_opt_unsupported,
    is_volume_size_unsupported,
    object_from_inspect,
    object_from_listing,
    start_failure_reason,
)
from dockyard.runtimes.images import ImageReference, names_image, parse_reference
from dockyard.runtimes.nvidia import ContainerEdits, NvidiaHost, gpu_options, library_path
from dockyard.runtimes.spec_check import check_gpu_edits, check_run_spec

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class EngineFacts:
    """What the engine said about itself when first reached."""

    kind: str  # "podman" or "docker"
    version: str
    cpus: int
    memory_mb: int = 0
    nvidia_runtime: bool = False  # Docker with the NVIDIA Container Toolkit's runtime, which takes device requests

    @property
    def description(self) -> str:
        return f"{self.kind} {self.version}"


def engine_facts(version: dict[str, Any], info: dict[str, Any]) -> EngineFacts:
    """Which engine answers, from the components `GET /version` lists (never from version numbers)."""
    cpus, memory_mb = int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0) // (1024 * 1024)
    for component in version.get("Components") or []:
        name = str(component.get("Name") or "")
        if name.lower().startswith("podman"):
            return EngineFacts("podman", str(component.get("Version") or ""), cpus, memory_mb)
    nvidia = "nvidia" in (info.get("Runtimes") or {})
    return EngineFacts("docker", str(version.get("Version") or ""), cpus, memory_mb, nvidia)


class EngineRuntime:
    """`Runtime` over Docker or Podman. `network_mode` is handed to every container when set ("slirp4netns"
    where the host has no iptables), in place of `RunSpec.network`; it may never be "host", since containers
    run unprivileged. `host_path_root` is the only directory whose files may be bind-mounted (the server's data
    dir, for SSH keys); None mounts no host path. `nvidia` attaches real GPUs where the engine takes no device
    request (runtimes/nvidia.py; one that finds the driver through `ldconfig` when not given). Every `RunSpec`,
    and every device node and driver file attached for its GPUs, is checked (runtimes/spec_check.py) before
    `create` builds an engine option from it."""

    def __init__(
        self,
        url: str,
        *,
        installation_id: str,
        network_mode: str = "",
        host_path_root: Path | None = None,
        nvidia: NvidiaHost | None = None,
    ) -> None:
        if network_mode == "host":
            raise ValueError(
                "engine_network_mode 'host' would give containers the host's network: "
                "leave it empty, or use 'bridge' or 'slirp4netns'"
            )
        self.url = url
        self.installation_id = installation_id
        self.network_mode = network_mode
        self.host_path_root = host_path_root
        self.nvidia = nvidia if nvidia is not None else NvidiaHost()
        self._client: docker.DockerClient | None = None
        self._facts: EngineFacts | None = None
        self._probe_lock = asyncio.Lock()
        self._storage_opt_supported = True  # until the engine refuses it once
        self._networks = EngineNetworks(self._call)
        self.volume_sizes_capped = True  # until the engine refuses a volume's size once
        # The last inspect of each managed object, for what the list endpoint lacks (OOM, error, start and
        # finish times); it holds while the object stays in the state it was inspected in.
        self._details: dict[str, RuntimeObject] = {}

    # -- plumbing -------------------------------------------------------------------------------------------

    def _unavailable(self, error: Exception) -> RuntimeUnavailable:
        return RuntimeUnavailable(
            f"cannot reach the container engine at {self.url}: {error}; is `podman system service` running?"
        )

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking SDK call in a thread; connection trouble becomes `RuntimeUnavailable`."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            raise self._unavailable(error) from error

    async def _connect(self) -> tuple[docker.DockerClient, EngineFacts]:
        client = await self._call(docker.DockerClient, base_url=self.url, version="auto")
        try:
            version, info = await asyncio.gather(self._call(client.version), self._call(client.info))
        except BaseException:
            client.close()
            raise
        return client, engine_facts(version, info)

    async def _ready(self) -> tuple[docker.DockerClient, EngineFacts]:
        """The client and the engine's facts, probing once; a failed probe is retried on the next call."""
        if self._client is not None and self._facts is not None:
            return self._client, self._facts
        async with self._probe_lock:
            if self._client is not None and self._facts is not None:  # probed while this call waited
                return self._client, self._facts
            try:
                client, facts = await self._connect()
            except DockerException as error:  # the SDK's "Error while fetching server API version"
                raise self._unavailable(error) from error
            log.info(
                "container engine at %s is %s with %d CPUs and %d MB of memory",
                self.url,
                facts.description,
                facts.cpus,
                facts.memory_mb,
            )
            self._client, self._facts = client, facts
            return client, facts

    async def _inspect_attrs(self, object_id: str) -> dict[str, Any] | None:
        client, _ = await self._ready()
        try:
            attrs: dict[str, Any] = await self._call(client.api.inspect_container, object_id)
        except NotFound:
            return None
        except APIError as error:
            # Podman 4.3 answers 500, not 404, for a container removed while it is being inspected (two loops
            # list and remove concurrently): that is a missing object, not an engine that cannot be reached.
            if "no such container" in str(error.explanation or error).lower():
                return None
            raise self._unavailable(error) from error
        return attrs

    # -- the contract ---------------------------------------------------------------------------------------

    async def probe(self) -> str:
        _, facts = await self._ready()
        return facts.description

    async def capacity(self) -> HostCapacity:
        _, facts = await self._ready()
        return HostCapacity(float(facts.cpus), facts.memory_mb)

    async def create(self, spec: RunSpec) -> RuntimeObject:
        check_run_spec(spec, host_root=self.host_path_root)
        client, facts = await self._ready()
        if existing := await self.inspect(spec.name):
            return existing
        image_id = await self._ensure_image(client, spec)
        for mount in spec.mounts:
            if mount.volume:
                await self.ensure_volume(mount.volume, self._own_labels(), mount.size_gb)
        edits, image_env = None, {}
        if any(not gpu.simulated for gpu in spec.gpus) and not facts.nvidia_runtime:
            edits = await self._call(self.nvidia.edits, [gpu for gpu in spec.gpus if not gpu.simulated])
            check_gpu_edits(spec.name, edits, dev=self.nvidia.dev)
            image_env = await self._image_env(client, image_id)
        # By id: the object runs the image `_ensure_image` checked, even if its name is re-tagged meanwhile.
        options = self._create_options(replace(spec, image=image_id), facts, edits, image_env)
        try:
            async with self._joining(client, spec, facts):
                container_id = await self._create_container(client, options)
        except APIError as error:
            message = str(error.explanation or error)
            if is_name_conflict(error.status_code, message) and (existing := await self.inspect(spec.name)):
                return existing  # made by a concurrent create of the same object
            raise RuntimeFailure(f"the container engine refused to create {spec.name}: {message}") from error
        created = await self.inspect(container_id)
        if created is None:
            raise RuntimeFailure(f"{spec.name} vanished right after it was created: check the engine's log")
        return created

    async def _create_container(self, client: docker.DockerClient, options: dict[str, Any]) -> str:
        """Create it, dropping the root filesystem size limit where the engine's storage cannot enforce one."""
        try:
            container = await self._call(client.containers.create, **options)
        except APIError as error:
            if "storage_opt" not in options or not is_storage_opt_unsupported(str(error.explanation or error)):
                raise
            self._storage_opt_supported = False
            log.debug("the engine cannot limit root filesystem size (%s); creating without it", error.explanation)
            options = {key: value for key, value in options.items() if key != "storage_opt"}
            container = await self._call(client.containers.create, **options)
        return str(container.id)

    def _own_labels(self) -> dict[str, str]:
        return {LABEL_MANAGED: "true", LABEL_INSTALLATION: self.installation_id}

    def _joining(
        self, client: docker.DockerClient, spec: RunSpec, facts: EngineFacts
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Holds `spec.network`, made if missing, while the object joining it is created."""
        if self.network_mode or not spec.network:
            return contextlib.nullcontext()
        labels = self._own_labels()
        if org := spec.labels.get(LABEL_ORG):
            labels[LABEL_ORG] = org
        return self._networks.joining(client, spec.network, labels, podman=facts.kind == "podman")

    async def _image_env(self, client: docker.DockerClient, image_id: str) -> dict[str, str]:
        """The variables the image sets (`ENV`), which a variable set at create replaces rather than extends."""
        image = await self._call(client.images.get, image_id)
        pairs = (entry.partition("=") for entry in (image.attrs.get("Config") or {}).get("Env") or [])
        return {name: value for name, _, value in pairs}

    def _create_options(
        self,
        spec: RunSpec,
        facts: EngineFacts,
        edits: ContainerEdits | None = None,
        image_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for `containers.create`: unprivileged, limited, labelled. `edits` attach the real
        GPUs where the engine takes no device request; the driver's directory then leads `LD_LIBRARY_PATH`, before
        what the request or else the image (`image_env`) sets."""
        environment = dict(spec.env)
        options: dict[str, Any] = {
            "image": spec.image,
            "name": spec.name,
            "labels": {**spec.labels, **self._own_labels()},
            "detach": True,
            "privileged": False,
            "security_opt": ["no-new-privileges"],
            "ports": port_bindings(spec.ports),
            "mounts": [
                DockerMount(
                    target=mount.target,
                    source=mount.volume or mount.host_path,
                    type="volume" if mount.volume else "bind",
                    read_only=mount.read_only,
                )
                for mount in spec.mounts
            ],
        }
        if spec.entrypoint is not None:
            options["entrypoint"] = spec.entrypoint
        if spec.command is not None:
            options["command"] = spec.command
        if self.network_mode:
            options["network_mode"] = self.network_mode
        elif spec.network:
            options["network"] = spec.network
        if spec.cpu > 0:
            cpu = spec.cpu
            if facts.cpus and cpu > facts.cpus:
                log.info("%s asks for %s CPUs; the host has %d, so it gets %d", spec.name, cpu, facts.cpus, facts.cpus)
                cpu = facts.cpus
            options["nano_cpus"] = int(cpu * 1_000_000_000)
        if spec.memory_mb > 0:
            # Memory+swap equal to memory: left unset, Docker grants as much swap again and the limit leaks.
            options["mem_limit"] = options["memswap_limit"] = spec.memory_mb * 1024 * 1024
        if spec.pids_limit > 0:
            options["pids_limit"] = spec.pids_limit
        if spec.rootfs_size_gb:
            if self._storage_opt_supported:
                options["storage_opt"] = {"size": f"{spec.rootfs_size_gb}G"}
            else:
                log.debug("root filesystem size of %s not limited: the engine's storage cannot", spec.name)
        gpus = gpu_options(spec.gpus, facts.nvidia_runtime, edits)
        environment.update(gpus.pop("environment"))
        options["mounts"] += gpus.pop("mounts", [])
        options.update(gpus)
        if edits is not None:
            current = environment.get("LD_LIBRARY_PATH", (image_env or {}).get("LD_LIBRARY_PATH", ""))
            environment["LD_LIBRARY_PATH"] = library_path(current)
        options["environment"] = environment
        return options

    async def _ensure_image(self, client: docker.DockerClient, spec: RunSpec) -> str:
        """The id of the local image `spec.image` names, pulled as `spec.pull_policy` says (the contract's
        `create`). Looked up by its fully qualified name and then checked to be one of the image's own names:
        the engine's lookup also answers short names and id prefixes with images pulled for someone else."""
        reference = parse_reference(spec.image)
        auth = spec.registry_auth
        auth_config = {"username": auth.username, "password": auth.password} if auth else None
        always = spec.pull_policy == PullPolicy.ALWAYS
        if not always and (present := await self._named_image(client, reference)) is not None:
            return present
        why = await self._call(self._pull, client, reference, auth_config)
        if why and always:
            raise RuntimeFailure(
                f"image {spec.image} needs registry credentials that can pull it: {why}; "
                "give it credentials that its registry accepts"
            )
        if (pulled := await self._named_image(client, reference)) is not None:
            return pulled
        detail = f" ({why})" if why else ""
        raise RuntimeFailure(f"image {spec.image} not found{detail}: build or push it, or fix the template's image")

    async def _named_image(self, client: docker.DockerClient, reference: ImageReference) -> str | None:
        """The id of the local image that has `reference` among its names, or None."""
        try:
            image = await self._call(client.images.get, reference.full)
        except ImageNotFound:
            return None
        tags, digests = image.attrs.get("RepoTags") or [], image.attrs.get("RepoDigests") or []
        return str(image.id) if names_image(reference, tags, digests) else None

    @staticmethod
    def _pull(client: docker.DockerClient, reference: ImageReference, auth_config: dict[str, str] | None) -> str:
        """Pull it; returns the engine's error, if any. Errors arrive inside the progress stream, not as a status."""
        try:
            for event in client.api.pull(
                reference.repository, tag=reference.pull_tag, stream=True, decode=True, auth_config=auth_config
            ):
                if isinstance(event, dict) and event.get("error"):
                    return str(event["error"])
        except APIError as error:
            return str(error.explanation or error)
        return ""

    async def start(self, object_id: str) -> RuntimeObject:
        client, facts = await self._ready()
        self._details.pop(object_id, None)
        if facts.kind == "podman" and not self.network_mode:
            await self._keep_networks_of(client, object_id)
        try:
            await self._call(client.api.start, object_id)
        except NotFound as error:
            raise RuntimeFailure(f"container {object_id} not found: create it first") from error
        except APIError as error:
            message = str(error.explanation or error)
            failure = PortTaken if is_port_taken(message) else RuntimeFailure
            raise failure(start_failure_reason(message)) from error
        started = await self.inspect(object_id)
        if started is None:
            raise RuntimeFailure(f"container {object_id} vanished right after it started: check the engine's log")
        self._details.pop(started.id, None)
        return started

    async def _keep_networks_of(self, client: docker.DockerClient, object_id: str) -> None:
        """The keepers of the networks the object is on run before it starts (engine_keepers.py says why)."""
        attrs = await self._inspect_attrs(object_id)
        if attrs is not None:
            networks = list(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys())
            await self._networks.keep(client, networks, self.installation_id)

    async def stop(self, object_id: str, timeout: int = 10) -> None:
        client, _ = await self._ready()
        try:
            await self._call(client.api.stop, object_id, timeout=timeout)
        except NotFound:
            return
        except APIError as error:
            raise RuntimeFailure(f"could not stop {object_id}: {error.explanation or error}") from error

    async def restart(self, object_id: str, timeout: int = 10) -> RuntimeObject:
        await self.stop(object_id, timeout)
        return await self.start(object_id)

    async def remove(self, object_id: str) -> None:
        """Force-removes it with its anonymous volumes (`v`); named volumes are never removed here."""
        client, _ = await self._ready()
        try:
            await self._call(client.api.remove_container, object_id, v=True, force=True)
        except NotFound:
            return
        except APIError as error:
            if "already in progress" in str(error.explanation or "").lower():
                return
            raise RuntimeFailure(f"could not remove {object_id}: {error.explanation or error}") from error
        finally:
            self._details.pop(object_id, None)

    async def inspect(self, object_id: str) -> RuntimeObject | None:
        attrs = await self._inspect_attrs(object_id)
        return self._reported(object_from_inspect(attrs)) if attrs is not None else None

    def _reported(self, obj: RuntimeObject) -> RuntimeObject:
        """`obj` as the contract reports it: on no network of Dockyard's choosing under a network mode of its own."""
        return replace(obj, networks=()) if self.network_mode else obj

    async def list_managed(self) -> list[RuntimeObject]:
        """One list call for every object of this installation (it runs every reconcile pass).

        The list lacks OOM, error and the start and finish times, so an object is inspected when it is first
        seen and again whenever its listed state differs from the state it was inspected in; otherwise the
        cached inspect is returned. `start` drops the cache entry, since it changes the start time but maybe
        not the state. Trade-off: an object restarted behind Dockyard's back that is back in the same state
        by the next pass keeps its earlier details."""
        client, _ = await self._ready()
        label = f"{LABEL_INSTALLATION}={self.installation_id}"
        try:
            entries: list[dict[str, Any]] = await self._call(
                client.api.containers, all=True, filters={"label": [label]}
            )
        except APIError as error:
            raise self._unavailable(error) from error
        listed = [object_from_listing(entry) for entry in entries]
        # Only labelled objects: a filter some engine version ignored must not hand out unlabelled ones.
        listed = [obj for obj in listed if obj.labels.get(LABEL_INSTALLATION) == self.installation_id]
        for gone in set(self._details) - {obj.id for obj in listed}:
            del self._details[gone]
        changed = [obj.id for obj in listed if (known := self._details.get(obj.id)) is None or known.state != obj.state]
        for object_id, details in zip(changed, await asyncio.gather(*(self.inspect(i) for i in changed)), strict=True):
            if details is None:  # removed between the list and the inspect
                self._details.pop(object_id, None)
            else:
                self._details[object_id] = details
        # The networks come from the list, not the cached inspect: a move changes them, not the state.
        return [
            self._reported(replace(self._details[obj.id], networks=obj.networks))
            for obj in listed
            if obj.id in self._details
        ]

    async def logs(
        self,
        object_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[bytes]:
        client, _ = await self._ready()
        # The SDK refuses a `since` at or before the epoch (InvalidArgument) where the engine would answer all.
        seconds = since.timestamp() if since is not None else 0.0
        try:
            stream = await self._call(
                client.api.logs,
                object_id,
                stdout=True,
                stderr=True,
                stream=True,
                follow=follow,
                tail=tail if tail is not None else "all",
                since=seconds if seconds > 0 else None,
                timestamps=timestamps,
            )
        except NotFound as error:
            raise RuntimeFailure(f"container {object_id} not found: it may have been removed") from error
        except DockerException as error:
            detail = error.explanation if isinstance(error, APIError) and error.explanation else str(error)
            raise RuntimeFailure(f"the engine refused to read the logs of {object_id}: {detail}") from error
        try:
            while True:
                chunk: bytes | None = await self._call(next, stream, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            # Closing the socket ends a read blocked in the worker thread, so an abandoned follow frees it.
            stream.close()

    async def exec(self, object_id: str, command: list[str]) -> ExecResult:
        client, _ = await self._ready()
        try:
            container = await self._call(client.containers.get, object_id)
            exit_code, output = await self._call(container.exec_run, command)
        except NotFound as error:
            raise RuntimeFailure(f"container {object_id} not found: it may have been removed") from error
        except APIError as error:
            raise RuntimeFailure(
                f"cannot run a command in {object_id}: {error.explanation or error}; start it first"
            ) from error
        data = output if isinstance(output, bytes) else b"".join(output or [])
        return ExecResult(int(exit_code or 0), data.decode(errors="replace"))

    async def ensure_volume(self, name: str, labels: dict[str, str], size_gb: int = 0) -> None:
        """Podman caps a local volume with `o=size=` where its volume directory is on XFS with project quotas, and
        refuses the option elsewhere; Docker's local driver caps only tmpfs volumes, which do not outlive a
        reboot, so a Docker volume is never capped. A refusal is remembered: later volumes skip the attempt."""
        client, facts = await self._ready()
        try:
            await self._call(client.volumes.get, name)
            return
        except NotFound:
            pass
        options: dict[str, str] = {}
        if size_gb and self.volume_sizes_capped and facts.kind == "podman":
            options["o"] = f"size={size_gb}g"
        try:
            await self._create_volume(client, name, labels, options)
        except APIError as error:
            message = str(error.explanation or error)
            if not options or not is_volume_size_unsupported(message):
                raise RuntimeFailure(f"could not create volume {name}: {message}") from error
            self.volume_sizes_capped = False
            log.warning(
                "the container engine cannot cap volume sizes (%s): network storages are made without a size "
                "limit and their declared sizes only count against the quotas; see README (Operating)",
                message,
            )
            try:
                await self._create_volume(client, name, labels, {})
            except APIError as again:
                raise RuntimeFailure(f"could not create volume {name}: {again.explanation or again}") from again

    async def _create_volume(
        self, client: docker.DockerClient, name: str, labels: dict[str, str], options: dict[str, str]
    ) -> None:
        try:
            await self._call(
                client.volumes.create, name, driver_opts=options or None, labels={**labels, **self._own_labels()}
            )
        except APIError as error:
            if error.status_code == 409 or "already exists" in str(error.explanation or "").lower():
                return  # created concurrently
            raise

    async def remove_volume(self, name: str) -> None:
        client, _ = await self._ready()
        try:
            await self._call(client.api.remove_volume, name)
        except NotFound:
            return
        except APIError as error:
            if error.status_code == 409 or "in use" in str(error.explanation or "").lower():
                raise RuntimeFailure(
                    f"volume {name} is in use by a container: remove that container first, then the volume"
                ) from error
            raise RuntimeFailure(f"could not remove volume {name}: {error.explanation or error}") from error

    async def list_networks(self) -> list[str]:
        client, facts = await self._ready()
        return await self._networks.names(client, self.installation_id, podman=facts.kind == "podman")

    async def remove_network(self, name: str) -> None:
        client, facts = await self._ready()
        await self._networks.remove(client, name, self.installation_id, podman=facts.kind == "podman")

    async def move_to_network(self, object_id: str, network: str, org: str) -> None:
        if self.network_mode:
            return
        client, facts = await self._ready()
        found = await self.inspect(object_id)
        if found is None:
            raise RuntimeFailure(f"container {object_id} not found: it may have been removed")
        labels = {**self._own_labels(), LABEL_ORG: org}
        leave = [name for name in found.networks if name != network]
        await self._networks.move(client, found.id, network, leave, labels, podman=facts.kind == "podman")
        self._details.pop(found.id, None)

    async def close(self) -> None:
        async with self._probe_lock:
            if self._client is not None:
                await asyncio.to_thread(self._client.close)
            self._client = None
            self._facts = None
