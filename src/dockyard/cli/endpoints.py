"""`dockyard endpoints ...`: serverless endpoints (PPIO's `/gpus/v2/endpoints`), their workers, logs and events,
and invoking them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from dockyard.cli.config import target
from dockyard.cli.endpoint_views import (
    EndpointProgress,
    health_rows,
    message_of,
    replicas,
    status_of,
    url_row,
    utc_time,
    wait_until_up,
    worker_rows,
)
from dockyard.cli.jobs import reason_rows
from dockyard.cli.options import (
    EnvOption,
    JsonOption,
    given,
    parse_envs,
    parse_headers,
    parse_policy,
    read_data,
    read_json_body,
)
from dockyard.cli.output import (
    fail,
    handle_errors,
    live_wait,
    print_created,
    print_json,
    print_stream,
    print_table,
    status_text,
    stderr,
)
from dockyard.cli.resolve import ENDPOINT, REGISTRY_AUTH, resolve, resolve_all
from dockyard.client import ApiError, Client, WaitTimeout
from dockyard.core.status import EndpointType

app = typer.Typer(
    help="Serverless endpoints: create, list, inspect, scale, read workers' logs and events, invoke, delete.",
    no_args_is_help=True,
)

IdArgument = Annotated[
    str, typer.Argument(help="the endpoint's id, name or id prefix (`dockyard endpoints list`)", show_default=False)
]
WaitOption = Annotated[bool, typer.Option("--wait", help="return once running with min-replicas workers ready")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="seconds --wait waits before giving up")]
FileOption = Annotated[
    Path | None, typer.Option("--file", exists=True, dir_okay=False, help="the body as JSON; options override it")
]
NameOption = Annotated[str | None, typer.Option("--name", help="the endpoint's name")]
ProductOption = Annotated[str | None, typer.Option("--product", help="a serverless product (`dockyard products`)")]
ImageOption = Annotated[str | None, typer.Option("--image", help="the worker image, for example localhost/app:1")]
RegionOption = Annotated[str | None, typer.Option("--region", help="where the workers run (`dockyard idcs`)")]
MinOption = Annotated[int | None, typer.Option("--min-replicas", min=0, help="workers kept up; 0 scales to zero")]
MaxOption = Annotated[int | None, typer.Option("--max-replicas", min=0, help="the most workers")]
IdleOption = Annotated[int | None, typer.Option("--idle-timeout", min=1, help="seconds idle before a worker goes")]
ConcurrentOption = Annotated[int | None, typer.Option("--max-concurrent", min=1, help="requests per worker at once")]
RequestTimeoutOption = Annotated[int | None, typer.Option("--request-timeout", min=1, help="seconds to answer")]
GpuOption = Annotated[int | None, typer.Option("--gpu-num", min=0, help="GPUs per worker (default: the product's)")]
PortsOption = Annotated[list[int] | None, typer.Option("--port", "-p", min=1, max=65535, help="a port served; repeat")]
HealthPathOption = Annotated[str | None, typer.Option("--health-path", help="answers 200 when ready (default /health)")]
HealthPortOption = Annotated[int | None, typer.Option("--health-port", min=1, max=65535, help="default: first port")]
PolicyOption = Annotated[str | None, typer.Option("--policy", help="scaling: queue:SECONDS or concurrency:REQUESTS")]
WorkerCommandOption = Annotated[str | None, typer.Option("--command", help="replaces the image's command")]
EntrypointOption = Annotated[str | None, typer.Option("--entrypoint", help="replaces the image's entrypoint")]
RegistryAuthOption = Annotated[
    str | None, typer.Option("--registry-auth", help="a registry auth's id or name (private image)")
]

# The worker_config fields the options set, in the order `_worker_config` takes them.
WORKER_CONFIG = (
    "min_replicas",
    "max_replicas",
    "idle_timeout",
    "max_concurrent_per_worker",
    "request_timeout",
    "gpu_num",
)


def _body(
    file: Path | None, fields: dict[str, Any], ports: list[int] | None, envs: list[str] | None, policy: str | None
) -> dict[str, Any]:
    """The request body: the file's, with every option given over it."""
    body = read_json_body(file)
    body.update(given(**fields))
    if ports:
        body["ports"] = ports
    if envs:
        body["envs"] = [{"key": env["name"], "value": env["value"]} for env in parse_envs(envs)]
    if policy:
        body["policy"] = parse_policy(policy)
    return body


def _worker_config(*values: int | None) -> dict[str, int]:
    """The worker_config fields whose options were given."""
    return given(**dict(zip(WORKER_CONFIG, values, strict=True)))


