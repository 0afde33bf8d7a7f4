"""Today's input rules applied to a workload spec as an earlier release may have stored it."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.core.stored_specs import stored_spec_problem
from dockyard.core.workload import WorkloadSpec

FINE: dict[str, Any] = {
    "image": "localhost/app:1",
    "command": ["sh", "-c", "echo $HOME; sleep 1"],
    "envs": [{"name": "MODE", "value": "x"}, {"name": "RUNPOD_DEBUG_LEVEL", "value": "x"}],
    "volumes": [{"storage_id": "s1", "mount_path": "/data/"}, {"storage_id": "s2", "mount_path": "/etc/myapp"}],
    "health_check": {"path": "/health?full=1", "port": 8080},
}


def test_a_spec_the_api_would_take_today_passes() -> None:
    assert stored_spec_problem(WorkloadSpec.model_validate(FINE)) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"volumes": [{"storage_id": "s", "mount_path": "/x,source=dockyard-ns-other"}]},
            "mount path '/x,source=dockyard-ns-other' may hold only letters, digits and _ . - / (found ',')",
        ),
        (
            {"volumes": [{"storage_id": "s", "mount_path": "/proc/x"}]},
            "mount path '/proc/x' cannot be at or under /proc",
        ),
        (
            {"volumes": [{"storage_id": "a", "mount_path": "/d"}, {"storage_id": "b", "mount_path": "/d/"}]},
            "mount path '/d/' is given twice",
        ),
        (
            {"envs": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "x"}]},
            "environment variable NVIDIA_VISIBLE_DEVICES is reserved: NVIDIA_* variables are Dockyard's",
        ),
        ({"envs": [{"name": "A=B", "value": "x"}]}, "environment variable 'A=B' must start with a letter or _"),
        ({"image": "dir:etc"}, "image 'dir:etc' must name an image in a registry, not a dir: path"),
        ({"args": ["a\x00b"]}, "command argument 'a\\x00b' contains the NUL character"),
        ({"health_check": {"path": "//evil.example/x"}}, "health-check path '//evil.example/x' must not start with //"),
    ],
)
def test_each_value_the_api_now_refuses_is_named(change: dict[str, Any], problem: str) -> None:
    found = stored_spec_problem(WorkloadSpec.model_validate({**FINE, **change}))
    assert found is not None
    assert found.startswith(problem)
