"""How the CLI speaks: tables for people, raw JSON for scripts (`--json`), errors on stderr with exit 1, output
streamed as it comes, and a live progress table while waiting for containers or endpoints."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from dockyard.client import GONE, Client, DockyardError, Json

P = ParamSpec("P")
R = TypeVar("R")

PIPE_WIDTH = 250

STATUS_STYLES = {
    "running": "green",
    "creating": "yellow",
    "terminating": "yellow",
    "stopped": "dim",
    GONE: "dim",
    "error": "red",
    "zombie": "red",
    "unknown": "magenta",
    # Endpoints and their workers.
    "deploying": "yellow",
    "updating": "yellow",
    "deleting": "yellow",
    "failed": "red",
    "pending": "yellow",
    "starting": "yellow",
    "ready": "green",
    "draining": "yellow",
    "stopping": "yellow",
    "exited": "dim",
}


def stdout() -> Console:
    """Built per call, since the streams may be swapped between calls (as a test runner does)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped into grep or awk: lines as wide as the content, never ids folded at 80 columns.
        console.width = max(console.width, PIPE_WIDTH)
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


_ID = r"([A-Za-z0-9._-]+)"
# The routes the server's messages point at, and the command that does the same (most specific first). A route
# with no command stays as it is.
ROUTE_COMMANDS = [
    (re.compile(rf"PUT /api/v1/containers/{_ID}"), r"`dockyard containers update \1`"),
    (re.compile(r"GET /api/v1/containers/products(\?idc=[A-Za-z0-9._-]+)?"), "`dockyard products`"),
    (re.compile(r"GET /api/v1/containers\b"), "`dockyard containers list`"),
    (re.compile(r"POST /api/v1/templates\b"), "`dockyard templates create`"),
    (re.compile(r"GET /api/v1/templates\b"), "`dockyard templates list`"),
    (re.compile(r"POST /api/v1/ssh-keys\b"), "`dockyard ssh-keys add`"),
    (re.compile(r"GET /api/v1/ssh-keys\b"), "`dockyard ssh-keys list`"),
    (re.compile(r"GET /(api/v1/idcs|gpus/v2/regions)\b"), "`dockyard idcs`"),
    (re.compile(r"GET /gpus/v2/products\?category=serverless(&region_ids=[A-Za-z0-9._-]+)?"), "`dockyard products`"),
    (re.compile(rf"PUT /gpus/v2/endpoints/{_ID}"), r"`dockyard endpoints update \1`"),
    (re.compile(rf"GET /gpus/v2/endpoints/{_ID}/workers"), r"`dockyard endpoints workers \1`"),
    (re.compile(rf"GET /gpus/v2/endpoints/{_ID}"), r"`dockyard endpoints get \1`"),
    (re.compile(r"GET /gpus/v2/endpoints\b"), "`dockyard endpoints list`"),
    (re.compile(r"GET /gpus/v2/network-storages\b"), "`dockyard network-storages list`"),
    (re.compile(r"GET /gpus/v2/registry-auths\b"), "`dockyard registry-auths list`"),
]


def as_commands(message: str) -> str:
    """A server's message with the routes it points at replaced by the commands that do the same, for a reader of
    the CLI."""
    for route, command in ROUTE_COMMANDS:
        message = route.sub(command, message)
    return message


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit 1; `message` must say what to do (routes it names are said as
    the commands that do the same)."""
    stderr().print(f"[red]error:[/red] {escape(as_commands(message))}")
    raise typer.Exit(1)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the SDK's errors into `error: <message>` and exit status 1 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except DockyardError as exc:
            fail(exc.message)

    return wrapper


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def print_created(created: dict[str, Any], as_json: bool) -> None:
    """A create's answer: the new id alone (for `$(...)` in scripts), or the whole JSON with `--json`."""
    if as_json:
        print_json(created)
    else:
        typer.echo(created["id"])


def status_text(status: str) -> str:
    return f"[{STATUS_STYLES.get(status, 'default')}]{escape(status)}[/]"


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> None:
    """A table of already-formatted cells (rich markup allowed); `empty` is said instead of an empty table."""
    if not rows:
        stderr().print(empty)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for index, column in enumerate(columns):
        # The first column is the id or name a user copies into the next command: never wrapped.
        table.add_column(column, no_wrap=index == 0, overflow="fold")
    for row in rows:
        table.add_row(*row)
    stdout().print(table)


class WaitProgress:
    """The live table's content: each container's name, status, reason and time since the wait began.

    rich re-renders it several times a second, so the elapsed column moves even while nothing changes.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.started = time.monotonic()
        self.states: dict[str, Json | None] = dict.fromkeys(ids)
        self.names = {container_id: container_id for container_id in ids}  # kept after a container is gone
        self.seen: set[str] = set()

    def update(self, states: dict[str, Json | None]) -> None:
        self.states.update(states)
        self.seen.update(states)
        for container_id, state in states.items():
            if state is not None and state.get("name"):
                self.names[container_id] = str(state["name"])

    def __rich__(self) -> Table:
        elapsed = f"{time.monotonic() - self.started:.0f}s"
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("NAME", "STATUS", "REASON", "ELAPSED"):
            table.add_column(column)
        for container_id, state in self.states.items():
            name = escape(self.names[container_id])
            if container_id not in self.seen:
                table.add_row(name, "…", "", elapsed)
            elif state is None:
                table.add_row(name, status_text(GONE), "", elapsed)
            else:
                reason = escape(as_commands(str(state.get("reason", ""))))
                table.add_row(name, status_text(str(state["status"])), reason, elapsed)
        return table


def print_stream(chunks: Iterable[str | bytes]) -> None:
    """Write each chunk to stdout as it arrives (logs, an endpoint's answer); Ctrl-C ends it quietly, exit 0."""
    try:
        for chunk in chunks:
            typer.echo(chunk, nl=False)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def live_wait(progress: Any, wait: Callable[[], R], watch: str) -> R:
    """Run `wait` while rich re-renders `progress` on stderr (stdout stays for `--json`); Ctrl-C stops waiting,
    not the change, and says to follow it with the command `watch`."""
    console = stderr()
    try:
        with Live(progress, console=console, refresh_per_second=4, transient=False):
            return wait()
    except KeyboardInterrupt:
        console.print(f"Stopped waiting; the change goes on without you. Follow it with `{watch}`.")
        raise typer.Exit(130) from None
    finally:
        if not console.is_terminal:
            # rich ends the display with a newline on a terminal only; elsewhere the next line would join its last.
            console.line()


def wait_with_progress(
    client: Client, ids: Sequence[str], until: set[str], timeout: float, settle: float = 0.0
) -> dict[str, Json | None]:
    """Wait for `ids` to reach `until` (and stay there `settle` seconds), showing the live table of the
    containers."""
    progress = WaitProgress(ids)
    return live_wait(
        progress,
        lambda: client.wait_for_containers(ids, until=until, timeout=timeout, on_change=progress.update, settle=settle),
        "dockyard containers list",
    )
