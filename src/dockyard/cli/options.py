"""Parsing of the options shared by several commands (`--env`, `--port`, `--storage`, `--json`, `--policy`,
`--header`, `--data`, `--file`) into the API's wire shapes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dockyard.cli.output import fail

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


def given(**values: Any) -> dict[str, Any]:
    """The options that were given: those not left at None."""
    return {key: value for key, value in values.items() if value is not None}


def parse_policy(value: str) -> dict[str, Any]:
    """`queue:5` -> `{"type": "queue", "value": 5}`; likewise `concurrency:N`."""
    kind, _, number = value.partition(":")
    if kind not in ("queue", "concurrency") or not number.isdigit() or int(number) < 1:
        raise typer.BadParameter(
            f"{value!r} is not queue:SECONDS or concurrency:REQUESTS (for example queue:5)", param_hint="--policy"
        )
    return {"type": kind, "value": int(number)}


def read_json_body(path: Path | None) -> dict[str, Any]:
    """`--file`: a request body as a JSON object; none given is empty."""
    if path is None:
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(f"cannot read {path} as JSON ({exc}); give the request body as a JSON object")
    if not isinstance(loaded, dict):
        fail(f"{path} holds JSON but not an object; give the request body as a JSON object")
    return loaded


def read_data(value: str | None) -> bytes | None:
    """`--data`: `@FILE` for a file's bytes, `-` for stdin's, anything else as given."""
    if value is None:
        return None
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            fail(f"cannot read {value[1:]} for --data ({exc.strerror}); give an existing file after the @")
    return value.encode()


def parse_headers(values: list[str] | None, data: bytes | None) -> dict[str, str]:
    """`--header 'Name: value'`s; with a body and no Content-Type, JSON is sent as such, anything else as bytes."""
    headers = {}
    for value in values or []:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(
                f"{value!r} is not 'Name: value' (for example -H 'Accept: text/event-stream')", param_hint="--header"
            )
        headers[name.strip()] = content.strip()
    if data is not None and not any(name.lower() == "content-type" for name in headers):
        try:
            json.loads(data)
            headers["Content-Type"] = "application/json"
        except ValueError:
            headers["Content-Type"] = "application/octet-stream"
    return headers
