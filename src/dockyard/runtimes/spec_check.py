"""The engine runtime's check of a `RunSpec` before any of it becomes an engine option.

The API validates what users send, but a `RunSpec` is also built from rows stored before a rule existed, or
by any other path. The engine's compatible API turns some values into option strings (Podman writes each
mount as `--mount type=volume,source=...,target=...`), so a comma in a target once mounted another
organization's volume or the host's /etc. Every value is therefore checked here against an allow-list, and
anything else is refused with `RuntimeFailure` and a sentence: the workload ends `error` with that reason and
nothing is created. Pure: no I/O, so it runs before the engine is reached.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from dockyard.core.inputs import (
    env_name_problem,
    image_problem,
    mount_path_problem,
    mount_syntax_problem,
    normal_mount_path,
    nul_problem,
    system_mount_problem,
    text_problem,
)
from dockyard.runtimes.base import Mount, RunSpec, RuntimeFailure

# Docker's container and network name grammar.
_OBJECT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
# Named volumes are network storages only (services/runspec.py `storage_volume`): the prefix and a UUID.
VOLUME_NAME = re.compile(r"dockyard-ns-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Labels are built by Dockyard from ids, numbers and GPU UUIDs.
_LABEL_KEY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:,-]{0,1024}")
# NVML's GPU and MIG UUIDs: never a comma, which would name one more device in NVIDIA_VISIBLE_DEVICES, and never
# a word the NVIDIA toolkit reads there (`all`, `none`, `void`).
_GPU_UUID = re.compile(r"(?:GPU|MIG)-[A-Za-z0-9][A-Za-z0-9_./:-]{0,123}")
_PROTOCOLS = frozenset({"tcp", "udp"})
# Names the engines read as a network mode rather than a network: `host` would share the host's network.
_NETWORK_MODES = frozenset({"bridge", "container", "default", "host", "none", "ns", "pasta", "private", "slirp4netns"})
# The GPU variables the runtime sets itself from `RunSpec.gpus` (NVIDIA_VISIBLE_DEVICES, `void` without GPUs).
GPU_ENV_PREFIX = "NVIDIA_"
GPU_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES"})


def _shown(value: str) -> str:
    """A value as a reason quotes it: escaped, and cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _host_path_problem(mount: Mount, host_root: Path | None) -> str | None:
    """Host paths are Dockyard's own files (a container's authorized_keys), read-only, under its data dir. The
    operator chooses that directory, so its charset is free but for what would end a `--mount` option (a
    comma) or a line."""
    if host_root is None:
        return "this runtime mounts no host path"
    path = mount.host_path
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        return "must be an absolute path without . or .. segments"
    if "," in path or text_problem(path) is not None:
        return "must not contain a comma or control characters"
    root = os.path.normpath(host_root)
    if not path.startswith(root.rstrip(os.sep) + os.sep):
        return f"only files under {root} may be mounted"
    if not mount.read_only:
        return "a host path is mounted read-only only"
    return None


def _mount_problem(mount: Mount, host_root: Path | None) -> str | None:
    if bool(mount.volume) == bool(mount.host_path):
        return f"mount at {_shown(mount.target)} must name either a volume or a host path"
    if mount.volume:
        # A storage's target is the user's: the whole user rule applies.
        if (why := mount_path_problem(mount.target)) is not None:
            return f"mount target {_shown(mount.target)} {why}"
        if not VOLUME_NAME.fullmatch(mount.volume):
            return f"volume {_shown(mount.volume)} is not a network storage's volume (dockyard-ns-<uuid>)"
        return None
    # Dockyard's own host mounts may use the place it keeps for itself, but never the system's.
    if (why := mount_syntax_problem(mount.target) or system_mount_problem(normal_mount_path(mount.target))) is not None:
        return f"mount target {_shown(mount.target)} {why}"
    if (why := _host_path_problem(mount, host_root)) is not None:
        return f"host path {_shown(mount.host_path)}: {why}"
    return None


def spec_problem(spec: RunSpec, *, host_root: Path | None) -> str | None:
    """The first value of `spec` the engine must not be handed, as a sentence; None when all are safe.
    `host_root` is the only directory whose files may be bind-mounted (None: no host path at all)."""
    if not _OBJECT_NAME.fullmatch(spec.name):
        return f"object name {_shown(spec.name)} is not a valid container name"
    if (why := image_problem(spec.image)) is not None:
        return f"image {_shown(spec.image)} {why}"
    if spec.network and (not _OBJECT_NAME.fullmatch(spec.network) or spec.network.lower() in _NETWORK_MODES):
        return f"network {_shown(spec.network)} is not a valid network name (nor may it name a network mode)"
    for key, value in spec.labels.items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            return f"label {_shown(key)}={_shown(value)} holds characters a label may not"
    for name, value in spec.env.items():
        if (why := env_name_problem(name) or nul_problem(value)) is not None:
            return f"environment variable {_shown(name)} {why}"
        if name.upper().startswith(GPU_ENV_PREFIX) or name.upper() in GPU_ENV_NAMES:
            return f"environment variable {name} is set by the runtime from the GPUs allocated, never by a request"
    for part in [*(spec.entrypoint or []), *(spec.command or [])]:
        if nul_problem(part) is not None:
            return f"command argument {_shown(part)} contains the NUL character"
    targets: set[str] = set()
    for mount in spec.mounts:
        if (why := _mount_problem(mount, host_root)) is not None:
            return why
        target = normal_mount_path(mount.target)
        if target in targets:
            return f"two mounts at {target}"
        targets.add(target)
    for port in spec.ports:
        if not 1 <= port.container_port <= 65535 or not (port.host_port is None or 1 <= port.host_port <= 65535):
            return f"port {port.container_port}->{port.host_port} is outside 1-65535"
        if port.protocol not in _PROTOCOLS:
            return f"port protocol {_shown(port.protocol)} is not tcp or udp"
        if port.host_ip and not _is_ip(port.host_ip):
            return f"port {port.container_port} is published on {_shown(port.host_ip)}, which is not an IP address"
    for gpu in spec.gpus:
        if not _GPU_UUID.fullmatch(gpu.uuid):
            return f"GPU {_shown(gpu.uuid)} is not a GPU UUID"
    return None


def check_run_spec(spec: RunSpec, *, host_root: Path | None) -> None:
    """Raise `RuntimeFailure` naming the first unsafe value of `spec` (see `spec_problem`)."""
    if (why := spec_problem(spec, host_root=host_root)) is not None:
        raise RuntimeFailure(f"refused to create {spec.name}: {why}; nothing was created")
