"""`Idempotency-Key` for any POST: the first request with a key does the work and stores its answer in the
same transaction; a repeat with the same body gets that answer again, for 24 hours.

Exactly one of several concurrent duplicates does the work because the key row's primary key is
(organization, key) and the row is inserted before the work: on PostgreSQL a second insert waits on the
first transaction's uncommitted row and then fails with an integrity error, on SQLite writers queue behind
`BEGIN IMMEDIATE` and the second one finds the row. Either way the loser rolls back and reads the stored
answer. A failed first attempt (a validation error) rolls the row back with it, so a corrected retry with the
same key is free to run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.base import utcnow
from dockyard.db.models import IdempotencyKeyModel
from dockyard.errors import Conflict, InvalidField

KEEP_FOR = timedelta(hours=24)
HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Answer:
    """A write's answer as it goes on the wire; `replayed` when it is a stored one sent again."""

    status_code: int
    body: Any
    replayed: bool = False


def fingerprint(operation: str, body: Any) -> str:
    """A digest of the operation (method and route) and the request body, independent of key order."""
    canonical = json.dumps([operation, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(row: IdempotencyKeyModel, digest: str) -> Answer:
    if row.fingerprint != digest:
        raise InvalidField(
            HEADER,
            "this key was used with a different request in the last 24 hours; send a new key for a new request",
        )
    return Answer(row.status_code, row.response, replayed=True)


async def claim(session: AsyncSession, org_id: str, key: str, digest: str) -> Answer | None:
    """Reserve `key` for this request inside the session's transaction, or return the stored answer.

    None means the caller does the work, then calls `record` and commits. Rows past `KEEP_FOR` are purged
    on the way (they are ignored whether or not the purge has reached them).
    """
    cutoff = utcnow() - KEEP_FOR
    await session.execute(delete(IdempotencyKeyModel).where(IdempotencyKeyModel.created_at < cutoff))
    row = await session.get(IdempotencyKeyModel, (org_id, key))
    if row is not None:
        return _replay(row, digest)
    session.add(IdempotencyKeyModel(org_id=org_id, key=key, fingerprint=digest, status_code=0, response=None))
    try:
        await session.flush()
    except IntegrityError:
        # A concurrent duplicate committed the key first: its answer is stored now.
        await session.rollback()
        row = await session.get(IdempotencyKeyModel, (org_id, key), populate_existing=True)
        if row is None or row.status_code == 0:
            raise Conflict(f"a request with this {HEADER} is still in progress; retry in a moment") from None
        return _replay(row, digest)
    return None


async def record(session: AsyncSession, org_id: str, key: str, answer: Answer) -> None:
    """Store the answer on the row `claim` reserved; the caller's commit makes both visible together."""
    row = await session.get(IdempotencyKeyModel, (org_id, key))
    if row is None:
        raise RuntimeError(f"idempotency key {key!r} was not claimed in this transaction")
    row.status_code = answer.status_code
    row.response = answer.body
    await session.flush()


async def once(
    session: AsyncSession,
    org_id: str,
    key: str | None,
    operation: str,
    body: Any,
    work: Callable[[], Awaitable[Any]],
) -> Answer:
    """Run `work` once per key: without a key it simply runs; with one, a repeat gets the stored answer.

    `work` adds and flushes rows but does not commit, and returns the answer's body; the caller commits, so
    the rows and the stored answer become visible together (or not at all).
    """
    if key is None:
        return Answer(200, await work())
    digest = fingerprint(operation, body)
    if stored := await claim(session, org_id, key, digest):
        return stored
    answer = Answer(200, await work())
    await record(session, org_id, key, answer)
    return answer
