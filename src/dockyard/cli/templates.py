"""`dockyard templates ...`: an image and its defaults, reused by containers."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from dockyard.cli.config import target
from dockyard.cli.containers import format_ports
from dockyard.cli.options import ArgOption, CommandOption, EnvOption, JsonOption, PortOption, parse_envs, parse_ports
from dockyard.cli.output import fail, handle_errors, print_created, print_json, print_table
from dockyard.cli.resolve import TEMPLATE, resolve, resolve_all

app = typer.Typer(
    help="Templates: an image with its command, env and ports, to create containers from.", no_args_is_help=True
)

IdArgument = Annotated[str, typer.Argument(help="the template's id, name or id prefix")]
COLUMNS = ("ID", "NAME", "IMAGE", "COMMAND", "PORTS", "CREATED")


@app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="the template's name")],
    image: Annotated[str, typer.Option("--image", help="the image, for example localhost/app:1")],
    command: CommandOption = "",
    arg: ArgOption = None,
    env: EnvOption = None,
    port: PortOption = None,
    username: Annotated[str | None, typer.Option("--username", help="the registry user for a private image")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the registry password from stdin")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a template; prints its id."""
    request: dict[str, Any] = {
        "name": name,
        "path": image,
        "command": command,
        "args": arg or [],
        "envs": parse_envs(env),
        "ports": parse_ports(port),
    }
    if username or password_stdin:
        if not (username and password_stdin):
            fail("a private registry needs both --username and --password-stdin (the password on stdin)")
        secret = sys.stdin.read().strip()
        if not secret:
            fail("--password-stdin read an empty password; pipe it in: `echo $TOKEN | dockyard templates create ...`")
        request["credential"] = {"username": username, "secret": secret}
    with target(ctx).client() as client:
        created = client.create_template(request)
    print_created(created, as_json)


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    page: Annotated[int, typer.Option("--page", min=1)] = 1,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=1000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """List your templates."""
    with target(ctx).client() as client:
        answer = client.list_templates(page=page, page_size=page_size)
    if as_json:
        print_json(answer)
        return
    rows = [
        [
            escape(str(t["id"])),
            escape(str(t.get("name", ""))),
            escape(str(t.get("path", ""))),
            escape(" ".join([str(t.get("command", "")), *map(str, t.get("args") or [])]).strip()),
            escape(format_ports(t)),
            escape(str(t.get("createdAt", ""))),
        ]
        for t in answer.get("items", [])
    ]
    print_table(COLUMNS, rows, empty="No templates. Create one with `dockyard templates create --name N --image I`.")


@app.command("get")
@handle_errors
def get(ctx: typer.Context, template_id: IdArgument, as_json: JsonOption = False) -> None:
    """Show one template (secrets masked)."""
    with target(ctx).client() as client:
        template = client.get_template(resolve(client, TEMPLATE, template_id))
    if as_json:
        print_json(template)
        return
    envs = ", ".join(f"{e['name']}={e.get('value', '')}" for e in template.get("envs") or [])
    credential = template.get("credential") or {}
    rows = [
        ["id", template["id"]],
        ["name", template.get("name", "")],
        ["image", template.get("path", "")],
        ["command", template.get("command", "")],
        ["args", " ".join(template.get("args") or [])],
        ["envs", envs],
        ["ports", format_ports(template)],
        ["registry user", credential.get("username", "")],
        ["created", template.get("createdAt", "")],
    ]
    print_table(("FIELD", "VALUE"), [[field, escape(str(value))] for field, value in rows], empty="")


@app.command("delete")
@handle_errors
def delete(
    ctx: typer.Context, template_ids: Annotated[list[str], typer.Argument(help="templates' ids, names or id prefixes")]
) -> None:
    """Delete templates (containers made from them keep running)."""
    with target(ctx).client() as client:
        for template_id in resolve_all(client, TEMPLATE, template_ids):
            client.delete_template(template_id)
            typer.echo(f"{template_id}: deleted")
