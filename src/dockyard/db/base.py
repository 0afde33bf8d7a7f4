"""The declarative base, column types shared by every table, and the guarded write.

Every mutable table has an integer `version`. The ORM uses it as its version counter (an UPDATE says
`WHERE id = ? AND version = ?` and raises `StaleDataError` on a mismatch, which the API answers with 409),
and reconcilers write through `guarded_update`, which returns False instead of raising: a stale
reconciler write is not an error, the next pass redoes the work from fresh state.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, Integer, MetaData, String, TypeDecorator, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column
from sqlalchemy.orm.exc import StaleDataError

T = TypeVar("T")

# Tries of a request's write that lost to a concurrent writer (often a reconciler recording what it observed).
STALE_RETRIES = 3

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores none, so naive values read as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Versioned:
    """A mutable row: optimistic concurrency through `version`, creation and modification times."""

    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:  # noqa: N805 (a declared_attr is a class method)
        return {"version_id_col": cls.__dict__.get("version") or cls.version}


def uuid_pk() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


async def guarded_update(session: AsyncSession, model: Any, row_id: Any, version: int, **values: Any) -> bool:
    """`UPDATE model SET values, version = version + 1 WHERE id = row_id AND version = version`.

    Returns whether the row was still at `version` (and so was written). The caller commits.
    """
    if issubclass(model, Versioned) and "modified_at" not in values:
        values["modified_at"] = utcnow()
    result = await session.execute(
        update(model)
        .where(model.id == row_id, model.version == version)
        .values(version=model.version + 1, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


async def retry_stale(session: AsyncSession, change: Callable[[], Awaitable[T]], tries: int = STALE_RETRIES) -> T:
    """Run `change` (which loads its rows, changes them and commits) again when a concurrent writer won: the stale
    flush rolls back and the next try reads the rows afresh. For a request whose meaning does not depend on the
    version it read (a delete, a stop): a reconciler recording a status meanwhile is no reason to answer 409. The
    last try's `StaleDataError` is the API's 409."""
    for _ in range(tries - 1):
        try:
            return await change()
        except StaleDataError:
            await session.rollback()
    return await change()