def _health_check(body: dict[str, Any], current: dict[str, Any], path: str | None, port: int | None) -> None:
    """Put `--health-path`/`--health-port` into `body`, the other half from `current` or the first port."""
    if path is None and port is None:
        return
    check = {**current, **(body.get("health_check") or {})}
    check.update(given(path=path, port=port))
    if "port" not in check:
        if not body.get("ports"):
            fail("--health-path needs --health-port (or a --port for the check to use)")
        check["port"] = body["ports"][0]
    body["health_check"] = check


def _registry_auth(client: Client, body: dict[str, Any]) -> None:
    """`registry_auth_id` given by name or id prefix, as its id."""
    if body.get("registry_auth_id"):
        body["registry_auth_id"] = resolve(client, REGISTRY_AUTH, str(body["registry_auth_id"]))


@app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    type_: Annotated[
        EndpointType | None, typer.Option("--type", help="sync: proxied requests; async: a job queue")
    ] = None,
    name: NameOption = None,
    product: ProductOption = None,
    image: ImageOption = None,
    min_replicas: MinOption = None,
    max_replicas: MaxOption = None,
    idle_timeout: IdleOption = None,
    max_concurrent: ConcurrentOption = None,
    request_timeout: RequestTimeoutOption = None,
    gpu_num: GpuOption = None,
    port: PortsOption = None,
    health_path: HealthPathOption = None,
    health_port: HealthPortOption = None,
    env: EnvOption = None,
    policy: PolicyOption = None,
    region: RegionOption = None,
    command: WorkerCommandOption = None,
    entrypoint: EntrypointOption = None,
    registry_auth: RegistryAuthOption = None,
    file: FileOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Create an endpoint; prints its id (with --wait, once it is running with min-replicas ready workers)."""
    fields = {
        "type": type_.value if type_ else None,
        "name": name,
        "product_id": product,
        "image": image,
        "region_id": region,
        "command": command,
        "entrypoint": entrypoint,
        "registry_auth_id": registry_auth,
    }
    config = _worker_config(min_replicas, max_replicas, idle_timeout, max_concurrent, request_timeout, gpu_num)
    body = _body(file, fields, port, env, policy)
    if config:
        body["worker_config"] = {**(body.get("worker_config") or {}), **config}
    _health_check(body, {}, health_path, health_port)
    if file is None:
        required = {"--type": "type", "--name": "name", "--product": "product_id", "--image": "image"}
        missing = [option for option, field in required.items() if field not in body]
        missing += [] if "max_replicas" in config else ["--max-replicas"]
        if missing:
            fail(f"missing {', '.join(missing)}; give them, or the whole request body with --file spec.json")
    with target(ctx).client() as client:
        _registry_auth(client, body)
        created = client.create_endpoint(body)
        if wait:
            endpoint = wait_until_up(client, str(created["id"]), timeout)
            if as_json:
                print_json(endpoint)
                return
    print_created(created, as_json)


@app.command("update")
@handle_errors
def update(
    ctx: typer.Context,
    endpoint_id: IdArgument,
    name: NameOption = None,
    product: ProductOption = None,
    image: ImageOption = None,
    min_replicas: MinOption = None,
    max_replicas: MaxOption = None,
    idle_timeout: IdleOption = None,
    max_concurrent: ConcurrentOption = None,
    request_timeout: RequestTimeoutOption = None,
    gpu_num: GpuOption = None,
    port: PortsOption = None,
    health_path: HealthPathOption = None,
    health_port: HealthPortOption = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE; repeat; replaces all the endpoint's envs")
    ] = None,
    policy: PolicyOption = None,
    region: RegionOption = None,
    command: WorkerCommandOption = None,
    entrypoint: EntrypointOption = None,
    registry_auth: RegistryAuthOption = None,
    file: FileOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Change an endpoint: only what is given changes (a change to what workers run rolls them)."""
    fields = {
        "name": name,
        "product_id": product,
        "image": image,
        "region_id": region,
        "command": command,
        "entrypoint": entrypoint,
        "registry_auth_id": registry_auth,
    }
    config = _worker_config(min_replicas, max_replicas, idle_timeout, max_concurrent, request_timeout, gpu_num)
    body = _body(file, fields, port, env, policy)
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        _registry_auth(client, body)
        if config or health_path is not None or health_port is not None:
            # The API takes a sent worker_config whole: keep the current values of what is not given.
            current = client.get_endpoint(endpoint_id)
            if config:
                body["worker_config"] = {**current["worker_config"], **(body.get("worker_config") or {}), **config}
            _health_check(body, current.get("health_check") or {}, health_path, health_port)
        if not body:
            fail("nothing to change; give an option such as --max-replicas, or the body with --file spec.json")
        answer = client.update_endpoint(endpoint_id, body)
        endpoint = wait_until_up(client, endpoint_id, timeout) if wait else None
    if as_json:
        print_json(endpoint if endpoint is not None else answer)
    else:
        typer.echo(f"{endpoint_id}: {status_of(endpoint) if endpoint is not None else 'updated'}")


