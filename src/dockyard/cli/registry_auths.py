"""`dockyard registry-auths ...`: the credentials of private registries endpoints pull from (PPIO's
`/gpus/v2/registry-auths`; passwords are never answered)."""

from __future__ import annotations

import typer
from rich.markup import escape

from dockyard.cli.config import target
from dockyard.cli.options import JsonOption
from dockyard.cli.output import handle_errors, print_json, print_table

app = typer.Typer(help="Registry auths: the credentials endpoints pull private images with.")


@app.command("list")
@handle_errors
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List your registry auths (their passwords are never shown)."""
    with target(ctx).client() as client:
        auths = client.list_registry_auths()
    if as_json:
        print_json({"data": auths})
        return
    rows = [[escape(str(a["id"])), escape(str(a.get("name", ""))), escape(str(a.get("username", "")))] for a in auths]
    print_table(
        ("ID", "NAME", "USERNAME"),
        rows,
        empty="No registry auths. Create one through the API: POST /gpus/v2/registry-auths.",
    )
