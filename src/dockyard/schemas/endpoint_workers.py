"""PPIO-style (snake_case, unix seconds) answers of an endpoint's workers and events (ours: PPIO documents none)."""

from __future__ import annotations

from pydantic import Field

from dockyard.schemas.common import SnakeModel, UnixSeconds
from dockyard.schemas.endpoints import Worker

MAX_EVENTS = 500


class LastProbe(SnakeModel):
    at: UnixSeconds = Field(description="when the prober saw this result (first, or counted it again)")
    result: str = Field(
        description='"ok", "connection refused", "status <code>", "timeout", "connection closed" or '
        '"connection failed"',
        examples=["connection refused"],
    )


class WorkerDetail(Worker):
    """A worker as the endpoint's GET shows it, plus where and since when it runs."""

    generation: int = Field(description="the endpoint generation (worker template) it runs; PUTs that roll bump it")
    node_id: str = Field(description="the node it is placed on; empty while pending")
    created_at: UnixSeconds
    updated_at: UnixSeconds = Field(description="when it last changed (status, health, drain)")
    last_probe: LastProbe | None = Field(
        default=None,
        description="a sync worker's last health probe that told something new; null before the first, and for "
        "async workers (never probed)",
    )
    first_call_at: UnixSeconds | None = Field(
        default=None, description="an async worker's first webhook call (job-take or ping); null before it"
    )
    last_call_at: UnixSeconds | None = Field(default=None, description="an async worker's latest webhook call")


class WorkerList(SnakeModel):
    data: list[WorkerDetail] = Field(description="oldest first")


class EndpointEvent(SnakeModel):
    type: str = Field(examples=["ScaledUp"])
    message: str = Field(description="what was decided and why, in words")
    created_at: UnixSeconds


class EndpointEventList(SnakeModel):
    data: list[EndpointEvent] = Field(description="newest first")
