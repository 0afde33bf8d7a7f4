"""examples/gpu-worker/rootfs.py, which lists the files of a Python environment the GPU worker's image is made of, on
any machine: the requirements it follows (on distributions' real metadata files), the links it keeps, and an image
`podman import`ed from its list for this machine's own Python, which must run there as it runs here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

ROOTFS = Path(__file__).resolve().parents[2] / "examples" / "gpu-worker" / "rootfs.py"


@pytest.fixture(scope="module")
def rootfs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_worker_rootfs", ROOTFS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def distribution(site: Path, name: str, *requires: str) -> metadata.Distribution:
    """An installed distribution as pip leaves one: a dist-info folder with its METADATA."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = [f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", *(f"Requires-Dist: {r}\n" for r in requires)]
    (info / "METADATA").write_text("".join(lines))
    return metadata.PathDistribution(info)


def test_the_closure_follows_extras_and_markers_and_skips_what_is_missing(
    rootfs: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = {
        d.metadata["Name"]: d
        for d in [
            distribution(tmp_path, "app", "lib[fast]>=1", "windows-only; sys_platform == 'win32'", "absent"),
            distribution(tmp_path, "lib", "speedups; extra == 'fast'", "docs; extra == 'docs'", "app"),
            distribution(tmp_path, "speedups"),
            distribution(tmp_path, "docs"),
            distribution(tmp_path, "windows-only"),
        ]
    }
    found = rootfs.closure(["app"], installed.get)
    assert sorted(d.metadata["Name"] for d in found) == ["app", "lib", "speedups"]
    assert "absent is not installed here" in capsys.readouterr().err


def test_each_link_on_the_way_to_a_library_is_kept(rootfs: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "libz.so.1.3").write_bytes(b"\x7fELF")
    (tmp_path / "real" / "libz.so.1").symlink_to("libz.so.1.3")
    (tmp_path / "lib").symlink_to("real")
    found = list(rootfs.with_links(tmp_path / "lib" / "libz.so.1"))
    assert found == [tmp_path / "real" / "libz.so.1", tmp_path / "real" / "libz.so.1.3"]


@pytest.mark.engine
def test_an_image_of_the_listed_files_runs_this_python_with_the_named_distribution(
    rootfs: ModuleType, engine_url: str, tmp_path: Path
) -> None:
    """build-image's pipeline on this machine's Python and the PPIO SDK, which it needs beside torch."""
    listed = subprocess.run([sys.executable, str(ROOTFS), "ppio-gpus"], capture_output=True, check=True)
    (tmp_path / "files").write_bytes(listed.stdout)
    image = f"localhost/dockyard-test-rootfs:{uuid.uuid4().hex[:12]}"
    tar = f"tar -cf - --no-recursion -C / --null --files-from {tmp_path / 'files'}"
    built = subprocess.run(
        ["sh", "-c", f"{tar} | podman import --quiet - {image}"], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr
    try:
        probe = "import sys, ssl, sqlite3, ppio_gpus; print(sys.version.split()[0], ppio_gpus.__name__)"
        ran = subprocess.run(
            ["podman", "run", "--rm", "--network", "none", image, sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == [sys.version.split()[0], "ppio_gpus"]
    finally:
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True)
