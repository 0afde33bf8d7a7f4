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
from dockyard.runtimes.nvidia import BINARIES, BINARY_DIR, LIBRARY_DIR, ContainerEdits

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
# The device nodes a GPU container may be given (runtimes/nvidia.py), and the names of the driver's libraries.
_NVIDIA_DEVICE = re.compile(r"nvidia(?:[0-9]{1,3}|ctl|-uvm|-uvm-tools|-modeset)")
_DRIVER_LIBRARY = re.compile(r"lib[A-Za-z0-9_+-]+\.so(?:\.[0-9.]+)?")
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


def _plain_host_path(path: str) -> bool:
    """Absolute, normal, and free of what would end an engine option (a comma, a colon) or a line."""
    return (
        os.path.isabs(path)
        and os.path.normpath(path) == path
        and "," not in path
        and ":" not in path
        and text_problem(path) is None
    )


def gpu_edits_problem(edits: ContainerEdits, *, dev: Path) -> str | None:
    """The first device node, driver file or variable of `edits` the engine must not be handed, as a sentence;
    None when all are safe. Nodes are NVIDIA's only, each from `dev`, the host's /dev, at the same name inside;
    driver files are mounted read-only at a library's name in the driver's directory or a binary's in /usr/bin."""
    for node in edits.device_nodes:
        name = os.path.basename(node.path)
        if node.path != f"/dev/{name}" or not _NVIDIA_DEVICE.fullmatch(name):
            return f"device node {_shown(node.path)} is not an NVIDIA device node"
        if not _plain_host_path(node.host_path) or node.host_path != os.path.join(os.path.normpath(dev), name):
            return f"device node {_shown(node.host_path)} is not {name} of the host's {dev}"
    for mount in edits.mounts:
        if not _plain_host_path(mount.host_path):
            return f"driver file {_shown(mount.host_path)} must be an absolute path without a comma, a colon or . or .."
        directory, name = os.path.split(mount.container_path)
        library = directory == LIBRARY_DIR and _DRIVER_LIBRARY.fullmatch(name)
        if not library and not (directory == BINARY_DIR and name in BINARIES):
            return f"driver file target {_shown(mount.container_path)} is neither a driver library nor a driver binary"
    for name, value in edits.env.items():
        if name not in ("NVIDIA_VISIBLE_DEVICES", *GPU_ENV_NAMES):
            return f"GPU variable {_shown(name)} is not one the runtime sets"
        if not all(_GPU_UUID.fullmatch(uuid) for uuid in value.split(",")):
            return f"GPU variable {name}={_shown(value)} names something other than GPU UUIDs"
    return None


def check_gpu_edits(name: str, edits: ContainerEdits, *, dev: Path) -> None:
    """Raise `RuntimeFailure` naming the first unsafe part of `edits` (see `gpu_edits_problem`)."""
    if (why := gpu_edits_problem(edits, dev=dev)) is not None:
        raise RuntimeFailure(f"refused to create {name}: {why}; nothing was created")
