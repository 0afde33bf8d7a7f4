"""Conversions between the wire families' env/port/command fields and the one `WorkloadSpec`.

Secrets go in encrypted and come out masked. A client that reads an object and sends it back unchanged
sends masked values; `encrypt_envs` recognises the mask of the value already stored and keeps that value,
so a read-modify-write round trip never overwrites a secret with its mask.

The API refuses the variables Dockyard reserves (`dockyard.core.inputs.reserved_env_problem`); `runtime_envs`
drops them again when a runtime request is built, for rows stored before that check existed.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

from dockyard.core.inputs import reserved_env_problem
from dockyard.core.status import Protocol
from dockyard.core.workload import Credential, EnvVar, PortSpec
from dockyard.errors import InvalidField
from dockyard.schemas.gmi import Env, EnvIn, Port
from dockyard.secrets import SecretBox, mask


def encrypt_envs(
    envs: Iterable[tuple[str, str]], previous: Sequence[EnvVar] = (), field: str = "envs", *, box: SecretBox
) -> list[EnvVar]:
    stored = {env.name: env.value for env in previous}
    result: list[EnvVar] = []
    seen: set[str] = set()
    for name, value in envs:
        if name in seen:
            raise InvalidField(field, f"the variable {name} is given twice")
        seen.add(name)
        old = stored.get(name)
        if old is not None and value and value == mask(box.decrypt(old)):
            result.append(EnvVar(name=name, value=old))
        else:
            result.append(EnvVar(name=name, value=box.encrypt(value) if value else ""))
    return result


def decrypt_envs(envs: Iterable[EnvVar], *, box: SecretBox) -> dict[str, str]:
    return {env.name: box.decrypt(env.value) for env in envs}


def runtime_envs(envs: Iterable[EnvVar], *, box: SecretBox) -> dict[str, str]:
    """The user's variables as a runtime request carries them: decrypted, and without any name Dockyard
    reserves, so a value stored before the API refused it (`NVIDIA_VISIBLE_DEVICES=all`, another worker's
    `RUNPOD_POD_ID`) never reaches a container."""
    return {env.name: box.decrypt(env.value) for env in envs if reserved_env_problem(env.name) is None}


def masked_envs(envs: Iterable[EnvVar], *, box: SecretBox) -> list[tuple[str, str]]:
    return [(env.name, mask(box.decrypt(env.value))) for env in envs]


def gmi_envs_in(envs: Iterable[EnvIn]) -> list[tuple[str, str]]:
    return [(env.name, env.value) for env in envs]


def gmi_envs_out(envs: Iterable[EnvVar], *, box: SecretBox) -> list[Env]:
    return [Env(name=name, value=value) for name, value in masked_envs(envs, box=box)]


def gmi_ports_in(ports: Iterable[Port], field: str = "ports") -> list[PortSpec]:
    result: list[PortSpec] = []
    seen: set[tuple[int, Protocol]] = set()
    for port in ports:
        key = (port.container_port, port.protocol)
        if key in seen:
            raise InvalidField(field, f"containerPort {port.container_port}/{port.protocol} is given twice")
        seen.add(key)
        result.append(PortSpec(container_port=port.container_port, host_port=port.port, protocol=port.protocol))
    return result


def gmi_ports_out(ports: Iterable[PortSpec]) -> list[Port]:
    return [Port(container_port=p.container_port, port=p.host_port, protocol=p.protocol) for p in ports]


def split_command(command: str, field: str = "command") -> list[str]:
    """A command line as a user types it, split the way a POSIX shell would (no expansion)."""
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise InvalidField(field, f"cannot be parsed as a command line ({exc})") from exc


def encrypt_credential(username: str, secret: str, previous: Credential | None, *, box: SecretBox) -> Credential:
    if previous is not None and previous.username == username and secret == mask(box.decrypt(previous.secret)):
        return previous
    return Credential(username=username, secret=box.encrypt(secret))
