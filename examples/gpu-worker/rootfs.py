"""The files of this Python environment that the GPU worker's image needs, as absolute paths, NUL-separated on stdout:
`python3 rootfs.py DIST ...` run with the environment's own interpreter (build-image does).

They are the interpreter (each link on the way to it, the environment's `pyvenv.cfg`), its standard library, every
file of the named distributions and of everything they require (markers and extras followed), and the shared
libraries all of these load from outside the environment (`ldd`), the dynamic loader's cache with them. The GPU
driver's own libraries are left out: the container runtime brings the host's, which must match its kernel module.
Each path keeps its place, so the environment runs in the image as it runs here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Standard library folders no worker imports, and the interpreter's own site-packages, which a Python that is no
# virtual environment keeps there (the environment's distributions are chosen one by one).
SKIPPED_STDLIB = frozenset(
    {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages", "dist-packages"}
)
# The driver's user-space libraries: the container runtime mounts the host's.
DRIVER_LIBRARY = re.compile(r"^/usr/local/nvidia/|/lib(cuda|nvidia-[a-z-]+|nvcuvid|nvoptix)\.so")
_LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


def closure(names: Iterable[str], find: Callable[[str], metadata.Distribution | None]) -> list[metadata.Distribution]:
    """The distributions `names` name and all they require, each once: a requirement whose marker does not hold
    here (for the extras asked of its distribution) is skipped, and so is one not installed (`find` gives None)."""
    found: dict[str, metadata.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    queue: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in names]
    while queue:
        name, extras = queue.pop()
        key = canonicalize_name(name)
        if key in extras_seen and extras <= extras_seen[key]:
            continue
        distribution = found.get(key) or find(name)
        if distribution is None:
            print(f"rootfs: {name} is not installed here; left out", file=sys.stderr)
            continue
        found[key] = distribution
        extras_seen.setdefault(key, set()).update(extras)
        for line in distribution.requires or []:
            requirement = Requirement(line)
            wanted = [{"extra": extra} for extra in sorted(extras)] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in wanted):
                queue.append((requirement.name, frozenset(requirement.extras)))
    return list(found.values())


def _installed(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def with_links(path: Path) -> Iterator[Path]:
    """`path` and every link met on the way to the file it names, each as a path through no link but itself: a link
    at the top (merged-/usr systems have /lib -> usr/lib) appears as that link, then the path below it as the
    folder it points to holds it."""
    for _ in range(40):  # the kernel's own bound on links followed
        top = Path(*path.parts[:2])
        if top.is_symlink():
            yield top
        parent = path.parent.resolve()
        path = parent / path.name
        yield path
        if not path.is_symlink():
            return
        path = parent / os.readlink(path)


def tree(root: Path, skip: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Every file and link under `root`, but those under a folder directly in `root` named in `skip`."""
    for directory, folders, names in os.walk(root):
        if Path(directory) == root:
            folders[:] = [folder for folder in folders if folder not in skip]
        for name in [*names, *(folder for folder in folders if (Path(directory) / folder).is_symlink())]:
            yield Path(directory) / name


def distribution_files(distributions: Iterable[metadata.Distribution]) -> Iterator[Path]:
    for distribution in distributions:
        for file in distribution.files or []:
            path = Path(os.path.normpath(file.locate()))
            if path.exists() or path.is_symlink():
                yield path


def loaded_libraries(elf_file: Path) -> list[Path]:
    """The shared libraries `elf_file` loads, as `ldd` finds them with no LD_LIBRARY_PATH (the image sets its own)."""
    environment = {key: value for key, value in os.environ.items() if key != "LD_LIBRARY_PATH"}
    done = subprocess.run(["ldd", str(elf_file)], capture_output=True, text=True, env=environment)
    return [Path(match.group(1)) for line in done.stdout.splitlines() if (match := _LDD_LINE.match(line))]


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == b"\x7fELF"
    except OSError:
        return False


def files(names: list[str]) -> list[Path]:
    """Every path the image takes from this machine (module docstring), sorted."""
    chosen: set[Path] = set()
    chosen.update(with_links(Path(sys.executable)))
    chosen.add(Path(sys.prefix) / "pyvenv.cfg")  # a virtual environment's; absent (and dropped below) in others
    for key in ("stdlib", "platstdlib"):
        chosen.update(tree(Path(sysconfig.get_path(key)), SKIPPED_STDLIB))
    chosen.update(distribution_files(closure(names, _installed)))
    chosen = {path for path in chosen if path.exists()}
    elf_files = [path for path in chosen if not path.is_symlink() and is_elf(path)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        for libraries in pool.map(loaded_libraries, elf_files):
            for library in libraries:
                if not DRIVER_LIBRARY.search(str(library)):
                    chosen.update(with_links(library))
    if Path("/etc/ld.so.cache").exists():
        chosen.add(Path("/etc/ld.so.cache"))
    return sorted(chosen)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python3 rootfs.py DISTRIBUTION ...")
    for path in files(sys.argv[1:]):
        sys.stdout.write(f"{str(path).lstrip('/')}\0")
