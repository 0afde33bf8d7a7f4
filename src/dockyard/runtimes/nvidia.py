"""What a container needs from the host to run CUDA on the GPUs allocated to it, in one description.

The NVIDIA Container Toolkit gives a container its GPUs in three parts, which its CDI specification (the Container
Device Interface, `nvidia-ctk cdi generate`) lists as "container edits": the device nodes of exactly those GPUs
(`/dev/nvidiaN`, found from each GPU's minor number) and the driver's control nodes (`/dev/nvidiactl`, the UVM
nodes, `/dev/nvidia-modeset`); the driver's user-space libraries and binaries, bind-mounted read-only, since they
must match the kernel module of the host and no image can ship them; and the variables that say which GPUs these
are. `NvidiaHost.edits` builds the same list from the allocated GPUs and the driver's files found on this host, and
`ContainerEdits.cdi` writes it as a CDI specification, so a runtime that speaks CDI (Podman's native API) can take
the very list the Docker-compatible API is given as devices and mounts.

Where the toolkit mounts libraries at their host paths and runs `ldconfig` in the container from a hook, the
Docker API runs no hook: the libraries are mounted under one directory (`LIBRARY_DIR`, the one NVIDIA's CUDA images
and GKE use) under every name the host gives them (`libcuda.so.1` and the versioned file), and `LD_LIBRARY_PATH`
names that directory. Binaries go to `/usr/bin`, as the toolkit puts them.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest
from docker.types import Mount as DockerMount

from dockyard.runtimes.base import GpuDevice, RuntimeFailure

log = logging.getLogger(__name__)

# The NVIDIA Container Toolkit's value for "no GPU": without it, an image's own `ENV NVIDIA_VISIBLE_DEVICES=all`
# (every CUDA base image has one) hands a container every GPU of a host whose engine runs the toolkit's hook.
NO_GPUS = "void"
# Where the driver's libraries appear inside a container, and its binaries.
LIBRARY_DIR = "/usr/local/nvidia/lib64"
BINARY_DIR = "/usr/bin"
# Device nodes every CUDA process needs besides its GPUs' /dev/nvidiaN; attached where the host has them.
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# The toolkit's `utility` and `compute` capabilities: NVML and nvidia-smi, and CUDA with its JIT compilers.
LIBRARIES = (
    "libnvidia-ml",
    "libnvidia-cfg",
    "libcuda",
    "libcudadebugger",
    "libnvidia-opencl",
    "libnvidia-gpucomp",
    "libnvidia-ptxjitcompiler",
    "libnvidia-fatbinaryloader",
    "libnvidia-allocator",
    "libnvidia-compiler",
    "libnvidia-pkcs11",
    "libnvidia-pkcs11-openssl3",
    "libnvidia-nvvm",
)
BINARIES = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
)
# Where a driver's files lie under a driver root: a whole filesystem ("/", "/run/nvidia/driver") or a directory of
# the driver's own (/usr/local/nvidia: lib64 and bin).
_ROOT_LIBRARY_DIRS = ("lib64", "lib", "lib/x86_64-linux-gnu", "usr/lib64", "usr/lib/x86_64-linux-gnu", "usr/lib")
_ROOT_BINARY_DIRS = ("bin", "usr/bin")
# Without a driver root and where `ldconfig` knows none of them: the directories distributions and GKE use.
_USUAL_LIBRARY_DIRS = ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")
_USUAL_BINARY_DIRS = ("/usr/local/nvidia/bin", "/usr/bin")
# `ldconfig -p`: "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1".
_LDCONFIG_LINE = re.compile(r"^\s*(\S+) \(([^)]*)\) => (\S+)$")
_LIBRARY_FILE = re.compile(r"(lib[A-Za-z0-9_+-]+)\.so(?:\.[0-9.]+)?")


@dataclass(frozen=True)
class DeviceNode:
    """A device node of the host (`host_path`) made at `path` in the container."""

    path: str
    host_path: str


@dataclass(frozen=True)
class DriverMount:
    """A file of the driver, bind-mounted read-only from `host_path` to `container_path`."""

    host_path: str
    container_path: str


@dataclass(frozen=True)
class DriverFiles:
    """The driver's user-space files found on the host: each library under every name it has there, and each
    binary, by the name it has in the container -> its file on the host (links resolved)."""

    libraries: dict[str, str] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)

    @property
    def mounts(self) -> tuple[DriverMount, ...]:
        found = [DriverMount(path, f"{LIBRARY_DIR}/{name}") for name, path in sorted(self.libraries.items())]
        found += [DriverMount(path, f"{BINARY_DIR}/{name}") for name, path in sorted(self.binaries.items())]
        return tuple(found)


@dataclass(frozen=True)
class ContainerEdits:
    """What a container gets for its GPUs (CDI's `containerEdits`): device nodes, read-only driver mounts and
    variables. Built by `NvidiaHost.edits`."""

    uuids: tuple[str, ...]
    device_nodes: tuple[DeviceNode, ...]
    mounts: tuple[DriverMount, ...]
    env: dict[str, str]

    def engine_options(self) -> dict[str, Any]:
        """`containers.create` arguments: the device nodes and the driver's mounts (the variables go with the rest
        of the environment)."""
        return {
            "devices": [f"{node.host_path}:{node.path}:rwm" for node in self.device_nodes],
            "mounts": [
                DockerMount(target=m.container_path, source=m.host_path, type="bind", read_only=True)
                for m in self.mounts
            ],
        }

    def cdi(self, kind: str = "nvidia.com/gpu") -> dict[str, Any]:
        """These edits as a CDI specification (version 0.6.0): one device per GPU UUID, named by it, holding its
        own node, and the edits every one of them needs (control nodes, driver files, variables) at the top."""
        gpu_nodes = {node.path for node in self.device_nodes if _is_gpu_node(node.path)}
        per_gpu = [node for node in self.device_nodes if node.path in gpu_nodes]
        shared = [node for node in self.device_nodes if node.path not in gpu_nodes]
        return {
            "cdiVersion": "0.6.0",
            "kind": kind,
            "devices": [
                {"name": uuid, "containerEdits": {"deviceNodes": [{"path": node.path, "hostPath": node.host_path}]}}
                for uuid, node in zip(self.uuids, per_gpu, strict=True)
            ],
            "containerEdits": {
                "env": [f"{name}={value}" for name, value in sorted(self.env.items())],
                "deviceNodes": [{"path": node.path, "hostPath": node.host_path} for node in shared],
                "mounts": [
                    {
                        "hostPath": m.host_path,
                        "containerPath": m.container_path,
                        "options": ["ro", "nosuid", "nodev", "bind"],
                    }
                    for m in self.mounts
                ],
            },
        }


def _is_gpu_node(path: str) -> bool:
    return re.fullmatch(r"/dev/nvidia[0-9]+", path) is not None


def run_ldconfig() -> str:
    """`ldconfig -p`: the libraries the host's dynamic linker knows; "" where it cannot be run."""
    for command in ("ldconfig", "/sbin/ldconfig"):
        try:
            return subprocess.run([command, "-p"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
    return ""


def ldconfig_directories(listing: str, names: Iterable[str] = LIBRARIES) -> list[str]:
    """The directories in which `ldconfig -p`'s `listing` places any of the libraries `names`, 64-bit ones only,
    in the order listed."""
    wanted = set(names)
    found: list[str] = []
    for line in listing.splitlines():
        match = _LDCONFIG_LINE.match(line)
        if match is None or "64" not in match.group(2):  # "libc6,x86-64", "libc6,AArch64"; 32-bit ones name none
            continue
        stem = _LIBRARY_FILE.fullmatch(match.group(1))
        directory = os.path.dirname(match.group(3))
        if stem is not None and stem.group(1) in wanted and directory not in found:
            found.append(directory)
    return found


def find_driver_files(
    library_dirs: Iterable[str], binary_dirs: Iterable[str], names: Iterable[str] = LIBRARIES
) -> DriverFiles:
    """The driver's libraries (`names`, each file `name.so*` under every name a directory gives it, the first
    directory to have a name winning) and binaries found in the directories given. Each is resolved to the file
    it links to; a link that leads nowhere is left out."""
    wanted = set(names)
    libraries: dict[str, str] = {}
    for directory in library_dirs:
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            match = _LIBRARY_FILE.fullmatch(entry)
            if match is None or match.group(1) not in wanted or entry in libraries:
                continue
            target = os.path.realpath(os.path.join(directory, entry))
            if os.path.isfile(target):
                libraries[entry] = target
    binaries: dict[str, str] = {}
    for name in BINARIES:
        for directory in binary_dirs:
            target = os.path.realpath(os.path.join(directory, name))
            if os.path.isfile(target) and os.access(target, os.X_OK):
                binaries[name] = target
                break
    return DriverFiles(libraries, binaries)


def gpu_env(uuids: Iterable[str]) -> dict[str, str]:
    """The variables that name a container's GPUs: the toolkit's `NVIDIA_VISIBLE_DEVICES` and CUDA's
    `CUDA_VISIBLE_DEVICES`, both by UUID, which CUDA takes as well as an index, so it uses exactly these whatever
    the numbering; inside the container they are devices 0 to n-1, in this order."""
    listed = ",".join(uuids)
    return {"NVIDIA_VISIBLE_DEVICES": listed, "CUDA_VISIBLE_DEVICES": listed}


def library_path(current: str) -> str:
    """`LD_LIBRARY_PATH` with the driver's directory first, then what the image or the request set."""
    kept = [part for part in current.split(":") if part and part != LIBRARY_DIR]
    return ":".join([LIBRARY_DIR, *kept])


class NvidiaHost:
    """The host's NVIDIA device nodes and driver files, as a container engine on this host attaches them.

    `driver_root` is where the driver's files are (`DOCKYARD_NVIDIA_DRIVER_ROOT`); "" finds them through
    `ldconfig` (`ldconfig`, called once) and the usual directories. `dev` is the host's /dev. Construction does
    no I/O; the driver's files are looked up at the first GPU container and kept, since they change only with the
    driver, which needs the server restarted anyway (NVML refuses a mismatched driver)."""

    def __init__(
        self, driver_root: str = "", *, dev: Path = Path("/dev"), ldconfig: Callable[[], str] = run_ldconfig
    ) -> None:
        self.driver_root = driver_root
        self.dev = dev
        self._ldconfig = ldconfig
        self._files: DriverFiles | None = None
        self._lock = threading.Lock()

    def driver_files(self) -> DriverFiles:
        """The driver's files (found once; blocking: call it from a worker thread)."""
        with self._lock:
            if self._files is None:
                self._files = self._find()
                log.info(
                    "NVIDIA driver files for GPU containers: %d libraries and %s",
                    len(self._files.libraries),
                    ", ".join(sorted(self._files.binaries)) or "no binaries",
                )
            return self._files

    def _find(self) -> DriverFiles:
        if self.driver_root:
            root = self.driver_root
            return find_driver_files(
                [os.path.join(root, d) for d in _ROOT_LIBRARY_DIRS], [os.path.join(root, d) for d in _ROOT_BINARY_DIRS]
            )
        library_dirs = ldconfig_directories(self._ldconfig())
        library_dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
        library_dirs += list(_USUAL_LIBRARY_DIRS)
        binary_dirs = [d for d in os.environ.get("PATH", "").split(":") if d] + list(_USUAL_BINARY_DIRS)
        return find_driver_files(dict.fromkeys(library_dirs), dict.fromkeys(binary_dirs))

    def edits(self, gpus: list[GpuDevice]) -> ContainerEdits:
        """The device nodes of exactly `gpus` (real ones, by minor number) and the control nodes the host has,
        the driver's files and the variables naming `gpus`. `RuntimeFailure` when a GPU has no minor number, its
        node is missing, or the driver's CUDA library cannot be found: a container so made could not run CUDA."""
        missing = [gpu.uuid for gpu in gpus if gpu.minor < 0]
        if missing:
            raise RuntimeFailure(
                f"GPU {', '.join(missing)} has no device minor number: rediscover the node's GPUs so each has one"
            )
        nodes: list[DeviceNode] = []
        for gpu in gpus:
            host = self.dev / f"nvidia{gpu.minor}"
            if not host.exists():
                raise RuntimeFailure(
                    f"the device node /dev/nvidia{gpu.minor} of GPU {gpu.uuid} is missing on the host: "
                    "is the NVIDIA driver loaded (nvidia-smi)?"
                )
            nodes.append(DeviceNode(f"/dev/nvidia{gpu.minor}", str(host)))
        nodes += [
            DeviceNode(f"/dev/{name}", str(self.dev / name)) for name in CONTROL_DEVICES if (self.dev / name).exists()
        ]
        files = self.driver_files()
        if not any(name.startswith("libcuda.so") for name in files.libraries):
            where = f"under {self.driver_root}" if self.driver_root else "through ldconfig or the usual directories"
            raise RuntimeFailure(
                f"the NVIDIA driver's libcuda was not found {where}: set DOCKYARD_NVIDIA_DRIVER_ROOT to the "
                "directory that holds the driver's lib64 and bin"
            )
        uuids = tuple(gpu.uuid for gpu in gpus)
        return ContainerEdits(uuids, tuple(nodes), files.mounts, gpu_env(uuids))


def gpu_options(gpus: list[GpuDevice], nvidia_runtime: bool, edits: ContainerEdits | None) -> dict[str, Any]:
    """`containers.create` arguments attaching `gpus`, with the variables naming them in `environment`. Docker with
    the NVIDIA runtime (`nvidia_runtime`) takes a device request by UUID, fulfilled with the toolkit's own edits.
    Elsewhere (Podman 4's compatible API drops device requests silently) the container gets `edits`
    (`NvidiaHost.edits`). Simulated GPUs attach nothing; without any GPU the toolkit is told so (`NO_GPUS`)."""
    if not gpus:
        return {"environment": {"NVIDIA_VISIBLE_DEVICES": NO_GPUS}}
    options: dict[str, Any] = {"environment": gpu_env(gpu.uuid for gpu in gpus)}
    real = [gpu for gpu in gpus if not gpu.simulated]
    if real and nvidia_runtime:
        request = DeviceRequest(driver="nvidia", device_ids=[gpu.uuid for gpu in real], capabilities=[["gpu"]])
        options["device_requests"] = [request]
    elif real:
        if edits is None:
            raise RuntimeFailure(f"GPU {', '.join(gpu.uuid for gpu in real)} cannot be attached: no device edits")
        options.update(edits.engine_options())
    return options
