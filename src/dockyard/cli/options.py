"""Parsing of the repeatable options shared by several commands (`--env`, `--port`, `--storage`, `--json`)
into the API's wire shapes."""

from __future__ import annotations

from typing import Annotated, Any

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="print the raw JSON answer (for scripts)")]
EnvOption = Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE; repeat for more")]
PortOption = Annotated[
    list[str] | None,
    typer.Option(
        "--port",
        "-p",
        help="a container port to publish: 8080, 8080:30080 (fixed host port), 53/udp; repeat for more (at most 5)",
    ),
]
ArgOption = Annotated[list[str] | None, typer.Option("--arg", help="an argument after the command; repeat for more")]
CommandOption = Annotated[str, typer.Option("--command", help="the command line to run instead of the image's")]


def parse_envs(values: list[str] | None) -> list[dict[str, str]]:
    envs = []
    for value in values or []:
        name, sep, content = value.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{value!r} is not NAME=VALUE (for example --env MODE=debug)", param_hint="--env")
        envs.append({"name": name, "value": content})
    return envs


def _port_number(text: str, value: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise typer.BadParameter(
            f"{value!r}: ports are numbers from 1 to 65535 (for example --port 8080 or --port 8080:30080/udp)",
            param_hint="--port",
        )
    return int(text)


def parse_ports(values: list[str] | None) -> list[dict[str, Any]]:
    """`8080` -> any free host port; `8080:30080` -> host port 30080; a `/udp` or `/tcp` suffix sets the protocol."""
    ports = []
    for value in values or []:
        spec, _, protocol = value.partition("/")
        if protocol.lower() not in ("", "tcp", "udp"):
            raise typer.BadParameter(
                f"{value!r}: the protocol is tcp or udp (for example --port 8080/udp)", param_hint="--port"
            )
        container, fixed, host = spec.partition(":")
        port: dict[str, Any] = {
            "containerPort": _port_number(container, value),
            "protocol": (protocol or "tcp").upper(),
        }
        if fixed:
            port["port"] = _port_number(host, value)
        ports.append(port)
    return ports


def parse_storages(values: list[str] | None) -> list[dict[str, str]]:
    storages = []
    for value in values or []:
        storage_id, sep, path = value.partition(":")
        if not sep or not storage_id or not path.startswith("/"):
            raise typer.BadParameter(
                f"{value!r} is not STORAGE_ID:/absolute/path (for example --storage 5f1c...:/workspace)",
                param_hint="--storage",
            )
        storages.append({"id": storage_id, "containerPath": path})
    return storages
