"""Today's input rules (core/inputs.py) applied to a workload spec as stored, for rows stored before a rule existed.

The API refuses bad input at create and update, but a container or endpoint stored by an earlier release may hold
a value it now refuses, and its runtime objects may have been made with it: a mount path that carried engine
options (another organization's storage, the host's /etc), a variable Dockyard reserves (`NVIDIA_VISIBLE_DEVICES=all`
hands every GPU to a container allocated none). The reconcilers check each stored spec with `stored_spec_problem`
and stop what fails, saying which value and what to do, so nothing made under the old rules keeps running.
"""

from __future__ import annotations

from dockyard.core.inputs import (
    env_name_problem,
    image_problem,
    mount_path_problem,
    normal_mount_path,
    nul_problem,
    reserved_env_problem,
    url_path_problem,
)
from dockyard.core.workload import WorkloadSpec


def _quoted(value: str) -> str:
    """A value as a reason quotes it: escaped, and cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def stored_spec_problem(spec: WorkloadSpec) -> str | None:
    """The first value of `spec` the API's rules refuse now, named with why (`mount path '/x,source=v' may hold
    only ...`); None when every value passes. Env values stay encrypted and unread: a value may hold anything
    but NUL, which no process can have received."""
    if (why := image_problem(spec.image)) is not None:
        return f"image {_quoted(spec.image)} {why}"
    targets: set[str] = set()
    for volume in spec.volumes:
        if (why := mount_path_problem(volume.mount_path)) is not None:
            return f"mount path {_quoted(volume.mount_path)} {why}"
        if (target := normal_mount_path(volume.mount_path)) in targets:
            return f"mount path {_quoted(volume.mount_path)} is given twice"
        targets.add(target)
    for env in spec.envs:
        if (why := env_name_problem(env.name)) is not None:
            return f"environment variable {_quoted(env.name)} {why}"
        if (why := reserved_env_problem(env.name)) is not None:
            return f"environment variable {why}"
    for part in [*spec.entrypoint, *spec.command, *spec.args]:
        if nul_problem(part) is not None:
            return f"command argument {_quoted(part)} contains the NUL character"
    if spec.health_check is not None and (why := url_path_problem(spec.health_check.path)) is not None:
        return f"health-check path {_quoted(spec.health_check.path)} {why}"
    return None
