"""The rules on user strings, alone: each bad value gets a sentence saying what is allowed, each good one None.

The lists here are also what the API tests send (tests/api), so the 422s are checked against the same cases."""

from __future__ import annotations

import pytest

from dockyard.core.inputs import (
    USER_SDK_SWITCHES,
    image_problem,
    mount_path_problem,
    normal_mount_path,
    nul_problem,
    text_problem,
    url_path_problem,
    user_env_name_problem,
)

OTHER_VOLUME = "dockyard-ns-3c90c3cc-0d44-4b50-8888-8dd25736052a"
CHARSET = "may hold only letters, digits and _ . - /"

BAD_MOUNT_PATHS = [
    (f"/x,source={OTHER_VOLUME}", CHARSET),
    (f"/x,volume-opt=device=/etc,volume-opt=o=bind,volume-opt=type=none,source={OTHER_VOLUME}", CHARSET),
    ("/x=y", CHARSET),
    ('/x"y', CHARSET),
    ("/x'y", CHARSET),
    ("/x y", CHARSET),
    ("/x:/y", CHARSET),
    ("/x\ny", CHARSET),
    ("/x\x00y", CHARSET),
    ("/x\u2028y", CHARSET),
    ("/données", CHARSET),
    ("relative", "absolute path"),
    ("", "absolute path"),
    ("/", "cannot be /"),
    ("//", "must not contain //"),
    ("/data//x", "must not contain //"),
    ("/data/../etc", ". or .."),
    ("/./data", ". or .."),
    ("/data/.", ". or .."),
    ("/" + "a" * 255, "at most 255"),
    ("/proc", "at or under /proc"),
    ("/proc/sys/kernel", "at or under /proc"),
    ("/sys/fs/cgroup", "at or under /sys"),
    ("/dev", "at or under /dev"),
    ("/dev/nvidia0", "at or under /dev"),
    ("/run/secrets", "at or under /run"),
    ("/var/run/", "at or under /var/run"),
    ("/etc", "system files"),
    ("/etc/", "system files"),
    ("/usr", "system files"),
    ("/lib64", "system files"),
    ("/etc/resolv.conf", "system files"),
    ("/root/.ssh/authorized_keys", "SSH keys"),
]
GOOD_MOUNT_PATHS = ["/workspace", "/data/", "/mnt/my-data_1.v2", "/etc/myapp", "/usr/local/models", "/root/.ssh", "/.x"]


@pytest.mark.parametrize(("path", "why"), BAD_MOUNT_PATHS)
def test_bad_mount_paths_are_refused_saying_what_is_allowed(path: str, why: str) -> None:
    problem = mount_path_problem(path)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize("path", GOOD_MOUNT_PATHS)
def test_good_mount_paths_pass(path: str) -> None:
    assert mount_path_problem(path) is None


def test_a_trailing_slash_is_dropped() -> None:
    assert normal_mount_path("/data/") == "/data"
    assert normal_mount_path("/data") == "/data"


DIGEST = "sha256:" + "a" * 64
BAD_IMAGES = [
    ("has space", "image reference"),
    ("localhost/x:1,opt", "image reference"),
    ("team/Upper:1", "image reference"),
    ("-flag", "image reference"),
    ("x:", "image reference"),
    ("x:-tag", "image reference"),
    ("x:" + "t" * 129, "image reference"),
    ("x@sha256:zz", "image reference"),
    ("https://registry.example.com/app:1", "image reference"),
    ("registry.example.com/app:1\n", "image reference"),
    ("dir:/etc", "image reference"),
    ("dir:etc", "not a dir: path"),
    ("docker-archive:x", "not a docker-archive: path"),
    ("oci-archive:x", "not a oci-archive: path"),
    ("containers-storage:x", "not a containers-storage: path"),
    ("a" * 256, "at most 255"),
    ("a" * 501, "at most 500"),
]
GOOD_IMAGES = [
    "busybox",
    "localhost/busybox:latest",
    "registry.example.com:5000/team/app:1.0",
    "registry.example.com/a/b/c_d__e-f.g:Tag_1.2-rc",
    f"team/app@{DIGEST}",
    f"team/app:1@{DIGEST}",
    "docker:latest",
    "[::1]:5000/app:1",
    "127.0.0.1:5000/app",
    "dir",
]


