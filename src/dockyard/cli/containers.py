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
    as_commands,
    fail,
    handle_errors,
    print_json,
    print_stream,
    print_table,
    status_text,
    stderr,
    wait_with_progress,
)
from dockyard.cli.resolve import CONTAINER, NETWORK_STORAGE, SSH_KEY, TEMPLATE, resolve, resolve_all
from dockyard.client import GONE, Client, ContainerFailed, Json, WaitTimeout

app = typer.Typer(help="GPU containers: create, list, inspect, read logs, stop, start, delete.", no_args_is_help=True)

WaitOption = Annotated[bool, typer.Option("--wait", help="show progress and return once the change is done")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="seconds --wait waits before giving up")]
SettleOption = Annotated[
    float,
    typer.Option("--settle", min=0, help="seconds a container must stay running for --wait to count it started"),
]
IdArgument = Annotated[str, typer.Argument(help="the container's id, name or id prefix", show_default=False)]
IdsArgument = Annotated[list[str], typer.Argument(help="containers' ids, names or id prefixes", show_default=False)]
StorageOption = Annotated[
    list[str] | None, typer.Option("--storage", help="STORAGE:/path to mount a network storage (id or name)")
]
SshKeyOption = Annotated[list[str] | None, typer.Option("--ssh-key", help="an SSH key (id or name); repeat for more")]


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
            escape(as_commands(str(c.get("reason", "")))),
            escape(str(c.get("product", ""))),
            escape(format_ports(c)),
            escape(str(c.get("createdAt", ""))),
        ]
        for c in containers
    ]


COLUMNS = ("ID", "NAME", "STATUS", "REASON", "PRODUCT", "PORTS", "CREATED")


def _finish_wait(
    client: Client, ids: list[str], until: set[str], timeout: float, as_json: bool, settle: float = 0.0
) -> dict[str, Json | None]:
    """Wait for `ids` to reach `until`; exits 1 with the reason and where to look further when one fails or the
    wait runs out."""
    try:
        states = wait_with_progress(client, ids, until, timeout, settle)
    except ContainerFailed as exc:
        fail(f"{exc.message}; `dockyard containers logs {exc.container.get('id', '')}` shows its output")
    except WaitTimeout as exc:
        look = f"dockyard containers get {ids[0]}" if len(ids) == 1 else "dockyard containers list"
        fail(f"{exc.message}; `{look}` shows where it stands")
    if as_json:
        print_json([state for state in states.values() if state is not None])
    return states


def _storages(client: Client, values: list[str] | None) -> list[dict[str, str]]:
    """`--storage`s with each storage's name or id prefix resolved to its id."""
    storages = parse_storages(values)
    ids = resolve_all(client, NETWORK_STORAGE, [storage["id"] for storage in storages]) if storages else []
    return [{**storage, "id": storage_id} for storage, storage_id in zip(storages, ids, strict=True)]


@app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    template: Annotated[str, typer.Option("--template", help="the template's id or name (`dockyard templates list`)")],
    product: Annotated[str, typer.Option("--product", help="what to run on (`dockyard products`)")],
    name: Annotated[str, typer.Option("--name", help="the container's name")],
    idc: Annotated[str, typer.Option("--idc", help="where to run it (`dockyard idcs`)")] = "local",
    count: Annotated[int, typer.Option("--count", min=1, help="how many identical containers")] = 1,
    env: EnvOption = None,
    port: PortOption = None,
    ssh_key: SshKeyOption = None,
    storage: StorageOption = None,
    command: CommandOption = "",
    arg: ArgOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    settle: SettleOption = 3.0,
    as_json: JsonOption = False,
) -> None:
    """Create containers from a template; prints their ids (with --wait, once they are running; exit 1 if one
    fails or exits within --settle seconds of starting)."""
    request: dict[str, Any] = {
        "count": count,
        "idc": idc,
        "product": product,
        "name": name,
        "command": command,
        "args": arg or [],
        "envs": parse_envs(env),
        "ports": parse_ports(port),
    }
    with target(ctx).client() as client:
        request["templateId"] = resolve(client, TEMPLATE, template)
        request["sshKeyIdList"] = resolve_all(client, SSH_KEY, ssh_key) if ssh_key else []
        if storage:
            request["storages"] = _storages(client, storage)
        ids = [str(created["id"]) for created in client.create_containers(request)]
        if wait:
            _finish_wait(client, ids, {"running"}, timeout, as_json, settle)
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
def get(ctx: typer.Context, container_id: IdArgument, as_json: JsonOption = False) -> None:
    """Show one container."""
    with target(ctx).client() as client:
        container = client.get_container(resolve(client, CONTAINER, container_id))
    if as_json:
        print_json(container)
        return
    print_table(
        ("FIELD", "VALUE"),
        [
            ["id", escape(str(container["id"]))],
            ["name", escape(str(container.get("name", "")))],
            ["status", status_text(str(container.get("status", "")))],
            ["reason", escape(as_commands(str(container.get("reason", ""))))],
            ["idc / product", escape(f"{container.get('idc', '')} / {container.get('product', '')}")],
            ["template", escape(str(container.get("templateId", "")))],
            ["ports", escape(format_ports(container))],
            ["public ip", escape(str((container.get("publicIP") or {}).get("ipAddress", "")))],
            ["created", escape(str(container.get("createdAt", "")))],
        ],
        empty="",
    )


