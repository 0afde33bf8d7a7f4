"""The clock lease and heartbeat times are read from: the database's on PostgreSQL, where processes on several
hosts share the rows and no host's clock may decide for another; the process's own on SQLite (one host)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Interval, func, literal, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.base import UTCDateTime, utcnow


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def now_sql(postgres: bool, plus_seconds: float = 0.0) -> ColumnElement[datetime]:
    """Now (plus `plus_seconds`) as a SQL value: PostgreSQL's `clock_timestamp()`, which moves within a
    transaction as `now()` does not, or this process's clock."""
    if postgres:
        clock = func.clock_timestamp(type_=UTCDateTime())
        if not plus_seconds:
            return clock
        return type_coerce(clock + literal(timedelta(seconds=plus_seconds), Interval()), UTCDateTime())
    return literal(utcnow() + timedelta(seconds=plus_seconds), UTCDateTime())


async def now(session: AsyncSession) -> datetime:
    """The same clock's now, read."""
    if is_postgres(session):
        return (await session.execute(select(now_sql(True)))).scalar_one()
    return utcnow()