COLUMNS = ("ID", "NAME", "TYPE", "STATUS", "WORKERS", "URL", "CREATED")


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    keyword: Annotated[str | None, typer.Option("--keyword", help="only names containing this")] = None,
    as_json: JsonOption = False,
) -> None:
    """List your endpoints, newest first."""
    with target(ctx).client() as client:
        endpoints = list(client.list_endpoints(keyword=keyword))
    if as_json:
        print_json({"data": endpoints, "next_cursor": "", "has_more": False})
        return
    rows = [
        [
            escape(str(e["id"])),
            escape(str(e.get("name", ""))),
            escape(str(e.get("type", ""))),
            status_text(status_of(e)),
            replicas(e),
            escape(str(e.get("url", ""))),
            utc_time(e.get("created_at")),
        ]
        for e in endpoints
    ]
    print_table(COLUMNS, rows, empty="No endpoints. Create one with `dockyard endpoints create`.")


@app.command("get")
@handle_errors
def get(ctx: typer.Context, endpoint_id: IdArgument, as_json: JsonOption = False) -> None:
    """Show one endpoint and its workers (env values masked)."""
    with target(ctx).client() as client:
        endpoint = client.get_endpoint(resolve(client, ENDPOINT, endpoint_id))
    if as_json:
        print_json(endpoint)
        return
    policy = endpoint.get("policy") or {}
    check = endpoint.get("health_check") or {}
    config = endpoint.get("worker_config") or {}
    rows = [
        ["id", escape(str(endpoint["id"]))],
        ["name", escape(str(endpoint.get("name", "")))],
        ["type", escape(str(endpoint.get("type", "")))],
        ["status", status_text(status_of(endpoint))],
        ["message", escape(message_of(endpoint))],
        *reason_rows(endpoint.get("blocking")),
        url_row(endpoint),
        ["image", escape(str(endpoint.get("image", "")))],
        ["product / region", escape(f"{endpoint.get('product_id', '')} / {endpoint.get('region_id', '')}")],
        ["workers", replicas(endpoint)],
        ["policy", escape(f"{policy.get('type', '')}:{policy.get('value', '')}")],
        ["per worker", escape(f"{config.get('max_concurrent_per_worker')} requests, {config.get('gpu_num')} GPU(s)")],
        ["ports", escape(", ".join(str(p) for p in endpoint.get("ports") or []))],
        *health_rows(endpoint, check),
        ["envs", escape(", ".join(f"{e['key']}={e.get('value', '')}" for e in endpoint.get("envs") or []))],
        ["created", utc_time(endpoint.get("created_at"))],
    ]
    print_table(("FIELD", "VALUE"), rows, empty="")
    if endpoint.get("workers"):
        stderr().print()
        print_table(("WORKER", "STATUS", "HEALTH", "MESSAGE"), worker_rows(endpoint["workers"], False), empty="")


def _wait_gone(client: Client, endpoint_id: str, timeout: float) -> None:
    """Wait, showing its workers going, until the endpoint is gone; exits 1 with its state when the wait runs out."""
    progress = EndpointProgress(endpoint_id)
    try:
        live_wait(
            progress,
            lambda: client.wait_for_endpoint_gone(endpoint_id, timeout=timeout, on_change=progress.update),
            f"dockyard endpoints get {endpoint_id}",
        )
    except WaitTimeout as exc:
        fail(f"{exc.message}; `dockyard endpoints events {endpoint_id}` says what holds it")


