"""The `dockyard` command: the server, the operator's bootstrap, and a client for every resource."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

from dockyard.cli import (
    admin,
    catalog,
    config,
    containers,
    endpoints,
    jobs,
    network_storages,
    registry_auths,
    server,
    ssh_keys,
    templates,
)

EXIT_CODES = (
    "Exit status: 0 done (with --wait, the awaited state was reached); 1 an error, or --wait ended without the "
    "awaited state (the reason and a command to look further are printed); 2 a usage error; 130 interrupted. "
    "Names and unique id prefixes are taken wherever an id goes."
)

app = typer.Typer(
    name="dockyard",
    help="Dockyard: GPU containers and serverless GPU endpoints on your own machines.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"dockyard {version('dockyard')}")
        raise typer.Exit()


@app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="DOCKYARD_URL",
            help="the server (default: the one saved by `login`, else http://127.0.0.1:8080)",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="DOCKYARD_API_KEY", help="your API key (default: the one saved by `login`)"),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """Dockyard: GPU containers and serverless GPU endpoints on your own machines."""
    ctx.obj = config.Target(url=url, api_key=api_key)


app.command("server", help="Run the API server (and the gateway and reconcilers) in the foreground.")(server.serve)
app.command("gateway", help="Run a stand-alone sync gateway (the server runs one itself) on the same database.")(
    server.gateway
)
app.command("login")(config.login)
app.command("idcs")(catalog.idcs)
app.command("products")(catalog.products)
app.add_typer(containers.app, name="containers")
# `endpoints health` is defined with the jobs it counts, keeping the endpoints module small.
endpoints.app.command("health")(jobs.health)
app.add_typer(endpoints.app, name="endpoints")
app.add_typer(jobs.app, name="jobs")
app.add_typer(templates.app, name="templates")
app.add_typer(ssh_keys.app, name="ssh-keys")
app.add_typer(network_storages.app, name="network-storages")
app.add_typer(registry_auths.app, name="registry-auths")
app.add_typer(admin.app, name="admin")


def main() -> None:
    from dockyard.config import ConfigError

    try:
        app()
    except ConfigError as exc:  # the server's or the operator's commands read the configuration
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
