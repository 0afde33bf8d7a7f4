"""`dockyard containers ...`: GPU containers (GMI's `/api/v1/containers`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from dockyard.cli.config import target
from dockyard.cli.options import (
    ArgOption,
    CommandOption,
    EnvOption,
    JsonOption,
    PortOption,
    parse_envs,
    parse_ports,
    parse_storages,
)
from dockyard.cli.output import (
    handle_errors,
    print_json,
    print_stream,
    print_table,
    status_text,
    stderr,
    wait_with_progress,
)
from dockyard.client import GONE, Client, Json

app = typer.Typer(help="GPU containers: create, list, inspect, read logs, stop, start, delete.", no_args_is_help=True)

WaitOption = Annotated[bool, typer.Option("--wait", help="show progress and return once the change is done")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="seconds --wait waits before giving up")]
IdsArgument = Annotated[list[str], typer.Argument(help="container ids", show_default=False)]


def format_ports(container: Json) -> str:
    """`HOST->CONTAINER/proto` for each published port; a port not yet published shows its container side."""
    shown = []
    for port in container.get("ports") or []:
        protocol = str(port.get("protocol", "TCP")).lower()
        host = port.get("port")
        shown.append(f"{host}->{port['containerPort']}/{protocol}" if host else f"{port['containerPort']}/{protocol}")
    return ", ".join(shown)


def _rows(containers: list[Json]) -> list[list[str]]:
    return [
        [
            escape(str(c["id"])),
            escape(str(c.get("name", ""))),
            status_text(str(c.get("status", ""))),
            escape(str(c.get("reason", ""))),
            escape(str(c.get("product", ""))),
            escape(format_ports(c)),
            escape(str(c.get("createdAt", ""))),
        ]
        for c in containers
    ]


COLUMNS = ("ID", "NAME", "STATUS", "REASON", "PRODUCT", "PORTS", "CREATED")


def _finish_wait(
    client: Client, ids: list[str], until: set[str], timeout: float, as_json: bool
) -> dict[str, Json | None]:
    states = wait_with_progress(client, ids, until, timeout)
    if as_json:
        print_json([state for state in states.values() if state is not None])
    return states


@app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    template: Annotated[str, typer.Option("--template", help="the template id (`dockyard templates list`)")],
    product: Annotated[str, typer.Option("--product", help="what to run on (`dockyard products`)")],
    name: Annotated[str, typer.Option("--name", help="the container's name")],
    idc: Annotated[str, typer.Option("--idc", help="where to run it (`dockyard idcs`)")] = "local",
    count: Annotated[int, typer.Option("--count", min=1, help="how many identical containers")] = 1,
    env: EnvOption = None,
    port: PortOption = None,
    ssh_key: Annotated[list[str] | None, typer.Option("--ssh-key", help="an SSH key id; repeat for more")] = None,
    storage: Annotated[
        list[str] | None, typer.Option("--storage", help="STORAGE_ID:/path to mount a network storage")
    ] = None,
    command: CommandOption = "",
    arg: ArgOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Create containers from a template; prints their ids (with --wait, once they are running)."""
    request: dict[str, Any] = {
        "count": count,
        "idc": idc,
        "product": product,
        "name": name,
        "templateId": template,
        "command": command,
        "args": arg or [],
        "envs": parse_envs(env),
        "ports": parse_ports(port),
        "sshKeyIdList": ssh_key or [],
    }
    if storage:
        request["storages"] = parse_storages(storage)
    with target(ctx).client() as client:
        ids = [str(created["id"]) for created in client.create_containers(request)]
        if wait:
            _finish_wait(client, ids, {"running"}, timeout, as_json)
        elif as_json:
            print_json([{"id": container_id} for container_id in ids])
    if not as_json:
        for container_id in ids:
            typer.echo(container_id)


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="only this status (running, error, ...)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="only containers with this name")] = None,
    page: Annotated[int, typer.Option("--page", min=1)] = 1,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=1000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """List your containers."""
    with target(ctx).client() as client:
        answer = client.list_containers(page=page, page_size=page_size, status=status, name=name)
    if as_json:
        print_json(answer)
        return
    items: list[Json] = answer.get("items", [])
    print_table(COLUMNS, _rows(items), empty="No containers. Create one with `dockyard containers create`.")
    if answer.get("total", 0) > page * page_size:
        stderr().print(f"page {page} of {-(-answer['total'] // page_size)}; see more with --page {page + 1}")


