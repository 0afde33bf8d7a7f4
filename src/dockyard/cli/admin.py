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


@app.command("quotas")
def quotas_command(
    org: Annotated[str, typer.Option("--org", help="the organization's name")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=LIMIT",
            help="set a limit (repeatable): containers, endpoints, workers, gpus, vcpus, memory_mb, storage_gb or "
            "queued_jobs; LIMIT 'default' returns it to the installation's DOCKYARD_QUOTA_*",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON")] = False,
) -> None:
    """Show an organization's quotas and what it holds; with --set, change limits first."""
    from pydantic import ValidationError
    from sqlalchemy import select

    from dockyard.cli.output import fail, print_json, print_table
    from dockyard.config import load_settings
    from dockyard.db.migrate import migrate
    from dockyard.db.models import OrganizationModel
    from dockyard.db.session import Database
    from dockyard.errors import validation_details
    from dockyard.schemas.admin import SetQuotasRequest
    from dockyard.schemas.quotas import Quotas
    from dockyard.services import quotas
    from dockyard.services.bootstrap import bootstrap

    limits: dict[str, str | None] = {}
    for item in set_ or []:
        name, equals, value = item.partition("=")
        if not equals or not value.strip():
            fail(f"--set {item}: expected NAME=LIMIT, for example --set vcpus=64 or --set vcpus=default")
        if name.strip() not in SetQuotasRequest.model_fields:
            fail(f"--set {item}: no quota {name.strip()}; use one of {', '.join(SetQuotasRequest.model_fields)}")
        limits[name.strip()] = None if value.strip() == "default" else value.strip()
    try:
        request = SetQuotasRequest.model_validate(limits)
    except ValidationError as exc:
        fail("; ".join(f"--set {d['field']}: {d['message']}" for d in validation_details(exc.errors())))
    settings = load_settings()

    async def run() -> Quotas | None:
        db = Database(settings.resolved_database_url)
        try:
            await migrate(db.url, after=lambda: bootstrap(db, settings))
            async with db.write_session() as session:
                org_id = await session.scalar(select(OrganizationModel.id).where(OrganizationModel.name == org))
                if org_id is None:
                    return None
                if limits:
                    return await quotas.set_limits(session, org_id, request, settings=settings)
                return await quotas.get(session, org_id, settings=settings)
        finally:
            await db.dispose()

    answer = asyncio.run(run())
    if answer is None:
        fail(f"no organization named {org}; `dockyard admin create-key --org {org}` makes one")
    if as_json:
        print_json(answer.model_dump(mode="json"))
        return
    rows = [
        [quota.name, str(quota.limit), f"{quota.used:g}", "default" if quota.default else "set"]
        for quota in answer.quotas
    ]
    print_table(["QUOTA", "LIMIT", "USED", "LIMIT FROM"], rows, empty="no quotas")
