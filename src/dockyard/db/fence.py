"""Fenced writes: a control loop's write is refused once its process has lost the lease it ran under.

The supervisor runs each loop's pass with `CURRENT_FENCE` set to the lease it holds (name, holder, fencing token);
tasks the pass starts copy the context and carry the fence with them. `Database.write()` checks the fence at the
start of every write transaction opened where it is set, inside that transaction:

- PostgreSQL: `SELECT ... FROM leases WHERE name = ? AND holder = ? AND token = ? FOR SHARE`. The row lock is held
  until the write commits, so a takeover's UPDATE of the lease waits for the write in flight to end, and every
  write that starts after the takeover finds another token and is refused.
- SQLite: the same equality check; a write transaction takes the database's one write lock at BEGIN, so no
  takeover can come between the check and the commit.

A refused write raises `LeaseLost`. API writes run without a fence and are never refused.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_CHECK = "SELECT 1 FROM leases WHERE name = :name AND holder = :holder AND token = :token"


class LeaseLost(Exception):
    """The lease this write was fenced with has another holder or token now: the write was not made."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"lease {fence.lease} is no longer held by {fence.holder} with token {fence.token}")
        self.fence = fence


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a control loop's writes are made under."""

    lease: str
    holder: str
    token: int

    async def check(self, session: AsyncSession, *, postgres: bool) -> None:
        """Raise `LeaseLost` unless the lease still has this holder and token (see the module docstring)."""
        statement = _CHECK + (" FOR SHARE" if postgres else "")
        params = {"name": self.lease, "holder": self.holder, "token": self.token}
        if (await session.execute(text(statement), params)).first() is None:
            raise LeaseLost(self)


CURRENT_FENCE: ContextVar[Fence | None] = ContextVar("dockyard_fence", default=None)
