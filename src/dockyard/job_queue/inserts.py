"""Group commit of submitted jobs: the `run` calls of one process that arrive together are written in one write
transaction, so the queue takes submissions as fast as the process answers requests rather than one commit's round
trips at a time (on SQLite a writer holds the single write lock over every round trip of its transaction, so writers
one by one are bound by the event loop's latency, not by the database).

Contract: `await JobInserts(db).insert(row, check, check_key)` runs `check(session)` in the batch's write
transaction, then inserts `row` (the column values of a new `JobModel`, its `id` among them) unless `check` raised,
and returns what `check` returned once the row is committed, so a `run` still answers only a durable job. Rows of
one batch with equal `check_key`s share one run of the check, the first of them: a check must depend on its key
alone (the organization and endpoint a job goes to), and a batch of jobs for one endpoint reads that endpoint once.
Because the check and the insert share the transaction (and on SQLite its write lock), what the check saw still
holds at the commit: an endpoint it found cannot be deleted in between. A check that raises refuses the rows of its
key only; their callers get its exception. A row may also come with a `Limit`, a cap on how many rows its key (an
organization) may hold: it is read once per key per batch, in that same transaction, after the check and before any
insert, and the batch's rows are admitted against it one by one in arrival order, so of 50 rows against room for 10
exactly 10 are written and 40 get the limit's refusal. Rows are written in arrival order. A batch is whatever
arrived while the previous one was being committed, at most `MAX_BATCH` rows. When a whole batch fails (the database
refused it), each of its rows is retried in a transaction of its own, so only an offending row's caller gets the
error. A caller that is cancelled while it waits (its client went away) may still have its job committed, as a
client that goes away just after a commit always could.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert as insert_statement
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.models import JobModel
from dockyard.db.session import Database
from dockyard.errors import ApiError

MAX_BATCH = 500

Row = dict[str, Any]
Check = Callable[[AsyncSession], Awaitable[Any]]


@dataclass(frozen=True)
class Limit:
    """At most `usage`'s second figure rows of `key` (say, jobs IN_QUEUE of an organization). `usage` reads,
    in the batch's transaction, how many the key holds and how many it may hold (taking whatever lock makes
    that figure hold until the commit); `refusal` is the error of a row that would go past, given the use."""

    key: Hashable
    usage: Callable[[AsyncSession], Awaitable[tuple[int, int]]]
    refusal: Callable[[int, int], ApiError]


Entry = tuple[Row, Check, Hashable, Limit | None, "asyncio.Future[Any]"]


class _Inserter:
    """One database's queue of rows to insert, in one event loop; one writer task drains it while rows wait."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.loop = asyncio.get_running_loop()
        self._pending: list[Entry] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, row: Row, check: Check, check_key: Hashable, limit: Limit | None) -> Any:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._pending.append((row, check, check_key, limit, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        return await future

    async def _write_all(self) -> None:
        batch: list[Entry] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._write(batch)
                batch = []
        except BaseException as exc:
            # Cancelled (the server is stopping): no waiting row will be written, and the batch under way may or
            # may not have been; every one of their callers hears so, as after a lost connection.
            error = exc if isinstance(exc, Exception) else RuntimeError("the server is stopping")
            for *_, future in [*batch, *self._pending]:
                _settle(future, error=error)
            self._pending = []
            raise
        finally:
            self._writer = None

    async def _write(self, batch: list[Entry]) -> None:
        try:
            outcomes = await self._commit(batch)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][-1], error=exc)
                return
            for entry in batch:
                try:
                    outcomes = await self._commit([entry])
                except Exception as own:
                    _settle(entry[-1], error=own)
                else:
                    _settle(entry[-1], *outcomes[0])
            return
        for (*_, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, *outcome)

    async def _commit(self, batch: list[Entry]) -> list[tuple[Any, Exception | None]]:
        """Check and insert `batch` in one transaction; per entry, the check's result or its refusal."""
        outcomes: list[tuple[Any, Exception | None]] = []
        checked: dict[Hashable, tuple[Any, Exception | None]] = {}
        # limit key -> the first row's limit (rows sharing a key share it), rows held, rows allowed
        held: dict[Hashable, tuple[Limit, int, int]] = {}
        rows: list[Row] = []
        async with self.db.write() as session:
            for row, check, check_key, limit, _ in batch:
                if check_key not in checked:
                    try:
                        checked[check_key] = (await check(session), None)
                    except ApiError as refused:
                        checked[check_key] = (None, refused)
                outcome = checked[check_key]
                if outcome[1] is None and limit is not None:
                    if limit.key not in held:
                        held[limit.key] = (limit, *await limit.usage(session))
                    shared, used, allowed = held[limit.key]
                    if used + 1 > allowed:
                        outcome = (None, shared.refusal(used, allowed))
                    else:
                        held[limit.key] = (shared, used + 1, allowed)
                outcomes.append(outcome)
                if outcome[1] is None:
                    rows.append(row)
            if rows:
                await session.execute(insert_statement(JobModel), rows)
        return outcomes


def _settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class JobInserts:
    """One server's group commit of job rows into `db` (the server context holds it): one queue of rows, on the
    event loop it is used on."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._inserter: _Inserter | None = None

    async def insert(self, row: Row, check: Check, check_key: Hashable, limit: Limit | None = None) -> Any:
        """Commit one new job row after `check` and within `limit`, in a batch with those submitted at the same
        time (see the module docstring); `check`'s result."""
        inserter = self._inserter
        if inserter is None or inserter.loop is not asyncio.get_running_loop():
            inserter = self._inserter = _Inserter(self.db)
        return await inserter.insert(row, check, check_key, limit)
