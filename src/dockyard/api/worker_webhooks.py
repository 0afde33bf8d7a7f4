"""The worker webhooks (`/gpus/v2/workers/...`): what an async endpoint's `ppio-gpus` or `runpod` worker calls.

The paths are those the URL templates in a worker's environment expand to (services/worker_runspec.py), and
the answers are what the SDKs parse: a job-take answers one `{"id", "input"}` object, a batch take a list, and
204 when nothing came within the wait; runpod's job-stop answers `{"jobsToStop": [...]}` or 204. job-done and
stream bodies are the JSON text the SDKs post under `application/x-www-form-urlencoded`, so they are read raw
(never form-decoded) and bounded by `job_max_payload_bytes` (413). Every route authenticates the worker's own
key from `Authorization` (bare or `Bearer`); the logic is in services/worker_webhooks.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from dockyard.api.deps import ContextDep
from dockyard.errors import PayloadTooLarge
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.services import worker_webhooks as service
from dockyard.services.worker_runspec import WEBHOOK_PREFIX

router = APIRouter(prefix=WEBHOOK_PREFIX, tags=["worker webhooks"], responses=ERROR_RESPONSES)

EndpointPathId = Annotated[str, Path(min_length=1, max_length=36)]
WorkerPathId = Annotated[str, Path(min_length=1, max_length=36)]
JobPathId = Annotated[str, Path(min_length=1, max_length=64)]
AuthorizationHeader = Annotated[str | None, Header(description="the worker's key, bare or as `Bearer <key>`")]
SdkQuery = Annotated[str, Query(max_length=32, description="which SDK's template the URL came from (logs only)")]
InProgressQuery = Annotated[
    int, Query(ge=0, le=1, description="1 when the worker already runs jobs (sent by the SDKs; informational)")
]
MAX_BATCH = 100
NO_STOP: dict[int | str, dict[str, Any]] = {204: {"description": "none within `job_take_wait_seconds`"}}
NO_JOB: dict[int | str, dict[str, Any]] = {204: {"description": "nothing arrived within `job_take_wait_seconds`"}}


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes (job_max_payload_bytes); return a smaller result")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/{endpoint_id}/job-take/{worker_id}", summary="Take the oldest queued job", responses=NO_JOB)
async def job_take(
    request: Request,
    endpoint_id: EndpointPathId,
    worker_id: WorkerPathId,
    context: ContextDep,
    authorization: AuthorizationHeader = None,
    sdk: SdkQuery = "",
    job_in_progress: InProgressQuery = 0,
) -> Response:
    """Held open up to `job_take_wait_seconds` until a job is queued: the oldest is leased to this worker (its
    pings keep the lease) and answered as `{"id", "input"}`; 204 when none came. 401 unless the key is this
    worker's."""
    worker = await service.authenticate(context, authorization, endpoint_id, worker_id)
    taken = await service.take(context, worker, 1, request.is_disconnected)
    return JSONResponse(taken[0].model_dump()) if taken else Response(status_code=204)


@router.get("/{endpoint_id}/job-take-batch/{worker_id}", summary="Take up to batch_size queued jobs", responses=NO_JOB)
async def job_take_batch(
    request: Request,
    endpoint_id: EndpointPathId,
    worker_id: WorkerPathId,
    context: ContextDep,
    authorization: AuthorizationHeader = None,
    batch_size: Annotated[int, Query(ge=1, le=MAX_BATCH)] = 1,
    sdk: SdkQuery = "",
    job_in_progress: InProgressQuery = 0,
) -> Response:
    """As job-take, for up to `batch_size` jobs at once, answered as a list (the SDKs' concurrent workers); 204
    when none came."""
    worker = await service.authenticate(context, authorization, endpoint_id, worker_id)
    taken = await service.take(context, worker, batch_size, request.is_disconnected)
    return JSONResponse([job.model_dump() for job in taken]) if taken else Response(status_code=204)


@router.get(
    "/{endpoint_id}/job-stop/{worker_id}",
    summary="The jobs the worker must stop (runpod's stop channel)",
    responses=NO_STOP,
)
async def job_stop(
    endpoint_id: EndpointPathId,
    worker_id: WorkerPathId,
    context: ContextDep,
    authorization: AuthorizationHeader = None,
    sdk: SdkQuery = "",
) -> Response:
    """The ids of the jobs this worker runs that it must stop (cancelled, or past their timeout), which the runpod
    SDK polls; 204 when there are none."""
    worker = await service.authenticate(context, authorization, endpoint_id, worker_id)
    stop = await service.stop_signals(context, worker)
    return JSONResponse({"jobsToStop": stop}) if stop else Response(status_code=204)


@router.post(
    "/{endpoint_id}/job-done/{worker_id}/{job_id}",
    summary="Record a job's result",
    description='The body is `{"output": ...}` or `{"error": ...}` as JSON text; with `isStream=true` the '
    "output is the streamed parts' aggregate (an empty list unless the handler returns it). 409 when the worker "
    "no longer holds the job.",
)
async def job_done(
    endpoint_id: EndpointPathId,
    worker_id: WorkerPathId,
    job_id: JobPathId,
    request: Request,
    context: ContextDep,
    authorization: AuthorizationHeader = None,
    is_stream: Annotated[bool, Query(alias="isStream")] = False,
    sdk: SdkQuery = "",
) -> JSONResponse:
    worker = await service.authenticate(context, authorization, endpoint_id, worker_id)
    post = service.parse_result(await _body(request, context.settings.job_max_payload_bytes))
    await service.done(context, worker, job_id, post)
    return JSONResponse({})


@router.post(
    "/{endpoint_id}/job-stream/{worker_id}/{job_id}",
    summary="Append a streamed partial output",
    description='The body is `{"output": ...}` as JSON text. 409 when the worker no longer holds the job.',
)
async def job_stream(
    endpoint_id: EndpointPathId,
    worker_id: WorkerPathId,
    job_id: JobPathId,
    request: Request,
    context: ContextDep,
    authorization: AuthorizationHeader = None,
    is_stream: Annotated[bool, Query(alias="isStream")] = False,
    sdk: SdkQuery = "",
) -> JSONResponse:
    worker = await service.authenticate(context, authorization, endpoint_id, worker_id)
    post = service.parse_result(await _body(request, context.settings.job_max_payload_bytes))
    return JSONResponse({"seq": await service.stream(context, worker, job_id, post)})


@router.get("/{endpoint_id}/ping/{worker_id}", summary="Heartbeat: renew the leases of the jobs the worker runs")
async def ping(
    endpoint_id: EndpointPathId,
    worker_id: WorkerPathId,
    context: ContextDep,
    authorization: AuthorizationHeader = None,
    job_id: Annotated[list[str], Query(description="the jobs the worker runs, comma-separated")] = [],  # noqa: B006
    status: Annotated[str, Query(max_length=32, description="`unhealthy`: a start-up fitness check failed")] = "",
    check: Annotated[str, Query(max_length=255)] = "",
    reason: Annotated[str, Query(max_length=1024)] = "",
    sdk: SdkQuery = "",
) -> JSONResponse:
    """Renews the leases of the jobs named in `job_id` and answers which were renewed. `status=unhealthy` reports a
    failed start-up fitness check (`check`, `reason`)."""
    worker = await service.authenticate(context, authorization, endpoint_id, worker_id)
    unhealthy = (check or "unnamed", reason) if status == "unhealthy" else None
    renewed = await service.ping(context, worker, service.job_ids(job_id), unhealthy=unhealthy)
    return JSONResponse({"renewed": renewed})
