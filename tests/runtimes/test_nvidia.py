"""The device nodes, driver files and variables a GPU container gets, against a fake /dev and driver directory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dockyard.runtimes.base import GpuDevice, RuntimeFailure
from dockyard.runtimes.nvidia import (
    LIBRARY_DIR,
    ContainerEdits,
    DeviceNode,
    DriverMount,
    NvidiaHost,
    find_driver_files,
    gpu_options,
    ldconfig_directories,
    library_path,
)
from dockyard.runtimes.spec_check import gpu_edits_problem

UUID_A = "GPU-2f8a0c1e-1234-5678-9abc-def012345678"
UUID_B = "GPU-7d0b9c3a-aaaa-bbbb-cccc-0123456789ab"
VERSION = "580.95.05"


def fake_dev(root: Path, *names: str) -> Path:
    dev = root / "dev"
    dev.mkdir()
    for name in names:
        (dev / name).touch()
    return dev


def fake_driver(directory: Path) -> Path:
    """A driver directory as the driver's installer lays it out: versioned files, soname links, binaries."""
    lib, bin_ = directory / "lib64", directory / "bin"
    lib.mkdir(parents=True)
    bin_.mkdir()
    for stem in ("libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler"):
        (lib / f"{stem}.so.{VERSION}").write_bytes(b"\x7fELF")
        (lib / f"{stem}.so.1").symlink_to(f"{stem}.so.{VERSION}")
    (lib / "libcuda.so").symlink_to("libcuda.so.1")
    (lib / "libGL.so.1").write_bytes(b"\x7fELF")  # graphics: not the compute or utility capability
    (lib / "libnvidia-cfg.so.1").symlink_to("gone.so")  # a link that leads nowhere
    (bin_ / "nvidia-smi").write_text("#!/bin/sh\n")
    (bin_ / "nvidia-smi").chmod(0o755)
    return directory


