"""`dockyard jobs ...`: the jobs of async endpoints (run, watch, inspect, cancel, list), and `dockyard endpoints
health`, an async endpoint's queue and workers at a glance (defined here, registered on the endpoints group)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from dockyard.cli.config import target
from dockyard.cli.options import JsonOption, read_data
from dockyard.cli.output import fail, handle_errors, live_wait, print_created, print_json, print_table, stderr
from dockyard.cli.resolve import ENDPOINT, resolve
from dockyard.client import ApiError, Client, Json
from dockyard.client_jobs import FINAL_STATUSES

app = typer.Typer(
    help="Jobs of async endpoints: run (and wait for) one, stream or show it, cancel it, list an endpoint's jobs.",
    no_args_is_help=True,
)

EndpointArgument = Annotated[
    str,
    typer.Argument(help="the async endpoint's id, name or id prefix (`dockyard endpoints list`)", show_default=False),
]
JobArgument = Annotated[str, typer.Argument(help="the job id (`dockyard jobs list ENDPOINT`)", show_default=False)]

JOB_STYLES = {
    "IN_QUEUE": "yellow",
    "IN_PROGRESS": "cyan",
    "COMPLETED": "green",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "CANCELLED": "dim",
}


def _status_text(status: str) -> str:
    return f"[{JOB_STYLES.get(status, 'default')}]{escape(status)}[/]"


def _duration(milliseconds: Any) -> str:
    return f"{int(milliseconds) / 1000:.1f}s" if isinstance(milliseconds, int | float) else ""


def _time(value: Any) -> str:
    """`created_at` as the API gives it: epoch seconds, shown in UTC, or text shown as it is."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return escape(str(value or ""))


def reason_rows(reason: Any) -> list[list[str]]:
    """The rows that show a blocking reason (services/waits.py): its code and since when, then its message;
    none when nothing blocks."""
    if not isinstance(reason, dict):
        return []
    since = f" since {_time(reason['since'])}" if isinstance(reason.get("since"), int) else ""
    return [
        ["waiting on", escape(f"{reason.get('code', '')}{since}")],
        ["why", escape(str(reason.get("message", "")))],
    ]


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _error_summary(error: Any) -> str:
    """A job's error in one line: both SDKs report a handler's exception as a JSON text of `error_type`,
    `error_message` and the traceback, of which the message and the type say enough here."""
    try:
        decoded = json.loads(error) if isinstance(error, str) else error
    except ValueError:
        decoded = error
    if isinstance(decoded, dict) and "error_message" in decoded:
        kind = str(decoded.get("error_type", "")).removeprefix("<class '").removesuffix("'>")
        return f"{decoded['error_message']} ({kind})" if kind else str(decoded["error_message"])
    return _compact(error)


def _not_found(exc: ApiError, endpoint_id: str, job_id: str | None = None) -> NoReturn:
    """An unknown job or endpoint (the API's 404s name which) in a sentence that says where to look; any other
    error goes on to `handle_errors` as it is."""
    if exc.code == 404 and job_id is not None and exc.message.startswith(f"job {job_id} "):
        fail(
            f"job {job_id} not found on endpoint {endpoint_id} (finished jobs are kept only for their ttl); "
            f"`dockyard jobs list {endpoint_id}` shows its jobs"
        )
    if exc.code == 404 and exc.message.startswith("endpoint "):
        fail(
            f"endpoint {endpoint_id} not found among your async endpoints; "
            "`dockyard endpoints list` shows yours and their types"
        )
    raise exc


def _read_input(value: str | None) -> Any:
    """`--input`: JSON given inline, as `@FILE`, or `-` for stdin; none given is `{}`."""
    data = read_data(value)
    if data is None:
        return {}
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        fail(f'--input is not JSON ({exc}); give it as JSON, for example --input \'{{"prompt": "hi"}}\'')


