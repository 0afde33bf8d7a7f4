"""The async job API of `async` endpoints, at `/v1/{endpoint_id}/...` (the ppio-gpus client's base) and at
`/v2/{endpoint_id}/...` (the runpod client's), the same handlers under both; plus our job listing for the CLI,
`/gpus/v2/endpoints/{endpoint_id}/jobs`.

Authentication is the organization's API key, `Bearer KEY` or the bare key. Another organization's endpoint,
or a sync one, is a 404. The status views leave out keys that do not apply (`output`, `error`, ...) rather
than sending nulls, as RunPod does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from dockyard.api.deps import ContextDep, IdempotencyKeyDep, PrincipalDep, ReadSessionDep, WriteSessionDep, answered
from dockyard.core.status import JobStatus
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.jobs import (
    DEFAULT_RUNSYNC_WAIT_MS,
    MAX_RUNSYNC_WAIT_MS,
    EndpointHealth,
    JobAccepted,
    JobList,
    JobView,
    PurgeAnswer,
    RunRequest,
)
from dockyard.services import job_requests as service

# Declared once, for the routes made here and for the lean path in front of FastAPI (api/jobs_lean.py), which
# serves `run` and `status` within exactly these bounds and leaves every other request to these routes.
PREFIXES = {"/v1": "ppio-gpus client", "/v2": "runpod client"}  # each client's base, for the OpenAPI document
RUN = "/{endpoint_id}/run"
STATUS = "/{endpoint_id}/status/{job_id}"
ID_LENGTHS = {"endpoint_id": 255, "job_id": 64}  # the most characters of each id in a path; the least is one

EndpointPathId = Annotated[str, Path(min_length=1, max_length=ID_LENGTHS["endpoint_id"])]
JobPathId = Annotated[str, Path(min_length=1, max_length=ID_LENGTHS["job_id"])]
_RUN = "Commits the job (IN_QUEUE) before answering. `Idempotency-Key` makes a repeat answer the same job."
_RUNSYNC = (
    "Submits the job as `run` does, then waits up to `wait` ms for it to finish: the finished job's view, or its "
    "view so far (IN_QUEUE or IN_PROGRESS) when the wait ran out; poll `status` from there."
)
_STATUS = (
    "The job's status (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT) with `delayTime` and "
    "`executionTime` (ms), and its `output` or `error` once it has one."
)
_STREAM = "The parts a generator handler yielded since the last call of this route, with the job's status."
_CANCEL = (
    "A queued job never runs; a running one is stopped where the SDK can (runpod's stop channel) or its result dropped."
)
_RETRY = "Puts a FAILED, TIMED_OUT or CANCELLED job back in the queue with the same input; 409 for any other status."
_PURGE = "Cancels every job of the endpoint still IN_QUEUE and answers how many; running jobs go on."
_HEALTH = "The endpoint's jobs by status and its workers by RunPod's states (idle, initializing, ready, running)."


async def run(
    endpoint_id: EndpointPathId,
    body: RunRequest,
    context: ContextDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    return answered(await service.submit(context, principal, endpoint_id, body, idempotency_key))


async def runsync(
    endpoint_id: EndpointPathId,
    body: RunRequest,
    context: ContextDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
    wait: Annotated[
        int, Query(ge=0, le=MAX_RUNSYNC_WAIT_MS, description="ms to wait for the result before answering")
    ] = DEFAULT_RUNSYNC_WAIT_MS,
) -> JobView:
    return await service.run_sync(context, principal, endpoint_id, body, idempotency_key, wait_seconds=wait / 1000)


async def status(
    endpoint_id: EndpointPathId, job_id: JobPathId, context: ContextDep, principal: PrincipalDep
) -> JobView:
    return await service.status(context, principal, endpoint_id, job_id)


async def stream(
    endpoint_id: EndpointPathId, job_id: JobPathId, principal: PrincipalDep, session: WriteSessionDep
) -> JobView:
    return await service.stream(session, principal, endpoint_id, job_id)


async def cancel(
    endpoint_id: EndpointPathId,
    job_id: JobPathId,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
) -> JobView:
    return await service.cancel(session, principal, endpoint_id, job_id, context=context)


async def retry(
    endpoint_id: EndpointPathId,
    job_id: JobPathId,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
) -> JobAccepted:
    return await service.retry(session, principal, endpoint_id, job_id, context=context)


async def purge_queue(
    endpoint_id: EndpointPathId, context: ContextDep, principal: PrincipalDep, session: WriteSessionDep
) -> PurgeAnswer:
    return await service.purge_queue(session, principal, endpoint_id, context=context)


async def health(
    endpoint_id: EndpointPathId, context: ContextDep, principal: PrincipalDep, session: ReadSessionDep
) -> EndpointHealth:
    return await service.health(session, principal, endpoint_id, settings=context.settings)


def _job_routes(prefix: str, client: str) -> APIRouter:
    """The job API under `prefix`; `client` names whose base URL it is, for the OpenAPI document."""
    routes = APIRouter(prefix=prefix, tags=[f"jobs ({client})"], responses=ERROR_RESPONSES)
    view: dict[str, Any] = {"response_model": JobView, "response_model_exclude_unset": True}
    table: list[tuple[str, str, Callable[..., Any], dict[str, Any], str, str]] = [
        (RUN, "POST", run, {"response_model": JobAccepted}, "Submit a job", _RUN),
        ("/{endpoint_id}/runsync", "POST", runsync, view, "Submit a job and wait for it", _RUNSYNC),
        (STATUS, "GET", status, view, "A job's status", _STATUS),
        ("/{endpoint_id}/stream/{job_id}", "GET", stream, view, "A job's streamed parts since the last call", _STREAM),
        ("/{endpoint_id}/cancel/{job_id}", "POST", cancel, view, "Cancel a job", _CANCEL),
        ("/{endpoint_id}/retry/{job_id}", "POST", retry, {"response_model": JobAccepted}, "Retry a job", _RETRY),
        ("/{endpoint_id}/purge-queue", "POST", purge_queue, {"response_model": PurgeAnswer}, "Purge the queue", _PURGE),
        ("/{endpoint_id}/health", "GET", health, {"response_model": EndpointHealth}, "Job and worker counts", _HEALTH),
    ]
    for path, method, handler, options, summary, description in table:
        routes.add_api_route(
            path,
            handler,
            methods=[method],
            summary=summary,
            description=description,
            operation_id=f"{handler.__name__}_{prefix.strip('/')}",
            **options,
        )
    return routes


router = APIRouter()
for _prefix, _client in PREFIXES.items():
    router.include_router(_job_routes(_prefix, _client))


@router.get(
    "/gpus/v2/endpoints/{endpoint_id}/jobs",
    response_model=JobList,
    response_model_exclude_unset=True,
    tags=["endpoints"],
    responses=ERROR_RESPONSES,
    summary="List an endpoint's jobs",
    description="Newest first, each with its status view, `created_at` (unix seconds) and `attempts`.",
)
async def list_jobs(
    endpoint_id: EndpointPathId,
    principal: PrincipalDep,
    session: ReadSessionDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    return await service.list_jobs(session, principal, endpoint_id, status=status, limit=limit)
