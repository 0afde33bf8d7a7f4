"""The live processes and the leases they hold (`GET /admin/v1/processes`): snake_case, RFC 3339 times."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import ProcessKind, ProcessState
from dockyard.schemas.common import Rfc3339, SnakeModel


class HeldLease(SnakeModel):
    name: str = Field(description="`reconcilers`: its holder runs the control loops")
    token: int = Field(description="the fencing token, raised at every change of holder")
    acquired_at: Rfc3339 | None = Field(description="when this holder took it")
    renewed_at: Rfc3339 | None = Field(description="its last renewal")
    expires_at: Rfc3339 = Field(description="when another process may take it unless it is renewed")
    first_pass_at: Rfc3339 | None = Field(
        description="when every control loop had begun its first pass under this holder; null until then"
    )


class Process(SnakeModel):
    id: str = Field(description="host:pid:random; a lease's holder is named so")
    kind: ProcessKind
    host: str
    pid: int
    version: str
    address: str = Field(description="the address it serves on")
    state: ProcessState = Field(description="`lost`: no heartbeat for a lease period (killed, or cut off)")
    started_at: Rfc3339
    heartbeat_at: Rfc3339
    leases: list[HeldLease] = Field(description="the leases it holds now")
