"""The `dockyard` command: the server, the operator's bootstrap, and a client for every resource."""

from __future__ import annotations

import typer

from dockyard.cli import admin, server

app = typer.Typer(
    name="dockyard",
    help="Dockyard: GPU containers and serverless GPU endpoints on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("server", help="Run the API server (and the gateway and reconcilers) in the foreground.")(server.serve)
app.add_typer(admin.app, name="admin")


def main() -> None:
    app()
