"""How `dockyard endpoints` shows an endpoint and its workers: table rows, the live view of a wait, the wait itself."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from dockyard.cli.output import as_commands, fail, live_wait, status_text
from dockyard.client import Client, EndpointFailed, Json, ready_workers
from dockyard.core.status import EndpointType


def utc_time(value: Any) -> str:
    return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def status_of(thing: Json) -> str:
    return str((thing.get("status") or {}).get("status", ""))


def message_of(thing: Json) -> str:
    status = thing.get("status") or {}
    return as_commands(str(status.get("error") or status.get("message") or ""))


def replicas(endpoint: Json) -> str:
    config = endpoint.get("worker_config") or {}
    workers = endpoint.get("workers") or []
    ready = ready_workers(endpoint)
    return f"{ready}/{len(workers)} ready (min {config.get('min_replicas', 0)}, max {config.get('max_replicas', 0)})"


def worker_rows(workers: list[Json], detail: bool) -> list[list[str]]:
    rows = []
    for worker in workers:
        row = [escape(str(worker["id"])), status_text(status_of(worker)), "yes" if worker.get("health") else "no"]
        if detail:
            row += [
                "yes" if worker.get("drain") else "no",
                str(worker.get("generation", "")),
                escape(str(worker.get("node_id", ""))),
            ]
        row.append(escape(message_of(worker)))
        if detail:
            row += [escape(probe(worker)), utc_time(worker.get("created_at"))]
        rows.append(row)
    return rows


def probe(worker: Json) -> str:
    """What the last health probe saw and when ("status 404 at 12:00:03"); an async worker's last webhook call."""
    probe = worker.get("last_probe")
    if isinstance(probe, dict) and probe.get("result"):
        return f"{probe['result']} at {utc_time(probe.get('at'))}"
    if worker.get("last_call_at"):
        return f"called in at {utc_time(worker.get('last_call_at'))}"
    return ""


class EndpointProgress:
    """The live view of a wait: the endpoint's status and reason, then its workers; rich re-renders it several
    times a second, so the elapsed time moves while nothing changes."""

    def __init__(self, endpoint_id: str) -> None:
        self.started = time.monotonic()
        self.endpoint: Json = {"id": endpoint_id}

    def update(self, endpoint: Json) -> None:
        self.endpoint = endpoint

    def __rich__(self) -> Group:
        head = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("ENDPOINT", "STATUS", "WORKERS", "ELAPSED", "MESSAGE"):
            head.add_column(column, no_wrap=column != "MESSAGE")
        head.add_row(
            escape(str(self.endpoint.get("name") or self.endpoint["id"])),
            status_text(status_of(self.endpoint) or "…"),
            replicas(self.endpoint),
            f"{time.monotonic() - self.started:.0f}s",
            escape(message_of(self.endpoint)),
        )
        workers = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("WORKER", "STATUS", "HEALTH", "MESSAGE"):
            workers.add_column(column)
        for row in worker_rows(self.endpoint.get("workers") or [], detail=False):
            workers.add_row(*row)
        return Group(head, workers)


def wait_until_up(client: Client, endpoint_id: str, timeout: float) -> Json:
    """Wait for the endpoint to be up; exits 1 with its reason and where to look further when it fails or the wait
    runs out."""
    progress = EndpointProgress(endpoint_id)
    try:
        return live_wait(
            progress,
            lambda: client.wait_for_endpoint(endpoint_id, timeout=timeout, on_change=progress.update),
            f"dockyard endpoints get {endpoint_id}",
        )
    except EndpointFailed as exc:
        fail(
            f"{exc.message}; `dockyard endpoints events {endpoint_id}` and "
            f"`dockyard endpoints workers {endpoint_id}` say more"
        )


def is_async(endpoint: Json) -> bool:
    return endpoint.get("type") == EndpointType.ASYNC.value


def url_row(endpoint: Json) -> list[str]:
    """An async endpoint is called at its job API (`{url}/run`, `{url}/status/JOB`), a sync one at its URL."""
    url = escape(str(endpoint.get("url", "")))
    return ["job api", f"{url} (run, status/JOB, ...)"] if is_async(endpoint) else ["url", url]


def health_rows(endpoint: Json, check: Json) -> list[list[str]]:
    """The health check, which only a sync endpoint's workers are probed with (an async worker is ready once it
    takes jobs)."""
    if is_async(endpoint):
        return []
    return [["health check", escape(f"GET {check.get('path', '')} on port {check.get('port', '')}")]]
