"""What a user's string may be before it reaches a container runtime, a URL or a log line.

Tenants are hostile. Each rule is a pure function that answers None for an acceptable value, or a sentence
that says what is wrong and what is allowed. The wire models apply them (schemas/common.py), so bad input is
a 422 naming the field; the engine runtime applies them again to every value it hands the engine
(runtimes/spec_check.py), so a row stored before a rule existed ends with a reason instead of reaching it.

The rules are allow-lists (a charset, a grammar), never lists of bad characters: the engine's compatible API
turns some values into option strings (Podman writes mounts as `--mount` CSV, where a comma in a target
starts a new option), and the safe way to keep a value from carrying options is to accept only characters
that cannot.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

# -- mount paths ----------------------------------------------------------------------------------------------

MAX_MOUNT_PATH = 255
MOUNT_PATH_PATTERN = r"^(/[A-Za-z0-9_.\-]+)+/?$"
"""Absolute, `/`-separated segments of letters, digits and `_ . -`; a trailing `/` is allowed and dropped."""

AUTHORIZED_KEYS_TARGET = "/root/.ssh/authorized_keys"
"""Where Dockyard installs the SSH keys a container names (services/runspec.py)."""

# Refused at and under: kernel interfaces and files the runtime itself mounts, masks or writes. A volume over
# them would unmask what the runtime hides (/proc/kcore, /sys/firmware), replace device nodes, or receive the
# engine's own files. The same places Docker, runc and Kubernetes reserve for the runtime.
SYSTEM_MOUNT_ROOTS: dict[str, str] = {
    "/proc": "the kernel's process interface, which the runtime mounts and masks",
    "/sys": "the kernel's device and cgroup interface, which the runtime mounts read-only",
    "/dev": "the device nodes the runtime creates (a container's GPUs among them)",
    "/run": "where the engine writes its run-time files (/run/.containerenv, secrets)",
    "/var/run": "a link to /run, where the engine writes its run-time files",
}
# Refused exactly (deeper paths are fine, e.g. /etc/myapp or /usr/local/models): a storage over the whole
# directory hides the image's system files, and the three /etc files are the ones the engine writes.
SYSTEM_MOUNT_POINTS = frozenset(
    {
        "/etc",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/usr",
        "/boot",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
    }
)


def _first_outside(value: str, allowed: re.Pattern[str]) -> str | None:
    """The first character of `value` that `allowed` (a one-character class) does not match, as `repr` shows
    it (control characters escaped), or None."""
    for char in value:
        if not allowed.fullmatch(char):
            return repr(char)
    return None


_MOUNT_CHAR = re.compile(r"[A-Za-z0-9_.\-/]")


def mount_syntax_problem(path: str) -> str | None:
    """The shape every mount target and host path must have, Dockyard's own included."""
    if not path.startswith("/"):
        return "must be an absolute path starting with /"
    if len(path) > MAX_MOUNT_PATH:
        return f"must be at most {MAX_MOUNT_PATH} characters"
    if (char := _first_outside(path, _MOUNT_CHAR)) is not None:
        return f"may hold only letters, digits and _ . - / (found {char})"
    if "//" in path:
        return "must not contain //"
    if path == "/":
        return "cannot be / (it would hide the image's whole file system)"
    if any(segment in (".", "..") for segment in path.strip("/").split("/")):
        return "must not contain . or .. segments"
    return None


def normal_mount_path(path: str) -> str:
    """The path without its trailing `/`, as it is stored and compared."""
    return path.rstrip("/") or "/"


def system_mount_problem(path: str) -> str | None:
    """Whether `path` (well-formed, normalised) is a place the runtime or the image's system owns."""
    for root, why in SYSTEM_MOUNT_ROOTS.items():
        if path == root or path.startswith(root + "/"):
            return f"cannot be at or under {root}: {why}"
    if path in SYSTEM_MOUNT_POINTS:
        return f"cannot be {path}: a storage there would hide the image's system files; mount it deeper or elsewhere"
    return None


def mount_path_problem(path: str) -> str | None:
    """The rule for a user's mount path (containers' `storages[].containerPath`, endpoints'
    `volumes[].mount_point`): well-formed, not the system's, and not where Dockyard mounts its own files (a
    storage there would hide them or be hidden by them)."""
    if (why := mount_syntax_problem(path) or system_mount_problem(normal_mount_path(path))) is not None:
        return why
    if normal_mount_path(path) == AUTHORIZED_KEYS_TARGET:
        return f"cannot be {AUTHORIZED_KEYS_TARGET}: Dockyard installs the container's SSH keys there"
    return None


# -- image references -----------------------------------------------------------------------------------------

MAX_IMAGE_REFERENCE = 500
MAX_IMAGE_NAME = 255
# The Docker reference grammar (github.com/distribution/reference): [host[:port]/]path[:tag][@digest], with
# lower-case path components. A host is a domain, an IPv4 address or a bracketed IPv6 address.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_HOST}(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
# containers/image transports: Podman reads `dir:x` or `oci-archive:x` as an image on the engine's host,
# not in a registry. `docker:` is the registry transport itself (and an image on Docker Hub), so it stays.
IMAGE_TRANSPORTS = frozenset(
    {"containers-storage", "dir", "docker-archive", "docker-daemon", "oci", "oci-archive", "ostree", "sif", "tarball"}
)
_IMAGE_HELP = (
    "must be an image reference such as registry.example.com/team/app:1.0 or team/app@sha256:<hex>: "
    "an optional registry host[:port]/, lower-case path components of letters, digits and . _ -, "
    "an optional :tag (letters, digits, _ . -, at most 128) and an optional @digest"
)


