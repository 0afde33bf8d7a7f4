"""`dockyard admin ...`: the operator's commands, run on the server's host against its database.

They open the database directly, as `gitea admin` and `grafana cli admin` do, rather than call `/admin/v1` with a
token: whoever can read the data dir holds the database and the secret key already, so a token adds nothing on the
server's host, and the commands work whether the server runs or not, with no token set at its start. Away from that
host, the operator's API takes `DOCKYARD_ADMIN_TOKEN` or an admin key (`create-key --admin`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dockyard.cli import admin_backup
from dockyard.cli.admin_db import CreateOption, DataDirOption, admin_settings, on_database

if TYPE_CHECKING:
    from dockyard.db.session import Database
    from dockyard.schemas.admin import ApiKey, Node, Organization, Product
    from dockyard.schemas.processes import Process

app = typer.Typer(
    help="The operator's commands, on the server's host and its database (--data-dir; docs/operations.md).",
    no_args_is_help=True,
)
orgs_app = typer.Typer(help="List and create organizations.", no_args_is_help=True)
keys_app = typer.Typer(help="List and revoke API keys.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")
app.add_typer(keys_app, name="keys")

JsonOption = Annotated[bool, typer.Option("--json", help="print the answer as JSON")]


def _time(value: object) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


@app.command("create-key")
def create_key(
    org: Annotated[str, typer.Option("--org", help="the organization (created if missing)")],
    member: Annotated[str, typer.Option(help="the member the key belongs to")] = "default",
    admin: Annotated[bool, typer.Option("--admin", help="the key may also call the operator's API, /admin/v1")] = False,
    data_dir: DataDirOption = None,
    create: CreateOption = False,
) -> None:
    """Create an API key and print it alone on stdout (it is shown only this once)."""
    from dockyard.services.organizations import create_key_for_org_name

    async def work(db: Database) -> str:
        async with db.write_session() as session:
            return await create_key_for_org_name(session, org, member, is_admin=admin)

    typer.echo(on_database(admin_settings(data_dir), create, data_dir is not None, work))


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
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Show an organization's quotas and what it holds; with --set, change limits first."""
    from pydantic import ValidationError
    from sqlalchemy import select

    from dockyard.cli.output import fail, print_json, print_table
    from dockyard.db.models import OrganizationModel
    from dockyard.errors import validation_details
    from dockyard.schemas.admin import SetQuotasRequest
    from dockyard.schemas.quotas import Quotas
    from dockyard.services import quotas

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
    settings = admin_settings(data_dir)

    async def work(db: Database) -> Quotas | None:
        async with db.write_session() as session:
            org_id = await session.scalar(select(OrganizationModel.id).where(OrganizationModel.name == org))
            if org_id is None:
                return None
            if limits:
                return await quotas.set_limits(session, org_id, request, settings=settings)
            return await quotas.get(session, org_id, settings=settings)

    answer = on_database(settings, False, data_dir is not None, work)
    if answer is None:
        fail(f"no organization named {org}; `dockyard admin orgs create {org}` makes one")
    if as_json:
        print_json(answer.model_dump(mode="json"))
        return
    rows = [
        [quota.name, str(quota.limit), f"{quota.used:g}", "default" if quota.default else "set"]
        for quota in answer.quotas
    ]
    print_table(["QUOTA", "LIMIT", "USED", "LIMIT FROM"], rows, empty="no quotas")


