"""`dockyard admin ...`: the operator's commands, run on the server's host against its database."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

app = typer.Typer(help="Operator commands (run where the server's database is reachable).", no_args_is_help=True)


@app.command("create-key")
def create_key(
    org: Annotated[str, typer.Option("--org", help="the organization (created if missing)")],
    member: Annotated[str, typer.Option(help="the member the key belongs to")] = "default",
) -> None:
    """Create an API key and print it alone on stdout (it is shown only this once)."""
    from dockyard.config import load_settings
    from dockyard.db.migrate import migrate
    from dockyard.db.session import Database
    from dockyard.services.bootstrap import bootstrap
    from dockyard.services.organizations import create_key_for_org_name

    settings = load_settings()

    async def run() -> str:
        db = Database(settings.resolved_database_url)
        try:
            await migrate(db.url, after=lambda: bootstrap(db, settings))
            async with db.write_session() as session:
                return await create_key_for_org_name(session, org, member)
        finally:
            await db.dispose()

    typer.echo(asyncio.run(run()))