def _moved_ports(before: Json, after: Json) -> list[str]:
    """`PORT/proto OLD -> NEW` for each published host port that differs between two reads of a container."""
    old = {
        (p["containerPort"], str(p.get("protocol", "TCP")).lower()): p.get("port") for p in before.get("ports") or []
    }
    moved = []
    for port in after.get("ports") or []:
        key = (port["containerPort"], str(port.get("protocol", "TCP")).lower())
        if old.get(key) and port.get("port") and old[key] != port["port"]:
            moved.append(f"{key[0]}/{key[1]} {old[key]} -> {port['port']}")
    return moved


@app.command("update")
@handle_errors
def update(
    ctx: typer.Context,
    container_id: IdArgument,
    name: Annotated[str | None, typer.Option("--name", help="a new name")] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template", help="another template (id or name): its image and defaults; the image is a template's"
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="NAME=VALUE to set, the container's other variables kept; repeat for more"),
    ] = None,
    port: Annotated[
        list[str] | None, typer.Option("--port", "-p", help="replaces the published ports: 8080, 8080:30080, 53/udp")
    ] = None,
    storage: StorageOption = None,
    command: Annotated[str | None, typer.Option("--command", help="replaces the command line")] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="replaces the arguments; repeat for more")] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    settle: SettleOption = 3.0,
    as_json: JsonOption = False,
) -> None:
    """Change a container: only what is given changes. It is recreated (its local data is lost, its storages
    kept) on the host ports it had when they are free; with --wait the ports it runs on are printed, and a
    change of them is said."""
    if all(value is None for value in (name, template, env, port, storage, command, arg)):
        fail("nothing to change; give an option such as --env NAME=VALUE or --template (see --help)")
    with target(ctx).client() as client:
        container_id = resolve(client, CONTAINER, container_id)
        before = client.get_container(container_id)
        # The PUT takes the name and the template whole (GMI's contract); what it is not sent is kept.
        request: dict[str, Any] = {
            "name": name if name is not None else before["name"],
            "templateId": resolve(client, TEMPLATE, template) if template is not None else before["templateId"],
        }
        if env is not None:
            # A sent list replaces the container's: its variables go back masked, which keeps their stored values,
            # with the given ones set over them.
            envs = {e["name"]: e for e in before.get("envs") or []}
            envs.update((e["name"], e) for e in parse_envs(env))
            request["envs"] = list(envs.values())
        if port is not None:
            request["ports"] = parse_ports(port)
        if storage is not None:
            request["storages"] = _storages(client, storage)
        if command is not None:
            request["command"] = command
        if arg is not None:
            request["args"] = arg
        client.update_container(container_id, request)
        if not wait:
            if as_json:
                print_json({"id": container_id})
            else:
                typer.echo(f"{container_id}: recreating; `dockyard containers get {container_id}` shows it")
            return
        # A stopped container is recreated stopped: `start` runs it.
        until = "stopped" if before.get("status") == "stopped" else "running"
        settled = settle if until == "running" else 0.0
        after = _finish_wait(client, [container_id], {until}, timeout, as_json, settled)[container_id] or {}
    moved = _moved_ports(before, after) if port is None else []  # ports given are changed on purpose
    if moved:
        changed = escape(", ".join(moved))
        stderr().print(f"[yellow]host ports changed:[/yellow] {changed} (the previous ones were taken on the host)")
    if not as_json:
        typer.echo(f"{container_id}: {until}; ports {format_ports(after) or 'none'}")


@app.command("logs")
@handle_errors
def logs(
    ctx: typer.Context,
    container_id: IdArgument,
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="only the last N lines")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new output (Ctrl-C stops)")] = False,
) -> None:
    """Print a container's output."""
    with target(ctx).client() as client:
        container_id = resolve(client, CONTAINER, container_id)
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
    settle: float = 0.0,
) -> None:
    """Ask for `action` on every container, then with `wait` follow them until each status is in `until` (for
    `settle` seconds).

    Prints each container's status: the one the answer gave, or with `wait` the one reached (or `gone`).
    """
    with target(ctx).client() as client:
        ids = resolve_all(client, CONTAINER, ids)
        # Only delete answers without a status: a deleted container is `terminating` until it is gone.
        answers = [
            {"id": container_id, "status": "terminating", **action(client, container_id)} for container_id in ids
        ]
        if wait:
            states = _finish_wait(client, ids, until, timeout, as_json, settle)
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
    settle: SettleOption = 3.0,
    as_json: JsonOption = False,
) -> None:
    """Start stopped containers."""
    _act(ctx, ids, Client.start_container, {"running"}, wait, timeout, as_json, settle)


@app.command("restart")
@handle_errors
def restart(
    ctx: typer.Context,
    ids: IdsArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    settle: SettleOption = 3.0,
    as_json: JsonOption = False,
) -> None:
    """Restart containers."""
    _act(ctx, ids, Client.restart_container, {"running"}, wait, timeout, as_json, settle)


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