@pytest.mark.parametrize(("image", "why"), BAD_IMAGES)
def test_bad_image_references_are_refused(image: str, why: str) -> None:
    problem = image_problem(image)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize("image", GOOD_IMAGES)
def test_docker_references_pass(image: str) -> None:
    assert image_problem(image) is None


RESERVED_ENVS = [
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "nvidia_visible_devices",
    "CUDA_VISIBLE_DEVICES",
    "PPIO_AI_API_KEY",
    "RUNPOD_POD_ID",
    "RUNPOD_WEBHOOK_GET_JOB",
    "RUNPOD_REALTIME_PORT",
    "NOVITA_API_KEY",
    "DOCKYARD_WORKER_ID",
]


@pytest.mark.parametrize("name", RESERVED_ENVS)
def test_reserved_variables_are_refused_by_name(name: str) -> None:
    problem = user_env_name_problem(name)
    assert problem is not None
    assert problem.startswith(f"{name} is reserved")
    assert problem.endswith("remove it")


def test_the_sdk_switches_users_may_set_are_named_when_their_prefix_is_refused() -> None:
    assert "RUNPOD_DEBUG_LEVEL, RUNPOD_LOG_LEVEL, RUNPOD_SKIP_AUTO_SYSTEM_CHECKS" in str(
        user_env_name_problem("RUNPOD_POD_ID")
    )
    assert "PPIO_LOG_LEVEL" in str(user_env_name_problem("PPIO_POD_ID"))


@pytest.mark.parametrize("name", [*sorted(USER_SDK_SWITCHES), "CUDA_HOME", "MY_NVIDIA_KEY", "spring.profile", "_x"])
def test_other_variables_and_the_sdk_switches_pass(name: str) -> None:
    assert user_env_name_problem(name) is None


@pytest.mark.parametrize("name", ["1BAD", "A=B", "A B", "A*", "", "A\n", "x" * 256])
def test_malformed_variable_names_are_refused(name: str) -> None:
    assert user_env_name_problem(name) is not None


def test_values_and_arguments_may_hold_anything_but_nul() -> None:
    assert nul_problem("multi\nline 'quoted' $(not run) ; && |") is None
    assert nul_problem("a\x00b") == "must not contain the NUL character"


@pytest.mark.parametrize(
    "text", ["line\nbreak", "cr\r", "tab\t", "esc\x1b[31m", "del\x7f", "c1\x85", "ls\u2028", "bidi\u202e"]
)
def test_names_with_control_characters_are_refused(text: str) -> None:
    assert "control characters" in str(text_problem(text))


def test_printable_names_pass() -> None:
    assert text_problem("LLM training (v2) — café 模型 🚀") is None


BAD_URL_PATHS = [
    ("health", "must start with /"),
    ("//evil.example/x", "must not start with //"),
    ("/health\r\nX-Injected: 1", "may hold only"),
    ("/a b", "may hold only"),
    ("/a#frag", "may hold only"),
    ("/a@evil", "may hold only"),
    ("/a\\b", "may hold only"),
    ("/%zz", "two hex digits"),
    ("/%2", "two hex digits"),
    ("/" + "a" * 1024, "at most 1024"),
]
GOOD_URL_PATHS = ["/health", "/", "/ready?full=1&x=y", "/v1/models", "/a%20b", "/~user/x;y=1"]


@pytest.mark.parametrize(("path", "why"), BAD_URL_PATHS)
def test_bad_url_paths_are_refused(path: str, why: str) -> None:
    assert why in str(url_path_problem(path))


@pytest.mark.parametrize("path", GOOD_URL_PATHS)
def test_url_paths_pass(path: str) -> None:
    assert url_path_problem(path) is None