def image_problem(reference: str) -> str | None:
    if len(reference) > MAX_IMAGE_REFERENCE:
        return f"must be at most {MAX_IMAGE_REFERENCE} characters"
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        return _IMAGE_HELP
    if len(match["name"]) > MAX_IMAGE_NAME:
        return f"the repository name must be at most {MAX_IMAGE_NAME} characters"
    if "/" not in match["name"] and match["name"] in IMAGE_TRANSPORTS and match["tag"]:
        return f"must name an image in a registry, not a {match['name']}: path on the server"
    return None


# -- environment variables ------------------------------------------------------------------------------------

MAX_ENV_NAME = 255
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
_ENV_NAME = re.compile(ENV_NAME_PATTERN)

_GPU_VARIABLES = "the NVIDIA Container Toolkit reads it to choose the GPUs a container gets; Dockyard sets it"
_SDK_VARIABLES = "the worker SDKs read them for the worker's identity, key and webhook URLs, which Dockyard sets"
RESERVED_ENV_NAMES: dict[str, str] = {"CUDA_VISIBLE_DEVICES": _GPU_VARIABLES + " from the GPUs allocated"}
RESERVED_ENV_PREFIXES: dict[str, str] = {
    "NVIDIA_": _GPU_VARIABLES + " from the GPUs allocated",
    "PPIO_": _SDK_VARIABLES,
    "RUNPOD_": _SDK_VARIABLES,
    "NOVITA_": _SDK_VARIABLES,
    "DOCKYARD_": "Dockyard sets them for its own use",
}
USER_SDK_SWITCHES = frozenset(
    {
        "PPIO_LOG_LEVEL",
        "RUNPOD_DEBUG_LEVEL",
        "RUNPOD_LOG_LEVEL",
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS",
        "RUNPOD_SKIP_GPU_CHECK",
    }
)
"""The worker SDKs' switches a user may set although their prefix is reserved: they change only how verbose the
SDK's log is and whether it runs its own start-up fitness checks, never who the worker is, where it connects
or what hardware it sees. An explicit list (as RunPod documents these as endpoint settings), so a variable a
future SDK adds under the prefix is reserved until someone decides it is harmless."""


def env_name_problem(name: str) -> str | None:
    if len(name) > MAX_ENV_NAME:
        return f"must be at most {MAX_ENV_NAME} characters"
    if not _ENV_NAME.fullmatch(name):
        return "must start with a letter or _ and hold only letters, digits and _ . -"
    return None


def reserved_env_problem(name: str) -> str | None:
    """Whether `name` is a variable Dockyard owns. Compared in upper case, so no spelling slips through."""
    upper = name.upper()
    if upper in USER_SDK_SWITCHES:
        return None
    if why := RESERVED_ENV_NAMES.get(upper):
        return f"{name} is reserved ({why}); remove it"
    for prefix, why in RESERVED_ENV_PREFIXES.items():
        if upper.startswith(prefix):
            allowed = sorted(switch for switch in USER_SDK_SWITCHES if switch.startswith(prefix))
            hint = f"; of these only {', '.join(allowed)} may be set" if allowed else ""
            return f"{name} is reserved: {prefix}* variables are Dockyard's ({why}){hint}; remove it"
    return None


def user_env_name_problem(name: str) -> str | None:
    return env_name_problem(name) or reserved_env_problem(name)


# -- values, arguments, names ---------------------------------------------------------------------------------


def nul_problem(value: str) -> str | None:
    """Env values and command arguments travel as JSON strings, so any character is safe except NUL, which no
    process can receive (C strings end there)."""
    return "must not contain the NUL character" if "\x00" in value else None


# Characters that break or forge a log line, or reorder how it reads: C0/C1 controls and DEL, the Unicode
# line and paragraph separators, and the bidirectional overrides.
_LINE_BREAKERS = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def text_problem(value: str) -> str | None:
    """Names and free text that are shown, logged or put in events: one line of printable characters."""
    for char in value:
        if char in _LINE_BREAKERS or unicodedata.category(char) == "Cc":
            return f"must not contain control characters (found U+{ord(char):04X})"
    return None


# -- URL paths ------------------------------------------------------------------------------------------------

MAX_URL_PATH = 1024
URL_PATH_PATTERN = r"^/[A-Za-z0-9\-._~!$&'()*+,;=:%/?]*$"
"""RFC 3986 path characters (and `?` for a query) without `@`, `#`, `\\`, spaces or controls."""
_URL_PATH_CHAR = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:%/?]")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def url_path_problem(path: str) -> str | None:
    """A path Dockyard appends to a worker's `http://host:port` and requests (the health check)."""
    if not path.startswith("/"):
        return "must start with /"
    if path.startswith("//"):
        return "must not start with // (a URL would read what follows as a host)"
    if len(path) > MAX_URL_PATH:
        return f"must be at most {MAX_URL_PATH} characters"
    if (char := _first_outside(path, _URL_PATH_CHAR)) is not None:
        return f"may hold only letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : / ? % (found {char})"
    if _PERCENT.search(path):
        return "a % must start an escape of two hex digits, like %20"
    return None


# -- engine URLs ----------------------------------------------------------------------------------------------


def engine_url_problem(url: str) -> str | None:
    """An engine's API URL (an IDC's `runtime_url`, `DOCKYARD_ENGINE_URL`) holds no password: no engine API takes
    one, the docker SDK refuses such a URL with an error that quotes it whole, and that error is recorded as the
    IDC's runtime error and logged. A remote engine is reached over TLS client certificates or an SSH key."""
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL a password can be read from (a bad port): the engine says what is wrong
        return None
    if password:
        return (
            "must not hold a password, which no engine API takes: reach a remote engine at tcp://host:port with "
            "TLS client certificates, or at ssh://user@host with an SSH key"
        )
    return None
