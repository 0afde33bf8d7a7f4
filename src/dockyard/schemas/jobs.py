"""The async job API's wire models, in the shape the ppio-gpus and runpod clients send and parse.

These clients speak RunPod's dialect: camelCase (`delayTime`, `executionTime`, `executionTimeout`), times in
milliseconds, statuses in UPPER_SNAKE. Optional keys of the status view (`output`, `error`, `retries`,
`workerId`, `stream`) are absent rather than null when they do not apply, as RunPod answers them; the routers
therefore declare these models with `response_model_exclude_unset`. A queued job's view adds Dockyard's `position`,
`estimatedStartAt` and `reason` (services/waits.py), present (the last two null when unknown) only while IN_QUEUE.
The listing for our CLI (`/gpus/v2/endpoints/{id}/jobs`) adds PPIO-style `created_at` (unix seconds) and `attempts`.
"""

from __future__ import annotations

from typing import Any, Required, TypedDict

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from dockyard.core.status import JobStatus
from dockyard.schemas.waits import Blocking

# The bounds of RunPod's job policy as its docs state them (docs.runpod.io, serverless/endpoints: "Execution
# policies" in send-requests, "Execution timeout" and "Job TTL" in endpoint-configurations): `executionTimeout` at
# least 5 s, `ttl` at least 10 s, both at most 7 days (a week also keeps them inside the 32-bit integer columns), and
# `lowPriority` a boolean. PPIO's client (ppio-gpus) sends only `input` and PPIO documents no policy of its own, so
# both bases take RunPod's.
MAX_POLICY_MS = 7 * 24 * 3600 * 1000
MIN_EXECUTION_TIMEOUT_MS = 5_000
MIN_TTL_MS = 10_000
MAX_WEBHOOK = 2048
MAX_RUNSYNC_WAIT_MS = 300_000
DEFAULT_RUNSYNC_WAIT_MS = 90_000


class JobPolicy(BaseModel):
    """Per-job limits, RunPod's `policy` (times in milliseconds); omitted ones take the server's defaults."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    execution_timeout: int | None = Field(
        default=None,
        alias="executionTimeout",
        ge=MIN_EXECUTION_TIMEOUT_MS,
        le=MAX_POLICY_MS,
        description="ms a worker may run the job before it is TIMED_OUT",
    )
    ttl: int | None = Field(
        default=None,
        ge=MIN_TTL_MS,
        le=MAX_POLICY_MS,
        description="ms the job may live from submission, queued and running: one not finished by then is TIMED_OUT "
        "(a job no worker took in time never runs)",
    )
    low_priority: StrictBool = Field(
        default=False, alias="lowPriority", description="true: the job never makes the endpoint add a worker"
    )


class RunRequest(BaseModel):
    """`run` and `runsync`: the handler's `input` (any JSON), an optional result webhook and policy."""

    model_config = ConfigDict(extra="ignore")

    input: Any = Field(description="passed to the worker's handler as `job['input']`", examples=[{"prompt": "hi"}])
    webhook: str | None = Field(
        default=None,
        max_length=MAX_WEBHOOK,
        pattern=r"^https?://\S+$",
        description="POSTed the status view once the job finishes",
        repr=False,  # its userinfo and query may hold the receiver's credentials
    )
    policy: JobPolicy | None = None


class JobAccepted(BaseModel):
    id: str
    status: JobStatus = Field(examples=["IN_QUEUE"])


class StreamPart(BaseModel):
    output: Any


class JobView(BaseModel):
    """A job's status as `status/{id}` answers it; times in milliseconds."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    status: JobStatus
    delay_time: int = Field(alias="delayTime", description="ms from entering the queue to being taken")
    execution_time: int = Field(alias="executionTime", description="ms from being taken to finishing")
    output: Any = Field(
        default=None,
        description="a finished job's result; while it runs, the last value its handler reported (`progress_update`)",
    )
    error: str | None = None
    retries: int | None = Field(default=None, description="runs beyond the first (lost leases, `retry` calls)")
    worker_id: str | None = Field(default=None, alias="workerId")
    stream: list[StreamPart] | None = Field(default=None, description="`stream` only: the parts not yet read")
    position: int | None = Field(default=None, description="IN_QUEUE only: its place in the endpoint's queue, 1 first")
    estimated_start_at: int | None = Field(
        default=None,
        alias="estimatedStartAt",
        description="IN_QUEUE only: unix seconds when a worker should take it, from the endpoint's recent "
        "throughput; null when that is not known (no job taken lately, or the queue is blocked)",
    )
    reason: Blocking | None = Field(
        default=None, description="IN_QUEUE only: why it is not moving; null when it moves (docs/troubleshooting.md)"
    )


class JobViewBody(TypedDict, total=False):
    """`JobView` as JSON, the form the services build it in and a job's webhook receives: the same keys by their
    wire names, only those that apply."""

    id: Required[str]
    status: Required[str]
    delayTime: Required[int]
    executionTime: Required[int]
    output: Any
    error: str
    retries: int
    workerId: str
    stream: list[dict[str, Any]]
    position: int
    estimatedStartAt: int | None
    reason: dict[str, Any] | None


class JobListItem(JobView):
    created_at: int = Field(description="unix seconds")
    attempts: int = Field(description="times a worker took it")
    history: list[dict[str, Any]] = Field(
        default_factory=list,
        description="each attempt (worker, start, end, outcome: why a job ran more than once) and notes",
    )


class JobList(BaseModel):
    data: list[JobListItem]


class PurgeAnswer(BaseModel):
    removed: int
    status: str = Field(examples=["completed"])


class JobCounts(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    completed: int
    failed: int = Field(description="FAILED and TIMED_OUT")
    in_progress: int = Field(alias="inProgress")
    in_queue: int = Field(alias="inQueue")
    retried: int = Field(description="jobs a client sent back with `retry`")


class WorkerCounts(BaseModel):
    """RunPod's worker states, counted from Dockyard's worker statuses."""

    idle: int = Field(description="ready workers running no job")
    initializing: int = Field(description="workers being placed or started (`pending`, `starting`)")
    ready: int = Field(description="workers taking jobs (`ready`, not draining), idle or running")
    running: int = Field(description="workers running a job, a draining one finishing its own included")
    throttled: int = Field(description="always 0: a worker waiting for room on a node is initializing")
    unhealthy: int = Field(description="workers that failed (`failed`, with the reason on the endpoint)")


class EndpointHealth(BaseModel):
    jobs: JobCounts
    workers: WorkerCounts
    reason: Blocking | None = Field(
        default=None, description="why its queued jobs are not moving; null when they move (docs/troubleshooting.md)"
    )