@orgs_app.command("list")
def list_orgs(as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """List organizations."""
    from dockyard.cli.output import print_json, print_table
    from dockyard.services import organizations

    async def work(db: Database) -> list[Organization]:
        async with db.read() as session:
            return await organizations.list_orgs(session)

    orgs = on_database(admin_settings(data_dir), False, data_dir is not None, work)
    if as_json:
        print_json([org.model_dump(mode="json") for org in orgs])
        return
    rows = [[org.name, org.id, _time(org.created_at)] for org in orgs]
    print_table(["NAME", "ID", "CREATED"], rows, empty="no organizations; `dockyard admin orgs create NAME` makes one")


@orgs_app.command("create")
def create_org(
    name: Annotated[str, typer.Argument(help="letters, digits and _ . - (starting with a letter or digit)")],
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
    create: CreateOption = False,
) -> None:
    """Create an organization (without a key: `create-key --org NAME` makes one) and print its id."""
    from pydantic import ValidationError

    from dockyard.cli.output import fail, print_created
    from dockyard.schemas.admin import CreateOrganizationRequest
    from dockyard.services import organizations

    try:
        request = CreateOrganizationRequest(name=name)
    except ValidationError:
        fail(f"NAME {name!r}: use at most 255 letters, digits and _ . -, starting with a letter or digit")

    async def work(db: Database) -> Organization:
        async with db.write_session() as session:
            return await organizations.create_org(session, request.name)

    org = on_database(admin_settings(data_dir), create, data_dir is not None, work)
    print_created(org.model_dump(mode="json"), as_json)


@keys_app.command("list")
def list_keys(
    org: Annotated[str | None, typer.Option("--org", help="only this organization's keys")] = None,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """List API keys (never the keys themselves: their first characters), revoked ones included."""
    from dockyard.cli.output import print_json, print_table
    from dockyard.services import organizations

    async def work(db: Database) -> tuple[list[ApiKey], dict[str, str]]:
        async with db.read() as session:
            names = {row.id: row.name for row in await organizations.list_orgs(session)}
            return await organizations.list_all_keys(session, org), names

    keys, org_names = on_database(admin_settings(data_dir), False, data_dir is not None, work)
    if as_json:
        print_json([key.model_dump(mode="json") for key in keys])
        return
    rows = [
        [
            key.id,
            org_names.get(key.org_id, key.org_id),
            key.name,
            f"{key.prefix}…",
            "yes" if key.is_admin else "",
            _time(key.created_at),
            _time(key.revoked_at) or "[green]active[/]",
        ]
        for key in keys
    ]
    print_table(["ID", "ORG", "NAME", "KEY", "ADMIN", "CREATED", "REVOKED"], rows, empty="no API keys")


@keys_app.command("revoke")
def revoke_key(
    key: Annotated[
        str,
        typer.Argument(help="the key's id, a unique beginning of it, or the key's first characters (`keys list`)"),
    ],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an API key. A running server stops taking it within 10 seconds (its cache of keys)."""
    from dockyard.services import organizations

    async def work(db: Database) -> ApiKey:
        async with db.write_session() as session:
            return await organizations.revoke_key(session, key)

    revoked = on_database(admin_settings(data_dir), False, data_dir is not None, work)
    typer.echo(f"revoked {revoked.id} ({revoked.prefix}…)")


@app.command("inventory")
def inventory_command(as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """Show the nodes, their GPUs (and what holds each) and the products on sale."""
    from rich.markup import escape

    from dockyard.cli.output import print_json, print_table
    from dockyard.services import catalog, inventory

    async def work(db: Database) -> tuple[list[Node], list[Product]]:
        async with db.read() as session:
            return await inventory.list_nodes(session), await catalog.list_products(session)

    nodes, products = on_database(admin_settings(data_dir), False, data_dir is not None, work)
    if as_json:
        print_json(
            {
                "nodes": [node.model_dump(mode="json") for node in nodes],
                "products": [product.model_dump(mode="json") for product in products],
            }
        )
        return
    print_table(
        ["NODE", "IDC", "GPUS", "CPUS", "MEMORY MB", "DRIVER", "CUDA", "SEEN"],
        [
            [
                escape(node.id),
                node.idc_id,
                f"{len(node.gpus)} ({node.gpu_source})",
                f"{node.cpus:g}",
                str(node.memory_mb),
                node.driver_version,
                node.cuda_version,
                _time(node.seen_at),
            ]
            for node in nodes
        ],
        empty="no nodes (the server records its own at start)",
    )
    gpus = [
        [
            escape(node.id),
            str(gpu.index),
            escape(gpu.model) + (" (simulated)" if gpu.simulated else ""),
            str(gpu.memory_mb),
            gpu.allocated_to or "[green]free[/]",
            gpu.uuid,
        ]
        for node in nodes
        for gpu in node.gpus
    ]
    if gpus:
        typer.echo()
        print_table(["NODE", "GPU", "MODEL", "MEMORY MB", "HELD BY", "UUID"], gpus, empty="")
    typer.echo()
    print_table(
        ["PRODUCT", "IDC", "CATEGORY", "GPUS", "VCPUS", "MEMORY MB", "PRICE/H", "ON SALE"],
        [
            [
                product.id,
                product.idc_id,
                product.category,
                f"{product.gpu_count} x {escape(product.gpu_model)}" if product.gpu_count else "",
                f"{product.cpu:g}",
                str(product.memory_mb),
                f"{product.price_per_hour:g}",
                "yes" if product.valid else "no",
            ]
            for product in products
        ],
        empty="no products",
    )


@app.command("processes")
def processes_command(as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """List the live servers and gateways on this database, their last heartbeat and the leases they hold."""
    from dockyard.cli.output import print_json, print_table
    from dockyard.services import processes

    settings = admin_settings(data_dir)

    async def work(db: Database) -> list[Process]:
        async with db.read() as session:
            return await processes.list_processes(session, settings.lease_seconds)

    found = on_database(settings, False, data_dir is not None, work)
    if as_json:
        print_json([process.model_dump(mode="json") for process in found])
        return
    rows = [
        [
            process.id,
            process.kind,
            process.state,
            process.address,
            process.version,
            _time(process.started_at),
            _time(process.heartbeat_at),
            ", ".join(
                f"{lease.name} (token {lease.token}, since {_time(lease.acquired_at)}, "
                f"expires {_time(lease.expires_at)})"
                for lease in process.leases
            ),
        ]
        for process in found
    ]
    columns = ["ID", "KIND", "STATE", "ADDRESS", "VERSION", "STARTED", "HEARTBEAT", "LEASES"]
    print_table(columns, rows, empty="no server or gateway has a row: none runs on this database")


app.command("backup")(admin_backup.backup)
app.command("restore")(admin_backup.restore)