class JobProgress:
    """The live view of `jobs run --wait`: the job, its status and the time since the wait began; rich
    re-renders it several times a second, so the elapsed time moves while nothing changes."""

    def __init__(self, job_id: str) -> None:
        self.started = time.monotonic()
        self.view: Json = {"id": job_id}

    def update(self, view: Json) -> None:
        self.view = view

    def __rich__(self) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("JOB", "STATUS", "ELAPSED", "WORKER"):
            table.add_column(column, no_wrap=True)
        table.add_row(
            escape(str(self.view["id"])),
            _status_text(str(self.view.get("status") or "…")),
            f"{time.monotonic() - self.started:.0f}s",
            escape(str(self.view.get("workerId", ""))),
        )
        return table


def _finish(endpoint_id: str, view: Json, timeout: float, as_json: bool) -> None:
    """Print a waited-for job's result: its output (or view with --json); exit 1 unless it COMPLETED."""
    status = str(view.get("status", ""))
    if as_json:
        print_json(view)
    elif status == "COMPLETED":
        typer.echo(_compact(view.get("output")))
    if status not in FINAL_STATUSES:
        fail(
            f"gave up after {timeout:g} s: job {view['id']} is still {status}; it goes on without you, "
            f"follow it with `dockyard jobs status {endpoint_id} {view['id']}`"
        )
    _fail_unless_completed(endpoint_id, view)


def _fail_unless_completed(endpoint_id: str, view: Json) -> None:
    """Exit 1 with a final job's error and where to read all of it, unless it COMPLETED."""
    status = str(view.get("status", ""))
    if status != "COMPLETED":
        summary = _error_summary(view["error"]) if view.get("error") else "no error recorded"
        fail(
            f"job {view['id']} is {status}: {summary}; "
            f"`dockyard jobs status {endpoint_id} {view['id']} --json` shows all of it"
        )


