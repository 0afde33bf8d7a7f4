"""Where the CLI finds its server and key: `--url`/`--api-key`, then `DOCKYARD_URL`/`DOCKYARD_API_KEY`, then
the file `dockyard login` writes, then the default local server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from dockyard.cli.output import fail, handle_errors, stderr
from dockyard.client import Client

DEFAULT_URL = "http://127.0.0.1:8080"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockyard" / "config.yaml"


def read_config() -> dict[str, str]:
    """The saved `url` and `api_key`; an absent file is empty, a broken one is an error that names it."""
    path = config_path()
    try:
        loaded: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {path} ({exc}); fix it or run `dockyard login` again")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        fail(f"{path} is not a mapping of url and api_key; run `dockyard login` again")
    return {str(key): str(value) for key, value in loaded.items()}


def write_config(url: str, api_key: str) -> Path:
    """Save the file readable by its owner alone: it holds a key."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have been created with wider permissions
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump({"url": url, "api_key": api_key}, out)
    return path


@dataclass
class Target:
    """The server and key this invocation talks to, resolved from flag, environment, file and default."""

    url: str | None = None
    api_key: str | None = None

    def resolved_url(self) -> str:
        return (self.url or read_config().get("url") or DEFAULT_URL).rstrip("/")

    def client(self) -> Client:
        api_key = self.api_key or read_config().get("api_key")
        if not api_key:
            fail(
                "no API key: run `dockyard login --url URL --api-key KEY` or set DOCKYARD_API_KEY "
                "(the operator makes keys with `dockyard admin create-key --org NAME`)"
            )
        return Client(self.resolved_url(), api_key)


def target(ctx: typer.Context) -> Target:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Target) else Target()


@handle_errors
def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="the server, for example http://127.0.0.1:8080")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="a key from `dockyard admin create-key`")] = None,
) -> None:
    """Check a server URL and API key, and save them for later commands (mode 0600)."""
    given = target(ctx)
    chosen = Target(url=url or given.url, api_key=api_key or given.api_key)
    if not chosen.api_key:
        fail("give the key: `dockyard login --url URL --api-key KEY`")
    with chosen.client() as client:
        client.list_templates(page_size=1)  # proves both the address and the key before saving them
    path = write_config(chosen.resolved_url(), chosen.api_key)
    stderr().print(f"Logged in to {chosen.resolved_url()}; saved to {path}")
