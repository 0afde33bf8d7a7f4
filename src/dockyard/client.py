"""The Python SDK for Dockyard: GPU containers (`/api/v1`, GMI Cloud's shapes) and serverless endpoints
(`/gpus/v2/endpoints`, PPIO's shapes).

One method per route, each returning the decoded JSON answer. Request bodies are the wire shapes of the API
(camelCase for containers, snake_case for endpoints; the server's `/docs` shows every field). Every failure
raises a `DockyardError` whose `message` says what to do: `ApiError` for an error answer, `ServerUnreachable`
when no answer came at all. Invoking an endpoint is the exception: its answer is the worker's, returned as is.

    with Client("http://127.0.0.1:8080", api_key) as client:
        ids = [c["id"] for c in client.create_containers({...})]
        client.wait_for_containers(ids)
        endpoint_id = client.create_endpoint({...})["id"]
        client.wait_for_endpoint(endpoint_id)
        print(client.invoke_endpoint(endpoint_id, "v1/chat/completions", json={...}).json())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import httpx

from dockyard import __version__
from dockyard.client_jobs import JobsMixin

GONE = "gone"
"""The pseudo-status `wait_for_containers` reports for a container the server no longer has (404)."""

INVOKE_TIMEOUT = 3600.0 + 30.0
"""Seconds an invocation waits for more bytes by default: past the longest `request_timeout`, so that the gateway's
own deadline (its 504 and message) comes first."""

Json = dict[str, Any]
ChangeCallback = Callable[[dict[str, Json | None]], None]


class DockyardError(Exception):
    """Anything that went wrong talking to Dockyard; `message` is a sentence that says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(DockyardError):
    """The server answered with an error body `{"code", "reason", "message", "details"}`."""

    def __init__(self, code: int, reason: str, message: str, details: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.details = [dict(detail) for detail in details]

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"


class ServerUnreachable(DockyardError):
    """No answer: the server is not running, not at that address, or too slow."""


class ContainerFailed(DockyardError):
    """A container being waited for went to `error`; `container` is its last observed state."""

    def __init__(self, container: Json) -> None:
        name, container_id = container.get("name", ""), container.get("id", "")
        label = f"{name} ({container_id})" if name and name != container_id else container_id
        reason = container.get("reason") or "no reason recorded"
        super().__init__(f"container {label} failed: {reason}")
        self.container = container


class EndpointFailed(DockyardError):
    """An endpoint being waited for went to `failed` (or is being deleted); `endpoint` is its last state."""

    def __init__(self, endpoint: Json) -> None:
        status = endpoint.get("status") or {}
        reason = status.get("error") or status.get("message") or "no reason recorded"
        super().__init__(f"endpoint {endpoint_label(endpoint)} is {status.get('status', 'failed')}: {reason}")
        self.endpoint = endpoint


class WaitTimeout(DockyardError):
    """The wanted statuses were not all reached in time; `containers` holds the last observed states."""

    def __init__(self, message: str, containers: dict[str, Json | None]) -> None:
        super().__init__(message)
        self.containers = containers


def _api_error(response: httpx.Response) -> ApiError:
    """Decode the error body; an answer that is not ours (a proxy's HTML page) still gives a usable error."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        details = body.get("details")
        return ApiError(
            int(body.get("code") or response.status_code),
            str(body.get("reason") or "ERROR"),
            body["message"],
            [d for d in details if isinstance(d, dict)] if isinstance(details, list) else [],
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return ApiError(
        response.status_code,
        f"HTTP_{response.status_code}",
        f"the server at {response.request.url.copy_with(path='/', query=None)} answered "
        f"{response.status_code} ({text}); check that the URL points at a Dockyard server",
    )


def endpoint_label(endpoint: Json) -> str:
    """`name (id)` for messages; the id alone when the name says nothing more."""
    name, endpoint_id = endpoint.get("name", ""), endpoint.get("id", "")
    return f"{name} ({endpoint_id})" if name and name != endpoint_id else str(endpoint_id)


def ready_workers(endpoint: Json) -> int:
    return sum(1 for worker in endpoint.get("workers") or [] if (worker.get("status") or {}).get("status") == "ready")


def endpoint_is_up(endpoint: Json) -> bool:
    """`running` with at least `min_replicas` ready workers: what `wait_for_endpoint` waits for."""
    wanted = int((endpoint.get("worker_config") or {}).get("min_replicas", 0))
    return (endpoint.get("status") or {}).get("status") == "running" and ready_workers(endpoint) >= wanted


def _late(container_id: str, state: Json | None, status: str) -> str:
    """How a wait that gave up names a container not there yet: its name, its status and why (a container waiting
    for capacity says what it waits for)."""
    state = state or {}
    reason = f" ({state['reason']})" if state.get("reason") else ""
    return f"{state.get('name', container_id)} is {status}{reason}"


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class Client(JobsMixin):
    """A synchronous client; one `httpx.Client` (and its connection pool) per instance. Thread-safe as
    httpx's client is. Close it, or use it as a context manager. Async endpoints' job methods come from
    `JobsMixin` (dockyard.client_jobs)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"dockyard-client/{__version__}"},
            timeout=timeout,
            transport=transport,
        )
        self._endpoint_urls: dict[str, str] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        if isinstance(exc, httpx.TimeoutException):
            return ServerUnreachable(
                f"the Dockyard server at {self.base_url} did not answer in time; check its log, or retry"
            )
        return ServerUnreachable(f"cannot reach the Dockyard server at {self.base_url}; is `dockyard server` running?")

    def _request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None, **extra: Any
    ) -> httpx.Response:
        """`extra`: httpx's `headers` and `timeout` of this request alone."""
        try:
            response = self._http.request(method, path, json=json, params=params, **extra)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            raise _api_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise DockyardError(
                f"{self.base_url} answered {method} {path} with something other than JSON; "
                "check that the URL points at a Dockyard server"
            ) from None

    def _object(self, method: str, path: str, **kwargs: Any) -> Json:
        return cast(Json, self._json(method, path, **kwargs))

    def _list(self, method: str, path: str, **kwargs: Any) -> list[Json]:
        return cast(list[Json], self._json(method, path, **kwargs))

    # Containers.

    def create_containers(self, request: Mapping[str, Any]) -> list[Json]:
        """POST /api/v1/containers: `count` containers from one request; answers `[{"id": ...}, ...]`."""
        return self._list("POST", "/api/v1/containers", json=dict(request))

    def list_containers(
        self, *, page: int = 1, page_size: int = 50, status: str | None = None, name: str | None = None
    ) -> Json:
        """One page: `{"items": [...], "total", "page", "pageSize"}`."""
        params = _params(page=page, pageSize=page_size, status=status, name=name)
        return self._object("GET", "/api/v1/containers", params=params)

    def get_container(self, container_id: str) -> Json:
        return self._object("GET", f"/api/v1/containers/{container_id}")

    def update_container(self, container_id: str, request: Mapping[str, Any]) -> Json:
        """PUT: reconfigures by recreating the container (its local data is lost; storages survive)."""
        return self._object("PUT", f"/api/v1/containers/{container_id}", json=dict(request))

    def delete_container(self, container_id: str) -> Json:
        """Marks the container `terminating`; it is gone once the server has torn it down."""
        return self._object("DELETE", f"/api/v1/containers/{container_id}")

    def restart_container(self, container_id: str) -> Json:
        return self._object("POST", f"/api/v1/containers/{container_id}/restart")

    def stop_container(self, container_id: str) -> Json:
        return self._object("POST", f"/api/v1/containers/{container_id}/stop")

    def start_container(self, container_id: str) -> Json:
        return self._object("POST", f"/api/v1/containers/{container_id}/start")

    def container_logs(self, container_id: str, *, tail: int | None = None, since: str | None = None) -> str:
        """The container's output so far (stdout and stderr interleaved)."""
        params = _params(tail=tail, since=since)
        return self._request("GET", f"/api/v1/containers/{container_id}/logs", params=params).text

    def follow_container_logs(
        self, container_id: str, *, tail: int | None = None, since: str | None = None
    ) -> Iterator[str]:
        """The output as it comes, in text chunks, until the container stops or the caller stops iterating."""
        return self._follow(f"/api/v1/containers/{container_id}/logs", _params(tail=tail, since=since, follow="true"))

    def _follow(self, path: str, params: Mapping[str, Any]) -> Iterator[str]:
        try:
            # A follow has no natural end: only connecting is bounded, never the wait for more output.
            timeout = httpx.Timeout(self._http.timeout.connect, read=None)
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response)
                yield from response.iter_text()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def wait_for_containers(
        self,
        ids: Sequence[str],
        *,
        until: Collection[str] = frozenset({"running"}),
        timeout: float = 300.0,
        on_change: ChangeCallback | None = None,
        interval: float = 0.25,
        max_interval: float = 2.0,
        settle: float = 0.0,
    ) -> dict[str, Json | None]:
        """Poll every container until each one's status is in `until` and has stayed so for `settle` seconds, and
        return their last states (one that leaves `until` meanwhile, as a container that exits right after it
        started, is waited for again).

        A container the server no longer has (404) is `None` and counts as status `GONE`, the goal of a wait
        after a delete. One that reaches `error` (unless `error` is wanted) stops the wait at once with
        `ContainerFailed`; one waiting for capacity (`creating`, its reason saying what for) is waited for like any
        other. `WaitTimeout` after `timeout` seconds names each late container's status and reason. `on_change` is
        called with every container's state whenever any status or reason changes. Polling backs off from
        `interval` to `max_interval`, and starts over after each change.
        """
        states: dict[str, Json | None] = {}
        seen: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + timeout
        delay = interval
        reached: float | None = None
        while True:
            changed = False
            for container_id in ids:
                state = self._poll(container_id)
                states[container_id] = state
                key = (state["status"], state.get("reason", "")) if state else (GONE, "")
                changed |= seen.get(container_id) != key
                seen[container_id] = key
            if changed:
                delay = interval
                if on_change is not None:
                    on_change(dict(states))
            statuses = {container_id: key[0] for container_id, key in seen.items()}
            if "error" not in until:
                for state in states.values():
                    if state is not None and state["status"] == "error":
                        raise ContainerFailed(state)
            now = time.monotonic()
            if all(status in until for status in statuses.values()):
                reached = now if reached is None else reached
                if now - reached >= settle or now >= deadline:
                    return states
            else:
                reached = None
            if reached is None and now >= deadline:
                waiting = ", ".join(_late(i, states[i], s) for i, s in statuses.items() if s not in until)
                raise WaitTimeout(
                    f"gave up after {timeout:g} s waiting for {' or '.join(sorted(until))}: {waiting}; "
                    "the reason field and the container's logs say what it is doing",
                    states,
                )
            left = deadline - time.monotonic() if reached is None else reached + settle - time.monotonic()
            time.sleep(min(delay, max(0.0, left)))
            delay = min(delay * 1.5, max_interval)

    def _poll(self, container_id: str) -> Json | None:
        try:
            return self.get_container(container_id)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    # Templates.

    def create_template(self, request: Mapping[str, Any]) -> Json:
        """POST /api/v1/templates `{name, path (the image), credential?, command?, args?, envs?, ports?}`."""
        return self._object("POST", "/api/v1/templates", json=dict(request))

    def list_templates(self, *, page: int = 1, page_size: int = 50) -> Json:
        return self._object("GET", "/api/v1/templates", params={"page": page, "pageSize": page_size})

    def get_template(self, template_id: str) -> Json:
        return self._object("GET", f"/api/v1/templates/{template_id}")

    def update_template(self, template_id: str, request: Mapping[str, Any]) -> Json:
        return self._object("PUT", f"/api/v1/templates/{template_id}", json=dict(request))

    def delete_template(self, template_id: str) -> Json:
        return self._object("DELETE", f"/api/v1/templates/{template_id}")

    # SSH keys.

    def create_ssh_key(self, name: str, public_key: str) -> Json:
        return self._object("POST", "/api/v1/ssh-keys", json={"name": name, "publicKey": public_key})

    def list_ssh_keys(self) -> list[Json]:
        return self._list("GET", "/api/v1/ssh-keys")

    def delete_ssh_key(self, key_id: str) -> Json:
        return self._object("DELETE", f"/api/v1/ssh-keys/{key_id}")

    # Network storages and registry auths (PPIO's `/gpus/v2`).

    def list_network_storages(self) -> list[Json]:
        """Every network storage: `[{id, name, region_id, size_gb, mounted_by, ...}]`, newest first."""
        return cast(list[Json], self._object("GET", "/gpus/v2/network-storages")["data"])

    def list_registry_auths(self) -> list[Json]:
        """Every registry auth: `[{id, name, username}]` (passwords are never answered)."""
        return cast(list[Json], self._object("GET", "/gpus/v2/registry-auths")["data"])

    # Catalog.

    def list_idcs(self) -> list[Json]:
        return self._list("GET", "/api/v1/idcs")

    def list_products(self, *, idc: str | None = None) -> list[Json]:
        return self._list("GET", "/api/v1/containers/products", params=_params(idc=idc))

    # Serverless endpoints.

    def create_endpoint(self, request: Mapping[str, Any]) -> Json:
        """POST /gpus/v2/endpoints `{type, name, product_id, image, worker_config{max_replicas, ...}, ...}`;
        answers `{"id": ...}` at once (status `deploying`)."""
        return self._object("POST", "/gpus/v2/endpoints", json=dict(request))

    def list_endpoints(
        self, *, keyword: str | None = None, member_ids: str | None = None, page_size: int = 100
    ) -> Iterator[Json]:
        """Every endpoint, newest first, fetching the cursor pages `page_size` at a time as iteration needs them."""
        params = _params(limit=page_size, keyword=keyword, member_ids=member_ids)
        while True:
            page = self._object("GET", "/gpus/v2/endpoints", params=params)
            yield from page.get("data", [])
            if not page.get("has_more") or not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def get_endpoint(self, endpoint_id: str) -> Json:
        return self._object("GET", f"/gpus/v2/endpoints/{endpoint_id}")

    def update_endpoint(self, endpoint_id: str, request: Mapping[str, Any]) -> Json:
        """PUT: the sent fields replace the current ones (a sent `worker_config` whole); a change to what a
        worker runs rolls the workers (status `updating`)."""
        return self._object("PUT", f"/gpus/v2/endpoints/{endpoint_id}", json=dict(request))

    def delete_endpoint(self, endpoint_id: str) -> Json:
        """Marks the endpoint `deleting`; its workers are drained, then removed."""
        return self._object("DELETE", f"/gpus/v2/endpoints/{endpoint_id}")

    def endpoint_workers(self, endpoint_id: str) -> list[Json]:
        """Every worker, oldest first: `{id, status{status,error,message}, log, health, drain, generation, ...}`."""
        return cast(list[Json], self._object("GET", f"/gpus/v2/endpoints/{endpoint_id}/workers")["data"])

    def worker_logs(
        self, endpoint_id: str, worker_id: str, *, tail: int | None = None, since: str | None = None
    ) -> str:
        """The worker's output so far (stdout and stderr interleaved)."""
        path = f"/gpus/v2/endpoints/{endpoint_id}/workers/{worker_id}/logs"
        return self._request("GET", path, params=_params(tail=tail, since=since)).text

    def endpoint_logs(
        self,
        endpoint_id: str,
        *,
        since: str | None = None,
        until: str | None = None,
        worker: str | None = None,
        limit: int | None = None,
    ) -> str:
        """The output of the endpoint's workers, removed ones kept included, merged by time and tagged."""
        params = _params(since=since, until=until, worker=worker, limit=limit)
        return self._request("GET", f"/gpus/v2/endpoints/{endpoint_id}/logs", params=params).text

    def follow_endpoint_logs(
        self, endpoint_id: str, *, since: str | None = None, worker: str | None = None, limit: int | None = None
    ) -> Iterator[str]:
        """`endpoint_logs`, then the running workers' new lines as they come, until the caller stops iterating."""
        params = _params(since=since, worker=worker, limit=limit, follow="true")
        return self._follow(f"/gpus/v2/endpoints/{endpoint_id}/logs", params)

    def follow_worker_logs(
        self, endpoint_id: str, worker_id: str, *, tail: int | None = None, since: str | None = None
    ) -> Iterator[str]:
        """The worker's output as it comes, in text chunks, until it stops or the caller stops iterating."""
        path = f"/gpus/v2/endpoints/{endpoint_id}/workers/{worker_id}/logs"
        return self._follow(path, _params(tail=tail, since=since, follow="true"))

    def endpoint_events(self, endpoint_id: str, *, limit: int = 50) -> list[Json]:
        """The latest `limit` decisions about the endpoint, newest first: `[{type, message, created_at}]`."""
        path = f"/gpus/v2/endpoints/{endpoint_id}/events"
        return cast(list[Json], self._object("GET", path, params={"limit": limit})["data"])

    def wait_for_endpoint(
        self,
        endpoint_id: str,
        *,
        timeout: float = 600.0,
        on_change: Callable[[Json], None] | None = None,
        interval: float = 0.5,
    ) -> Json:
        """Poll the endpoint every `interval` seconds until it is `running` with at least `min_replicas` ready
        workers, and return its last state. `failed` or `deleting` stops the wait with `EndpointFailed`;
        `WaitTimeout` after `timeout` seconds. `on_change` gets the state whenever its status or a worker's
        changes."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            endpoint = self.get_endpoint(endpoint_id)
            key = (endpoint.get("status"), [(w.get("id"), w.get("status")) for w in endpoint.get("workers") or []])
            if key != seen and on_change is not None:
                on_change(endpoint)
            seen = key
            status = (endpoint.get("status") or {}).get("status")
            if endpoint_is_up(endpoint):
                return endpoint
            if status in ("failed", "deleting"):
                raise EndpointFailed(endpoint)
            if time.monotonic() >= deadline:
                wanted = (endpoint.get("worker_config") or {}).get("min_replicas", 0)
                message = (endpoint.get("status") or {}).get("message") or "no reason recorded"
                raise WaitTimeout(
                    f"gave up after {timeout:g} s waiting for endpoint {endpoint_label(endpoint)} to be running "
                    f"with {wanted} ready worker(s): it is {status} ({message}) with {ready_workers(endpoint)} ready; "
                    f"its events and workers say why (`dockyard endpoints events {endpoint_id}`, "
                    f"`dockyard endpoints workers {endpoint_id}`)",
                    {endpoint_id: endpoint},
                )
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def wait_for_endpoint_gone(
        self,
        endpoint_id: str,
        *,
        timeout: float = 300.0,
        on_change: Callable[[Json], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        """Poll the endpoint every `interval` seconds until the server no longer has it (404), as after a delete.
        `WaitTimeout` after `timeout` seconds says its status and its workers left. `on_change` gets the state
        whenever its status or a worker's changes."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            try:
                endpoint = self.get_endpoint(endpoint_id)
            except ApiError as exc:
                if exc.code == 404:
                    return
                raise
            key = (endpoint.get("status"), [(w.get("id"), w.get("status")) for w in endpoint.get("workers") or []])
            if key != seen and on_change is not None:
                on_change(endpoint)
            seen = key
            if time.monotonic() >= deadline:
                status = endpoint.get("status") or {}
                raise WaitTimeout(
                    f"gave up after {timeout:g} s waiting for endpoint {endpoint_label(endpoint)} to be gone: it is "
                    f"{status.get('status')} ({status.get('message') or 'no reason recorded'}) with "
                    f"{len(endpoint.get('workers') or [])} worker(s) left",
                    {endpoint_id: endpoint},
                )
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def _endpoint_url(self, endpoint_id: str) -> str:
        """The endpoint's `url`, asked once per client: it names the gateway and the id, neither of which changes."""
        if endpoint_id not in self._endpoint_urls:
            self._endpoint_urls[endpoint_id] = str(self.get_endpoint(endpoint_id)["url"]).rstrip("/")
        return self._endpoint_urls[endpoint_id]

    def _unreachable_gateway(self, request: httpx.Request, exc: httpx.TransportError) -> ServerUnreachable:
        if isinstance(exc, httpx.TimeoutException):
            return ServerUnreachable(f"the endpoint at {request.url} did not answer in time; retry, or pass a timeout")
        gateway = request.url.copy_with(path="/", query=None)
        return ServerUnreachable(
            f"cannot reach the gateway at {gateway}; the server's gateway_url setting must be an address you can reach"
        )

    @contextmanager
    def stream_endpoint(
        self,
        endpoint_id: str,
        path: str = "",
        *,
        method: str = "POST",
        content: bytes | Iterator[bytes] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[httpx.Response]:
        """One request to the endpoint, `method` on its `url` + `/path` (a query string included) with this
        client's API key, its body left for the caller to iterate (`response.iter_bytes()`) as the worker writes
        it. The answer, the worker's or the gateway's, is given as is, error statuses included; only an unknown
        endpoint raises `ApiError`. `timeout` bounds each wait for bytes (default `INVOKE_TIMEOUT`).

            with client.stream_endpoint(endpoint_id, "generate", json={...}) as response:
                for chunk in response.iter_bytes(): ...
        """
        url = f"{self._endpoint_url(endpoint_id)}/{path.lstrip('/')}"
        read = timeout or INVOKE_TIMEOUT
        timeouts = httpx.Timeout(self._http.timeout.connect, read=read)
        request = self._http.build_request(method, url, content=content, json=json, headers=headers, timeout=timeouts)
        try:
            response = self._http.send(request, stream=True)
            try:
                yield response
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise self._unreachable_gateway(request, exc) from exc

    def invoke_endpoint(
        self,
        endpoint_id: str,
        path: str = "",
        *,
        method: str = "POST",
        content: bytes | Iterator[bytes] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """`stream_endpoint` with the whole body read: `.json()`, `.text` and `.content` are ready."""
        with self.stream_endpoint(
            endpoint_id, path, method=method, content=content, json=json, headers=headers, timeout=timeout
        ) as response:
            response.read()
            return response