@app.command("run")
@handle_errors
def run(
    ctx: typer.Context,
    endpoint_id: EndpointArgument,
    input_: Annotated[
        str | None, typer.Option("--input", "-i", help="the job's input as JSON, @FILE, or - for stdin (default {})")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="show the status live until final, then the output")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds --wait waits before giving up")] = 600.0,
    webhook: Annotated[str | None, typer.Option("--webhook", help="a URL the final status is POSTed to")] = None,
    execution_timeout: Annotated[
        int | None, typer.Option("--execution-timeout", min=1, help="milliseconds a run may take (then TIMED_OUT)")
    ] = None,
    ttl: Annotated[int | None, typer.Option("--ttl", min=1, help="milliseconds the job may live in all")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="a repeated key answers the first job, queues no other")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a job; prints its id (with --wait, its output once it is done; exit 1 unless it COMPLETED)."""
    job_input = _read_input(input_)
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        try:
            queued = client.run_job(
                endpoint_id,
                job_input,
                webhook=webhook,
                execution_timeout_ms=execution_timeout,
                ttl_ms=ttl,
                idempotency_key=idempotency_key,
            )
        except ApiError as exc:
            _not_found(exc, endpoint_id)
        if not wait:
            print_created(queued, as_json)
            return
        view = _wait(client, endpoint_id, str(queued["id"]), timeout)
    _finish(endpoint_id, view, timeout, as_json)


def _wait(client: Client, endpoint_id: str, job_id: str, timeout: float) -> Json:
    progress = JobProgress(job_id)
    return live_wait(
        progress,
        lambda: client.wait_for_job(endpoint_id, job_id, timeout, on_change=progress.update),
        f"dockyard jobs status {endpoint_id} {job_id}",
    )


@app.command("status")
@handle_errors
def status(ctx: typer.Context, endpoint_id: EndpointArgument, job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Show a job: its status, how long it waited and ran, and its output or error."""
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        try:
            view = client.job_status(endpoint_id, job_id)
        except ApiError as exc:
            _not_found(exc, endpoint_id, job_id)
    if as_json:
        print_json(view)
        return
    rows = [
        ["id", escape(str(view.get("id", job_id)))],
        ["status", _status_text(str(view.get("status", "")))],
        ["waited", _duration(view.get("delayTime"))],
        ["ran", _duration(view.get("executionTime"))],
    ]
    for field, key in (("worker", "workerId"), ("retries", "retries"), ("position", "position")):
        if key in view:
            rows.append([field, escape(str(view[key]))])
    if view.get("estimatedStartAt"):
        rows.append(["starts about", _time(view["estimatedStartAt"])])
    rows.extend(reason_rows(view.get("reason")))
    if "output" in view:
        rows.append(["output", escape(_compact(view["output"]))])
    if view.get("error"):
        rows.append(["error", escape(_compact(view["error"]))])
    print_table(("FIELD", "VALUE"), rows, empty="")


@app.command("stream")
@handle_errors
def stream(ctx: typer.Context, endpoint_id: EndpointArgument, job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Print the parts a job's handler yields, one a line, as they arrive; at the job's end say its status (exit 1
    unless it COMPLETED)."""
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        try:
            for part in client.stream_job(endpoint_id, job_id):
                typer.echo(json.dumps(part) if as_json else _compact(part))
            view = client.job_status(endpoint_id, job_id)
        except ApiError as exc:
            _not_found(exc, endpoint_id, job_id)
        except KeyboardInterrupt:
            stderr().print(
                f"Stopped reading; the job goes on. Follow it with `dockyard jobs status {endpoint_id} {job_id}`."
            )
            raise typer.Exit(130) from None
    stderr().print(f"job {job_id}: {view.get('status', '')}")
    _fail_unless_completed(endpoint_id, view)


@app.command("cancel")
@handle_errors
def cancel(ctx: typer.Context, endpoint_id: EndpointArgument, job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Cancel a queued or running job (a running one's worker is told to stop)."""
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        try:
            view = client.cancel_job(endpoint_id, job_id)
        except ApiError as exc:
            _not_found(exc, endpoint_id, job_id)
    if as_json:
        print_json(view)
    else:
        typer.echo(f"{view.get('id', job_id)}: {view.get('status', 'CANCELLED')}")


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    endpoint_id: EndpointArgument,
    status_: Annotated[
        str | None, typer.Option("--status", help="only jobs of this status, for example IN_QUEUE or FAILED")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="the newest N jobs")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List an endpoint's jobs, newest first."""
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        try:
            jobs = client.list_jobs(endpoint_id, status=status_.upper() if status_ else None, limit=limit)
        except ApiError as exc:
            _not_found(exc, endpoint_id)
    if as_json:
        print_json({"data": jobs})
        return
    rows = [
        [
            escape(str(job["id"])),
            _status_text(str(job.get("status", ""))),
            str(job.get("attempts", "")),
            _duration(job.get("delayTime")),
            _duration(job.get("executionTime")),
            _time(job.get("created_at")),
            escape(_compact(job.get("error") or "")),
        ]
        for job in jobs
    ]
    print_table(
        ("ID", "STATUS", "ATTEMPTS", "WAITED", "RAN", "CREATED", "ERROR"),
        rows,
        empty=f"No jobs. Queue one with `dockyard jobs run {endpoint_id} --input JSON`.",
    )


@handle_errors
def health(ctx: typer.Context, endpoint_id: EndpointArgument, as_json: JsonOption = False) -> None:
    """An async endpoint's jobs by status and its workers, idle or running."""
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        try:
            answer = client.endpoint_health(endpoint_id)
        except ApiError as exc:
            _not_found(exc, endpoint_id)
    if as_json:
        print_json(answer)
        return
    jobs, workers = answer.get("jobs") or {}, answer.get("workers") or {}
    print_table(
        ("IN QUEUE", "IN PROGRESS", "COMPLETED", "FAILED", "RETRIED", "WORKERS IDLE", "WORKERS RUNNING"),
        [
            [str(jobs.get(key, 0)) for key in ("inQueue", "inProgress", "completed", "failed", "retried")]
            + [str(workers.get(key, 0)) for key in ("idle", "running")]
        ],
        empty="",
    )
    if rows := reason_rows(answer.get("reason")):
        stderr().print()
        print_table(("FIELD", "VALUE"), rows, empty="")