@app.command("get")
@handle_errors
def get(
    ctx: typer.Context,
    container_id: Annotated[str, typer.Argument(help="the container id")],
    as_json: JsonOption = False,
) -> None:
    """Show one container."""
    with target(ctx).client() as client:
        container = client.get_container(container_id)
    if as_json:
        print_json(container)
        return
    print_table(
        ("FIELD", "VALUE"),
        [
            ["id", escape(str(container["id"]))],
            ["name", escape(str(container.get("name", "")))],
            ["status", status_text(str(container.get("status", "")))],
            ["reason", escape(str(container.get("reason", "")))],
            ["idc / product", escape(f"{container.get('idc', '')} / {container.get('product', '')}")],
            ["template", escape(str(container.get("templateId", "")))],
            ["ports", escape(format_ports(container))],
            ["public ip", escape(str((container.get("publicIP") or {}).get("ipAddress", "")))],
            ["created", escape(str(container.get("createdAt", "")))],
        ],
        empty="",
    )


@app.command("logs")
@handle_errors
def logs(
    ctx: typer.Context,
    container_id: Annotated[str, typer.Argument(help="the container id")],
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="only the last N lines")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new output (Ctrl-C stops)")] = False,
) -> None:
    """Print a container's output."""
    with target(ctx).client() as client:
        if not follow:
            typer.echo(client.container_logs(container_id, tail=tail), nl=False)
            return
        print_stream(client.follow_container_logs(container_id, tail=tail))


def _act(
    ctx: typer.Context,
    ids: list[str],
    action: Callable[[Client, str], Json],
    until: set[str],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Ask for `action` on every container, then with `wait` follow them until each status is in `until`.

    Prints each container's status: the one the answer gave, or with `wait` the one reached (or `gone`).
    """
    with target(ctx).client() as client:
        # Only delete answers without a status: a deleted container is `terminating` until it is gone.
        answers = [
            {"id": container_id, "status": "terminating", **action(client, container_id)} for container_id in ids
        ]
        if wait:
            states = _finish_wait(client, ids, until, timeout, as_json)
            answers = [
                {"id": container_id, "status": (state or {}).get("status", GONE)}
                for container_id, state in states.items()
            ]
        elif as_json:
            print_json(answers)
    if not as_json:
        for answer in answers:
            typer.echo(f"{answer['id']}: {answer['status']}")


@app.command("stop")
@handle_errors
def stop(
    ctx: typer.Context,
    ids: IdsArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Stop containers (their data is kept; `start` runs them again)."""
    _act(ctx, ids, Client.stop_container, {"stopped"}, wait, timeout, as_json)


@app.command("start")
@handle_errors
def start(
    ctx: typer.Context,
    ids: IdsArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Start stopped containers."""
    _act(ctx, ids, Client.start_container, {"running"}, wait, timeout, as_json)


@app.command("restart")
@handle_errors
def restart(
    ctx: typer.Context,
    ids: IdsArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Restart containers."""
    _act(ctx, ids, Client.restart_container, {"running"}, wait, timeout, as_json)


@app.command("delete")
@handle_errors
def delete(
    ctx: typer.Context,
    ids: IdsArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Delete containers; their GPUs, ports and volumes are released once they are gone."""
    _act(ctx, ids, Client.delete_container, {GONE}, wait, timeout, as_json)
