"""The two job routes called thousands of times a second, `run` and `status`, served as plain ASGI in front of
FastAPI.

Under load the API process bounds the job queue, and for these two routes most of its work per call was FastAPI's
rather than the job's: its middleware stack, routing by regular expression, dependency resolution and the response
model's validation (bench/RESULTS.md, "`run` through FastAPI"). `LeanJobs` sits between `Front` (serving/front.py)
and FastAPI. It recognizes `POST /v{1,2}/{endpoint_id}/run` and `GET /v{1,2}/{endpoint_id}/status/{job_id}`, from
the paths, prefixes and id bounds api/jobs.py declares for FastAPI's own routes, and serves their common case
itself: the same key check, the same services (services/job_requests.py), the same bytes on the wire, and the same
request metrics (`middleware.HttpMetrics`, under FastAPI's route templates).

Every case it does not serve goes to FastAPI as if `LeanJobs` were not there, with whatever body it had read
replayed: a request without a valid key, a body that does not validate, an `Idempotency-Key`, a content type
other than JSON, a body over the limit. So every error a user can meet there keeps FastAPI's one rendering, and
this module holds no second copy of a validation message. What the services refuse (an unknown endpoint, a
payload over the job limit) is rendered by `errors.api_error_response`, as FastAPI's handler renders it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockyard.api.deps import bearer_token
from dockyard.api.jobs import ID_LENGTHS, PREFIXES, RUN, STATUS
from dockyard.context import ServerContext
from dockyard.core.callers import Principal
from dockyard.errors import ApiError, api_error_response, internal_error_response
from dockyard.json_depth import too_deep
from dockyard.middleware import http_metrics
from dockyard.schemas.jobs import JobView, RunRequest
from dockyard.services import job_requests, keys

_JSON = b"application/json"


@dataclass(frozen=True)
class _Route:
    """A route served here, as api/jobs.py declares it: `template` is FastAPI's path (the metrics' label too); a
    path matches when it has as many segments, the same words where the template has words, and at each id's place
    one to `ID_LENGTHS` characters."""

    template: str
    words: tuple[tuple[int, str], ...]  # (segment's place, the word there)
    ids: tuple[tuple[str, int, int], ...]  # (id's name, segment's place, its most characters)

    @classmethod
    def of(cls, template: str) -> _Route:
        segments = list(enumerate(template.split("/")))[1:]
        words = tuple((place, segment) for place, segment in segments if not segment.startswith("{"))
        ids = tuple(
            (segment[1:-1], place, ID_LENGTHS[segment[1:-1]]) for place, segment in segments if segment.startswith("{")
        )
        return cls(template, words, ids)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """The ids of a path split at its slashes (as many segments as the template's), or None when it is not this
        route's."""
        for place, word in self.words:
            if parts[place] != word:
                return None
        found = {}
        for name, place, longest in self.ids:
            value = parts[place]
            if not 0 < len(value) <= longest:
                return None
            found[name] = value
        return found


_Handler = Callable[[Scope, Receive, Send, str, dict[str, str]], Awaitable[None]]


class LeanJobs:
    """ASGI app: `run` and `status` served here, everything else passed to `api` (see the module docstring)."""

    def __init__(self, api: ASGIApp, context: ServerContext) -> None:
        self.api = api
        self.context = context
        self.metrics = http_metrics(context.registry)
        self.body_limit = context.settings.max_body_bytes
        # (method, the path's segment count, its first segment) -> the one route that may match, and its handler.
        self._routes: dict[tuple[str, int, str], tuple[_Route, _Handler]] = {}
        for prefix in PREFIXES:
            for method, path, handler in (("POST", RUN, self._run), ("GET", STATUS, self._status)):
                route = _Route.of(prefix + path)
                self._routes[(method, len(route.template.split("/")), prefix[1:])] = (route, handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            parts = scope["path"].split("/")
            found = self._routes.get((scope["method"], len(parts), parts[1]))
            if found is not None and (ids := found[0].match(parts)) is not None:
                await found[1](scope, receive, send, found[0].template, ids)
                return
        await self.api(scope, receive, send)

    async def _run(self, scope: Scope, receive: Receive, send: Send, template: str, ids: dict[str, str]) -> None:
        start = time.perf_counter()
        endpoint_id = ids["endpoint_id"]
        headers = _headers(scope)
        content_type = headers.get(b"content-type", _JSON).partition(b";")[0].strip().lower()
        if b"idempotency-key" in headers or content_type != _JSON or _declared(headers) > self.body_limit:
            await self.api(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= self.body_limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its request was whole: nothing was submitted
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        body = b"".join(chunks)
        principal = await self._principal(headers)
        request = _run_request(body) if principal is not None and not more else None
        if principal is None or request is None:
            await self.api(scope, _replaying(body, more, receive), send)
            return
        try:
            answer = await job_requests.submit(self.context, principal, endpoint_id, request)
            response = JSONResponse(answer.body, status_code=answer.status_code)
        except ApiError as refused:
            response = api_error_response(refused)
        except Exception:
            response = internal_error_response("POST", scope["path"])
        await response(scope, receive, send)
        self.metrics.record("POST", template, response.status_code, time.perf_counter() - start)

    async def _status(self, scope: Scope, receive: Receive, send: Send, template: str, ids: dict[str, str]) -> None:
        start = time.perf_counter()
        endpoint_id, job_id = ids["endpoint_id"], ids["job_id"]
        principal = await self._principal(_headers(scope))
        if principal is None:
            await self.api(scope, receive, send)
            return
        response: Response
        try:
            view = await job_requests.status(self.context, principal, endpoint_id, job_id)
            # What FastAPI makes of the route's response model (api/jobs.py): validated, by alias, set keys only,
            # written by pydantic's own JSON serializer.
            wire = JobView.model_validate(view).model_dump_json(by_alias=True, exclude_unset=True)
            response = Response(wire, media_type="application/json")
        except ApiError as refused:
            response = api_error_response(refused)
        except Exception:
            response = internal_error_response("GET", scope["path"])
        await response(scope, receive, send)
        self.metrics.record("GET", template, response.status_code, time.perf_counter() - start)

    async def _principal(self, headers: dict[bytes, bytes]) -> Principal | None:
        """The caller of a valid key; None for any other case, which FastAPI then refuses in its own words."""
        authorization = headers.get(b"authorization")
        if authorization is None:
            return None
        try:
            return await keys.authenticate(self.context, bearer_token(authorization.decode("latin-1")))
        except ApiError:
            return None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name; of a repeated one the first, as Starlette's `Headers.get`."""
    return dict(reversed(scope["headers"]))


def _declared(headers: dict[bytes, bytes]) -> int:
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return 0


def _run_request(body: bytes) -> RunRequest | None:
    """The request, or None for FastAPI to refuse in its words (a body too deep included: JsonDepthMiddleware)."""
    if too_deep(body):
        return None
    try:
        return RunRequest.model_validate_json(body)
    except ValidationError:
        return None


def _replaying(body: bytes, more: bool, receive: Receive) -> Receive:
    """`receive` that first answers the body already read (`more`: whether the rest is still to come)."""
    replayed = False

    async def replaying_receive() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replaying_receive
