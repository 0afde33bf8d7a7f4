"""`dockyard network-storages ...`: the network storages containers and workers mount (PPIO's
`/gpus/v2/network-storages`)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.markup import escape

from dockyard.cli.config import target
from dockyard.cli.options import JsonOption
from dockyard.cli.output import handle_errors, print_json, print_table, status_text

app = typer.Typer(help="Network storages: volumes whose data outlives the containers that mount them.")


@app.command("list")
@handle_errors
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List your network storages, newest first."""
    with target(ctx).client() as client:
        storages = client.list_network_storages()
    if as_json:
        print_json({"data": storages})
        return
    rows = [
        [
            escape(str(s["id"])),
            escape(str(s.get("name", ""))),
            escape(str(s.get("region_id", ""))),
            f"{s.get('size_gb', '')} GB",
            status_text(str(s.get("status", ""))),
            escape(", ".join(s.get("mounted_by") or [])),
            datetime.fromtimestamp(int(s.get("created_at") or 0), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ]
        for s in storages
    ]
    print_table(
        ("ID", "NAME", "REGION", "SIZE", "STATUS", "MOUNTED BY", "CREATED"),
        rows,
        empty="No network storages. Create one through the API: POST /gpus/v2/network-storages.",
    )
