"""Why something waits: the one blocking reason of an endpoint's queue, as the job status view, the endpoint's GET
and its `health` show it (services/waits.py computes it; docs/troubleshooting.md explains each code).

`code` is stable (a client may branch on it); `message` is a sentence that says what to do, naming the CLI command
where there is one; `since` is when the reason began, in unix seconds, when it is known.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class WaitCode(StrEnum):
    """Why queued work is not moving. Never renamed: clients may branch on the values."""

    ENDPOINT_FAILED = "ENDPOINT_FAILED"  # Dockyard marked the endpoint failed (a crash loop, a refused spec)
    WORKERS_FAILING = "WORKERS_FAILING"  # workers fail before they become ready; the next waits out a backoff
    WORKERS_NOT_CALLING_IN = "WORKERS_NOT_CALLING_IN"  # async workers started but never called the webhooks
    NO_FREE_GPU = "NO_FREE_GPU"  # no node has the product's GPUs free
    NO_ROOM = "NO_ROOM"  # no node has the CPU or memory free
    QUOTA_REACHED = "QUOTA_REACHED"  # the organization's quota holds the scale-up back
    MAX_REPLICAS = "MAX_REPLICAS"  # every worker the endpoint may have is busy
    WORKER_STARTING = "WORKER_STARTING"  # a worker is being placed or started
    SCALING_FROM_ZERO = "SCALING_FROM_ZERO"  # no worker yet; the autoscaler is starting one


class Blocking(BaseModel):
    """The one reason queued work waits."""

    code: WaitCode = Field(description="stable UPPER_SNAKE code; docs/troubleshooting.md explains each")
    message: str = Field(description="what is wrong and what to do, in words")
    since: int | None = Field(default=None, description="unix seconds when this began; null when not known")
