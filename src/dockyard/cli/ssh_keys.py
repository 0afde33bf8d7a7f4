"""`dockyard ssh-keys ...`: public keys installed into containers as their authorized keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dockyard.cli.config import target
from dockyard.cli.options import JsonOption
from dockyard.cli.output import fail, handle_errors, print_created, print_json, print_table
from dockyard.cli.resolve import SSH_KEY, resolve_all

app = typer.Typer(help="SSH public keys to install into containers.", no_args_is_help=True)


@app.command("add")
@handle_errors
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="a name to recognise the key by")],
    public_key_file: Annotated[
        Path | None, typer.Option("--public-key-file", help="a public key file, for example ~/.ssh/id_ed25519.pub")
    ] = None,
    public_key: Annotated[str | None, typer.Option("--public-key", help="the public key itself")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a public key; prints its id (give it to `containers create --ssh-key`)."""
    if (public_key_file is None) == (public_key is None):
        fail("give exactly one of --public-key-file FILE or --public-key 'ssh-ed25519 AAAA...'")
    if public_key_file is not None:
        try:
            public_key = public_key_file.read_text().strip()
        except OSError as exc:
            fail(f"cannot read {public_key_file} ({exc.strerror}); give the .pub file of your key")
    assert public_key is not None
    with target(ctx).client() as client:
        created = client.create_ssh_key(name, public_key)
    print_created(created, as_json)


@app.command("list")
@handle_errors
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List your SSH keys."""
    with target(ctx).client() as client:
        answer = client.list_ssh_keys()
    if as_json:
        print_json(answer)
        return
    rows = [
        [escape(str(k["id"])), escape(str(k.get("name", ""))), escape(str(k.get("fingerprint", "")))] for k in answer
    ]
    print_table(("ID", "NAME", "FINGERPRINT"), rows, empty="No SSH keys. Add one with `dockyard ssh-keys add`.")


@app.command("delete")
@handle_errors
def delete(
    ctx: typer.Context, key_ids: Annotated[list[str], typer.Argument(help="SSH keys' ids, names or id prefixes")]
) -> None:
    """Delete SSH keys (containers that have them keep them until recreated)."""
    with target(ctx).client() as client:
        for key_id in resolve_all(client, SSH_KEY, key_ids):
            client.delete_ssh_key(key_id)
            typer.echo(f"{key_id}: deleted")