def test_one_of_two_gpus_gets_exactly_its_node_and_uuid(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
    host = NvidiaHost(str(fake_driver(tmp_path / "driver")), dev=dev, ldconfig=lambda: "")
    edits = host.edits([GpuDevice(UUID_B, minor=1)])
    assert [node.path for node in edits.device_nodes] == [
        "/dev/nvidia1",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
    ]
    assert edits.device_nodes[0].host_path == str(dev / "nvidia1")
    assert edits.env == {"NVIDIA_VISIBLE_DEVICES": UUID_B, "CUDA_VISIBLE_DEVICES": UUID_B}
    assert edits.uuids == (UUID_B,)
    options = edits.engine_options()
    assert options["devices"][0] == f"{dev}/nvidia1:/dev/nvidia1:rwm"
    assert not any("nvidia0" in device for device in options["devices"])
    assert all(mount["ReadOnly"] for mount in options["mounts"])
    assert gpu_edits_problem(edits, dev=dev) is None


def test_the_driver_files_are_found_under_every_name_and_resolved(tmp_path: Path) -> None:
    lib = fake_driver(tmp_path / "driver") / "lib64"
    files = NvidiaHost(str(tmp_path / "driver"), ldconfig=lambda: "").driver_files()
    real_cuda = str(lib / f"libcuda.so.{VERSION}")
    assert files.libraries["libcuda.so.1"] == real_cuda
    assert files.libraries["libcuda.so"] == real_cuda
    assert files.libraries[f"libnvidia-ml.so.{VERSION}"] == str(lib / f"libnvidia-ml.so.{VERSION}")
    assert "libnvidia-ptxjitcompiler.so.1" in files.libraries
    assert "libGL.so.1" not in files.libraries
    assert "libnvidia-cfg.so.1" not in files.libraries
    assert files.binaries == {"nvidia-smi": str(tmp_path / "driver" / "bin" / "nvidia-smi")}
    targets = {mount.container_path for mount in files.mounts}
    assert f"{LIBRARY_DIR}/libcuda.so.1" in targets
    assert "/usr/bin/nvidia-smi" in targets


def test_without_a_driver_root_ldconfig_says_where_the_libraries_are(tmp_path: Path) -> None:
    lib = fake_driver(tmp_path / "driver") / "lib64"
    listing = (
        "3 libs found in cache `/etc/ld.so.cache'\n"
        f"\tlibcuda.so.1 (libc6,x86-64) => {lib}/libcuda.so.1\n"
        "\tlibcuda.so.1 (libc6) => /usr/lib32/libcuda.so.1\n"
        "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n"
    )
    assert ldconfig_directories(listing) == [str(lib)]
    files = NvidiaHost("", ldconfig=lambda: listing).driver_files()
    assert files.libraries["libcuda.so.1"] == str(lib / f"libcuda.so.{VERSION}")


def test_the_first_directory_to_name_a_library_wins(tmp_path: Path) -> None:
    first, second = fake_driver(tmp_path / "a") / "lib64", fake_driver(tmp_path / "b") / "lib64"
    files = find_driver_files([str(tmp_path / "missing"), str(first), str(second)], [])
    assert files.libraries["libcuda.so.1"] == str(first / f"libcuda.so.{VERSION}")


def test_a_gpu_container_is_refused_without_what_cuda_needs(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, "nvidia0", "nvidiactl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeFailure, match="libcuda was not found"):
        NvidiaHost(str(empty), dev=dev).edits([GpuDevice(UUID_A, minor=0)])
    host = NvidiaHost(str(fake_driver(tmp_path / "driver")), dev=dev)
    with pytest.raises(RuntimeFailure, match=r"/dev/nvidia3 of GPU .* is missing"):
        host.edits([GpuDevice(UUID_A, minor=3)])
    with pytest.raises(RuntimeFailure, match="no device minor number"):
        host.edits([GpuDevice(UUID_A)])


def test_the_cdi_specification_lists_the_same_edits(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm")
    host = NvidiaHost(str(fake_driver(tmp_path / "driver")), dev=dev)
    edits = host.edits([GpuDevice(UUID_A, minor=0), GpuDevice(UUID_B, minor=1)])
    spec = edits.cdi()
    assert spec["kind"] == "nvidia.com/gpu"
    assert [(d["name"], d["containerEdits"]["deviceNodes"][0]["path"]) for d in spec["devices"]] == [
        (UUID_A, "/dev/nvidia0"),
        (UUID_B, "/dev/nvidia1"),
    ]
    shared = spec["containerEdits"]
    assert [node["path"] for node in shared["deviceNodes"]] == ["/dev/nvidiactl", "/dev/nvidia-uvm"]
    assert {m["containerPath"] for m in shared["mounts"]} == {m.container_path for m in edits.mounts}
    assert all("ro" in m["options"] for m in shared["mounts"])
    assert f"CUDA_VISIBLE_DEVICES={UUID_A},{UUID_B}" in shared["env"]


def test_docker_with_the_nvidia_runtime_gets_a_device_request_and_others_the_edits(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, "nvidia0", "nvidia3")
    gpus = [GpuDevice(UUID_A, minor=0), GpuDevice(UUID_B, minor=3)]
    edits = NvidiaHost(str(fake_driver(tmp_path / "driver")), dev=dev).edits(gpus)
    docker = gpu_options(gpus, True, None)
    [request] = docker["device_requests"]
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == [UUID_A, UUID_B]
    assert request["Capabilities"] == [["gpu"]]
    assert "devices" not in docker
    podman = gpu_options(gpus, False, edits)
    assert podman["devices"][:2] == [f"{dev}/nvidia0:/dev/nvidia0:rwm", f"{dev}/nvidia3:/dev/nvidia3:rwm"]
    assert podman["environment"]["CUDA_VISIBLE_DEVICES"] == f"{UUID_A},{UUID_B}"
    simulated = gpu_options([GpuDevice("GPU-sim-0", simulated=True)], False, None)
    assert simulated == {"environment": {"NVIDIA_VISIBLE_DEVICES": "GPU-sim-0", "CUDA_VISIBLE_DEVICES": "GPU-sim-0"}}
    assert gpu_options([], False, None) == {"environment": {"NVIDIA_VISIBLE_DEVICES": "void"}}
    with pytest.raises(RuntimeFailure, match="cannot be attached"):
        gpu_options(gpus, False, None)


def test_the_driver_directory_leads_the_library_path() -> None:
    assert library_path("") == LIBRARY_DIR
    mixed = f"/opt/lib:{LIBRARY_DIR}:/usr/local/nvidia/lib"
    assert library_path(mixed) == f"{LIBRARY_DIR}:/opt/lib:/usr/local/nvidia/lib"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"device_nodes": (DeviceNode("/dev/sda", "/dev/sda"),)}, "not an NVIDIA device node"),
        ({"device_nodes": (DeviceNode("/dev/nvidia0", "/elsewhere/nvidia0"),)}, "is not nvidia0 of the host's"),
        ({"device_nodes": (DeviceNode("/dev/nvidia0/../sda", "/dev/sda"),)}, "not an NVIDIA device node"),
        ({"mounts": (DriverMount("/usr/lib/libcuda.so.1", "/etc/passwd"),)}, "neither a driver library"),
        ({"mounts": (DriverMount("/usr/lib/a,b", f"{LIBRARY_DIR}/libcuda.so.1"),)}, "without a comma"),
        ({"mounts": (DriverMount("/usr/lib/x:y", f"{LIBRARY_DIR}/libcuda.so.1"),)}, "a colon"),
        ({"mounts": (DriverMount("/usr/../etc/shadow", f"{LIBRARY_DIR}/libcuda.so.1"),)}, "or . or .."),
        ({"mounts": (DriverMount("/usr/bin/sh", "/usr/bin/sh"),)}, "neither a driver library"),
        ({"env": {"LD_PRELOAD": "x"}}, "not one the runtime sets"),
        ({"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, "other than GPU UUIDs"),
    ],
)
def test_every_device_node_and_driver_file_is_checked(tmp_path: Path, change: dict[str, object], problem: str) -> None:
    dev = tmp_path / "dev"
    safe = ContainerEdits(
        (UUID_A,),
        (DeviceNode("/dev/nvidia0", str(dev / "nvidia0")),),
        (DriverMount("/usr/lib/libcuda.so.1", f"{LIBRARY_DIR}/libcuda.so.1"),),
        {"NVIDIA_VISIBLE_DEVICES": UUID_A},
    )
    assert gpu_edits_problem(safe, dev=dev) is None
    found = gpu_edits_problem(replace(safe, **change), dev=dev)  # type: ignore[arg-type]
    assert found is not None
    assert problem in found
