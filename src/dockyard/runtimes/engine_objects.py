"""Turning the Docker Engine API's answers (Docker or Podman) into the runtime contract's objects and sentences.

Pure functions over the engine's JSON, so the mapping is testable with the exact payloads each engine sends.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import requests

from dockyard.runtimes.base import ObjectState, PublishedPort, RuntimeObject

_STATES = {
    "created": ObjectState.CREATED,
    "configured": ObjectState.CREATED,  # Podman's name for a container it has not initialised yet
    "running": ObjectState.RUNNING,
    "exited": ObjectState.EXITED,
    "stopped": ObjectState.EXITED,  # Podman's name for exited in its native API
    "paused": ObjectState.PAUSED,
}

# The engines' "never happened" timestamp (Go's zero time).
_ZERO_TIME_PREFIX = "0001-01-01"

# `Status` in the container list reads "Exited (137) 3 seconds ago" on both Docker and Podman.
_LISTED_EXIT_CODE = re.compile(r"^Exited \((-?\d+)\)")

# "listen tcp4 :8080: bind: address already in use" (Podman, Docker's userland proxy) and
# "Bind for 0.0.0.0:8080 failed: port is already allocated" (Docker).
_TAKEN_PORT = re.compile(r"(?:Bind for \S*?:|listen (?:tcp|udp)[46]? \S*?:)(\d+)")
_EXECUTABLE = re.compile(r'exec: "([^"]+)"')


def map_state(status: str) -> ObjectState:
    return _STATES.get(status.lower(), ObjectState.OTHER)


def parse_engine_time(value: str | None) -> datetime | None:
    """An aware datetime from the engine's RFC 3339 text; None for empty or Go's zero time."""
    if not value or value.startswith(_ZERO_TIME_PREFIX):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _dedupe(ports: list[PublishedPort]) -> list[PublishedPort]:
    """Docker reports each published port once per address family (0.0.0.0 and ::); keep the first."""
    seen: set[tuple[int, int, str]] = set()
    unique: list[PublishedPort] = []
    for port in ports:
        key = (port.container_port, port.host_port, port.protocol)
        if key not in seen:
            seen.add(key)
            unique.append(port)
    return unique


def ports_from_inspect(network_settings: dict[str, Any]) -> list[PublishedPort]:
    """`NetworkSettings.Ports` ({"8080/tcp": [{"HostIp": "", "HostPort": "36461"}] or None})."""
    ports: list[PublishedPort] = []
    for key, bindings in (network_settings.get("Ports") or {}).items():
        container_port, _, protocol = key.partition("/")
        for binding in bindings or []:
            host_port = binding.get("HostPort") or ""
            if host_port.isdigit():
                ports.append(
                    PublishedPort(int(container_port), int(host_port), protocol or "tcp", binding.get("HostIp") or "")
                )
    return _dedupe(ports)


def _ip_address(network_settings: dict[str, Any]) -> str:
    address: str = network_settings.get("IPAddress") or ""
    if address:
        return address
    for network in (network_settings.get("Networks") or {}).values():
        if network and network.get("IPAddress"):
            return str(network["IPAddress"])
    return ""


def networks_of(network_settings: dict[str, Any]) -> tuple[str, ...]:
    """The names of the networks in `NetworkSettings.Networks` (null for a container in a network mode of its own,
    as slirp4netns), sorted."""
    return tuple(sorted(network_settings.get("Networks") or {}))


def object_from_inspect(attrs: dict[str, Any]) -> RuntimeObject:
    """A `RuntimeObject` from `GET /containers/{id}/json`."""
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    network_settings = attrs.get("NetworkSettings") or {}
    mapped = map_state(str(state.get("Status") or ""))
    return RuntimeObject(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name") or "").lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        state=mapped,
        exit_code=int(state.get("ExitCode") or 0) if mapped == ObjectState.EXITED else None,
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
        ports=ports_from_inspect(network_settings),
        ip_address=_ip_address(network_settings),
        started_at=parse_engine_time(state.get("StartedAt")),
        finished_at=parse_engine_time(state.get("FinishedAt")),
        networks=networks_of(network_settings),
    )


def object_from_listing(entry: dict[str, Any]) -> RuntimeObject:
    """A `RuntimeObject` from one entry of `GET /containers/json`.

    The list carries state, labels, exit code (inside `Status`), published ports, addresses and networks, but not
    `OOMKilled`, `Error` or the start and finish times: those stay at their defaults here.
    """
    mapped = map_state(str(entry.get("State") or ""))
    exit_code: int | None = None
    if mapped == ObjectState.EXITED:
        match = _LISTED_EXIT_CODE.match(str(entry.get("Status") or ""))
        exit_code = int(match.group(1)) if match else None
    ports = [
        PublishedPort(
            int(port["PrivatePort"]), int(port["PublicPort"]), port.get("Type") or "tcp", port.get("IP") or ""
        )
        for port in entry.get("Ports") or []
        if port.get("PublicPort")
    ]
    names = entry.get("Names") or [""]
    return RuntimeObject(
        id=str(entry["Id"]),
        name=str(names[0]).lstrip("/"),
        labels=dict(entry.get("Labels") or {}),
        state=mapped,
        exit_code=exit_code,
        ports=_dedupe(ports),
        ip_address=_ip_address(entry.get("NetworkSettings") or {}),
        networks=networks_of(entry.get("NetworkSettings") or {}),
    )


def is_port_taken(message: str) -> bool:
    """The engine refused to start a container because a host port it asks for is held by something else."""
    lowered = message.lower()
    return "address already in use" in lowered or "port is already allocated" in lowered


def start_failure_reason(message: str) -> str:
    """A sentence a user can act on for the engine's refusal to start a container."""
    lowered = message.lower()
    if is_port_taken(message):
        match = _TAKEN_PORT.search(message)
        port = f"host port {match.group(1)}" if match else "a requested host port"
        return f"{port} is already in use on the host: free it, or publish the container on another host port"
    executable = _EXECUTABLE.search(message)
    if executable and ("not found" in lowered or "no such file" in lowered):
        return (
            f"the command {executable.group(1)} does not exist in the image: "
            "fix the entrypoint or command, or use an image that contains it"
        )
    if executable and "permission denied" in lowered:
        return (
            f"the command {executable.group(1)} is not executable in the image: "
            "fix its permissions in the image, or run it through a shell"
        )
    if "no such file or directory" in lowered and ("mount" in lowered or "bind" in lowered):
        return f"a mounted host path does not exist: create it or fix the mount ({message})"
    return f"the container engine could not start the container: {message}"


def is_name_conflict(status_code: int | None, message: str) -> bool:
    """Docker answers 409 for a taken container name; Podman 4 answers 500 with "already in use"."""
    lowered = message.lower()
    return status_code == 409 or ("name" in lowered and "already in use" in lowered)


def is_volume_size_unsupported(message: str) -> bool:
    """The engine's volume storage cannot cap a volume's size (Podman off XFS with project quotas says "Filesystem
    does not support Project Quota")."""
    lowered = message.lower()
    return "project quota" in lowered or ("size" in lowered and "not supported" in lowered)


def is_storage_opt_unsupported(message: str) -> bool:
    """The engine's storage driver cannot limit a container's root filesystem size."""
    lowered = message.lower()
    return "storage-opt" in lowered or "storage opt" in lowered


def podman_message(response: requests.Response) -> str:
    """The message of an error answer of Podman's own API (`{"cause", "message", "response"}`), else its text."""
    try:
        return str(response.json().get("message") or response.text)
    except ValueError:
        return response.text