@app.command("delete")
@handle_errors
def delete(
    ctx: typer.Context,
    endpoint_ids: Annotated[list[str], typer.Argument(help="endpoints' ids, names or id prefixes")],
    wait: Annotated[bool, typer.Option("--wait", help="show progress and return once each endpoint is gone")] = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Delete endpoints: their workers are drained, then removed."""
    with target(ctx).client() as client:
        for endpoint_id in resolve_all(client, ENDPOINT, endpoint_ids):
            client.delete_endpoint(endpoint_id)
            if wait:
                _wait_gone(client, endpoint_id, timeout)
            typer.echo(f"{endpoint_id}: {'deleted' if wait else 'deleting'}")


@app.command("workers")
@handle_errors
def workers(ctx: typer.Context, endpoint_id: IdArgument, as_json: JsonOption = False) -> None:
    """List an endpoint's workers, oldest first."""
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        found = client.endpoint_workers(endpoint_id)
    if as_json:
        print_json({"data": found})
        return
    print_table(
        ("ID", "STATUS", "HEALTH", "DRAIN", "GEN", "NODE", "MESSAGE", "LAST PROBE", "CREATED"),
        worker_rows(found, detail=True),
        empty=f"No workers. `dockyard endpoints events {endpoint_id}` says what was decided and why.",
    )


@app.command("logs")
@handle_errors
def logs(
    ctx: typer.Context,
    endpoint_id: IdArgument,
    worker_id: Annotated[
        str | None,
        typer.Argument(help="one running worker's raw output, untagged (`dockyard endpoints workers ENDPOINT`)"),
    ] = None,
    worker: Annotated[
        str | None, typer.Option("--worker", help="only this worker's lines, a removed one's included")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339 time or unix seconds")] = None,
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="only the last N lines")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new output (Ctrl-C stops)")] = False,
) -> None:
    """Print the output of an endpoint's workers merged by time, each line led by its time and worker id; removed
    workers' output is kept for a day (the server's DOCKYARD_WORKER_LOG_RETENTION_SECONDS)."""
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        if worker_id is not None:
            if not follow:
                typer.echo(client.worker_logs(endpoint_id, worker_id, tail=tail, since=since), nl=False)
                return
            print_stream(client.follow_worker_logs(endpoint_id, worker_id, tail=tail, since=since))
            return
        limit = None if tail is None else max(tail, 1)
        if not follow:
            typer.echo(client.endpoint_logs(endpoint_id, since=since, worker=worker, limit=limit), nl=False)
            return
        print_stream(client.follow_endpoint_logs(endpoint_id, since=since, worker=worker, limit=limit))


@app.command("events")
@handle_errors
def events(
    ctx: typer.Context,
    endpoint_id: IdArgument,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="the latest N events")] = 50,
    as_json: JsonOption = False,
) -> None:
    """What was decided about an endpoint (scaling, workers started or failed) and why, newest first."""
    with target(ctx).client() as client:
        found = client.endpoint_events(resolve(client, ENDPOINT, endpoint_id), limit=limit)
    if as_json:
        print_json({"data": found})
        return
    rows = [
        [utc_time(e.get("created_at")), escape(str(e.get("type", ""))), escape(str(e.get("message", "")))]
        for e in found
    ]
    print_table(
        ("TIME", "TYPE", "MESSAGE"), rows, empty="No events yet; they appear as the endpoint's workers are managed."
    )


def _invoke_error(endpoint_id: str, code: int, phrase: str, body: bytes) -> str:
    """An error answer in a sentence: its message (Dockyard's error body) or its text, and what to do."""
    try:
        decoded = json.loads(body)
        text = decoded["message"] if isinstance(decoded, dict) and isinstance(decoded.get("message"), str) else ""
    except ValueError:
        text = ""
    text = text or body.decode(errors="replace").strip()[:500] or phrase
    if code in (429, 503):
        advice = "retry in a moment"
    elif code == 504:
        advice = f"no worker answered in time; `dockyard endpoints workers {endpoint_id}` shows their state"
    elif code >= 500:
        advice = (
            f"the worker's output says why: `dockyard endpoints workers {endpoint_id}`, "
            f"then `dockyard endpoints logs {endpoint_id} WORKER`"
        )
    else:
        advice = "check the path, the method and the body the worker expects"
    return f"the endpoint answered {code} {phrase}: {text}; {advice}"


@app.command("invoke")
@handle_errors
def invoke(
    ctx: typer.Context,
    endpoint_id: IdArgument,
    path: Annotated[str, typer.Argument(help="the path after the endpoint's url, for example v1/models")] = "",
    method: Annotated[str | None, typer.Option("--method", "-X", help="default: POST with --data, else GET")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="the body: a string, @FILE, or - for stdin")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", "-H", help="'Name: value'; repeat")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="seconds to wait for each part of the answer")
    ] = None,
) -> None:
    """Send a request to an endpoint and stream its answer to stdout as it arrives."""
    content = read_data(data)
    headers = parse_headers(header, content)
    verb = (method or ("POST" if content is not None else "GET")).upper()
    with target(ctx).client() as client:
        endpoint_id = resolve(client, ENDPOINT, endpoint_id)
        try:
            with client.stream_endpoint(
                endpoint_id, path, method=verb, content=content, headers=headers, timeout=timeout
            ) as response:
                if response.is_error:
                    fail(_invoke_error(endpoint_id, response.status_code, response.reason_phrase, response.read()))
                print_stream(response.iter_bytes())
        except ApiError as exc:
            if exc.code == 404:
                fail(f"endpoint {endpoint_id} not found; `dockyard endpoints list` shows yours")
            raise
