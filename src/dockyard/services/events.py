"""Events: the append-only record of what a reconciler decided about an object, and why.

`record` adds to the caller's session, so an event commits (or rolls back) together with the status
change it explains; an event is never written for a change that did not happen.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.models import EventModel


def record(session: AsyncSession, *, org_id: str, object_kind: str, object_id: str, type: str, message: str) -> None:
    """Add an event to `session`; the caller's commit writes it."""
    session.add(EventModel(org_id=org_id, object_kind=object_kind, object_id=object_id, type=type, message=message))


async def list_events(
    session: AsyncSession, org_id: str, object_kind: str, object_id: str, limit: int = 50
) -> Sequence[EventModel]:
    """The object's latest `limit` events of organization `org_id`, oldest first."""
    rows = await session.scalars(
        select(EventModel)
        .where(
            EventModel.org_id == org_id,
            EventModel.object_kind == object_kind,
            EventModel.object_id == object_id,
        )
        .order_by(EventModel.created_at.desc(), EventModel.id.desc())
        .limit(limit)
    )
    return list(reversed(rows.all()))
