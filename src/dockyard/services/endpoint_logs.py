"""An endpoint's output across its workers, merged by time, and the output of removed workers, kept for a while.

A worker's output lives in its container, which goes when the worker is scaled down, replaced or reaped. Just
before the endpoint reconciler removes a container it reads the output with the engine's timestamps and hands it
to `keep` (reconcilers/endpoints_workers.py): the last `worker_log_bytes` of it, cut at a line, become one
`worker_logs` row, and the endpoint's oldest rows go while its rows hold more than `endpoint_log_bytes`. A table
rather than files, so that every server of an installation on one PostgreSQL reads the same. `prune`, run by the
endpoint reconciler's passes, deletes rows older than `worker_log_retention_seconds`; the endpoint's deletion
cascades to its rows.

`open_endpoint_logs` serves them: the output of the endpoint's workers that still have a container (read from the
runtime, like a worker's own logs, services/container_logs.py) and of the removed ones, each line as
`<RFC 3339 time> <worker id> <line>`, oldest first, the last `limit` lines of the `since`/`until` window. With
`follow`, the workers running at the time of the request are then followed, their new lines written as they come.
The lines are the workers' own output: nothing of Dockyard's (no key) is added to them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.callers import Principal
from dockyard.core.status import WorkerStatus
from dockyard.db.base import utcnow
from dockyard.db.models import WorkerLogModel, WorkerModel
from dockyard.db.session import Database
from dockyard.errors import InvalidField, Unavailable
from dockyard.runtimes.base import Runtime, RuntimeFailure, RuntimeUnavailable
from dockyard.services import endpoints

MAX_LINES = 100_000
# The lines read of a container about to be removed: enough to fill `worker_log_bytes` with short lines, and a
# bound on the read for a worker that wrote gigabytes.
KEEP_TAIL_LINES = 100_000
_FOLLOWED = (WorkerStatus.STARTING, WorkerStatus.READY, WorkerStatus.DRAINING)


@dataclass(frozen=True)
class Line:
    at: datetime
    worker_id: str
    text: bytes  # without its newline

    def wire(self) -> bytes:
        stamp = self.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        return b"%s %s %s\n" % (stamp, self.worker_id.encode(), self.text)


def parse_time(stamp: bytes) -> datetime | None:
    """The engine's `2026-12-06T11:30:00.123456789Z` (or with fewer digits, or an offset) in UTC; None for
    anything else. Python keeps microseconds: the nanoseconds are dropped."""
    text = stamp.decode(errors="replace")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest[:9] if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_lines(output: bytes, worker_id: str) -> list[Line]:
    """Output read with timestamps as lines; a line without a time (none should be) takes the one before it."""
    lines: list[Line] = []
    last = datetime(1970, 1, 1, tzinfo=UTC)
    for raw in output.splitlines():
        stamp, _, text = raw.partition(b" ")
        at = parse_time(stamp)
        if at is None:
            at, text = last, raw
        last = at
        lines.append(Line(at, worker_id, text))
    return lines


def last_bytes(output: bytes, limit: int) -> bytes:
    """The last `limit` bytes of `output`, starting at a line."""
    if len(output) <= limit:
        return output
    cut = output[len(output) - limit :]
    newline = cut.find(b"\n")
    return cut[newline + 1 :] if newline >= 0 else b""


async def keep(db: Database, worker: WorkerModel, output: bytes, *, settings: Settings) -> None:
    """Keep the removed `worker`'s `output` (read with timestamps): its last `worker_log_bytes`, replacing what was
    kept of it before (a removal retried), then drop the endpoint's oldest rows beyond `endpoint_log_bytes`."""
    kept = last_bytes(output, settings.worker_log_bytes)
    async with db.write() as session:
        await session.execute(delete(WorkerLogModel).where(WorkerLogModel.worker_id == worker.id))
        if kept:
            session.add(
                WorkerLogModel(endpoint_id=worker.endpoint_id, org_id=worker.org_id, worker_id=worker.id, output=kept)
            )
            await session.flush()
        sizes = await session.execute(
            select(WorkerLogModel.id, func.length(WorkerLogModel.output))
            .where(WorkerLogModel.endpoint_id == worker.endpoint_id)
            .order_by(WorkerLogModel.removed_at.desc(), WorkerLogModel.id.desc())
        )
        total, over = 0, []
        for row_id, size in sizes:
            total += int(size or 0)
            if total > settings.endpoint_log_bytes:
                over.append(row_id)
        if over:
            await session.execute(delete(WorkerLogModel).where(WorkerLogModel.id.in_(over)))


async def prune(db: Database, before: datetime) -> int:
    """Delete the output of workers removed before `before`; how many rows went."""
    async with db.write() as session:
        result = await session.execute(delete(WorkerLogModel).where(WorkerLogModel.removed_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


async def open_endpoint_logs(
    session: AsyncSession,
    principal: Principal,
    endpoint_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    worker_id: str | None,
    limit: int,
    follow: bool,
    context: ServerContext,
) -> AsyncIterator[bytes]:
    """The endpoint's output (see the module docstring). 404: not this organization's endpoint; 422: `worker` is
    none of its workers, live or kept; 503: a runtime holding a worker cannot be reached."""
    endpoint = await endpoints.get_row(session, principal, endpoint_id)
    query = select(WorkerModel).where(WorkerModel.endpoint_id == endpoint.id, WorkerModel.runtime_id != "")
    kept_query = select(WorkerLogModel).where(WorkerLogModel.endpoint_id == endpoint.id)
    if worker_id is not None:
        query = query.where(WorkerModel.id == worker_id)
        kept_query = kept_query.where(WorkerLogModel.worker_id == worker_id)
    workers = list(await session.scalars(query.order_by(WorkerModel.created_at)))
    kept = list(await session.scalars(kept_query))
    if worker_id is not None and not workers and not kept:
        raise InvalidField(
            "worker",
            f"endpoint {endpoint.id} has no worker {worker_id}, running or with output kept; "
            f"`dockyard endpoints workers {endpoint.id}` lists them",
        )
    runtime = context.runtime_for(endpoint.idc_id)
    if runtime is None and workers:
        raise _unavailable(endpoint.idc_id)
    lines = [line for row in kept for line in parse_lines(row.output, row.worker_id)]
    read_up_to: dict[str, datetime] = {}  # each live worker's last line read: following goes on after it
    for worker in workers:
        assert runtime is not None
        stream = runtime.logs(worker.runtime_id, tail=limit, since=since, timestamps=True)
        read = parse_lines(await _read(stream, endpoint.idc_id), worker.id)
        if read:
            read_up_to[worker.id] = max(line.at for line in read)
        lines += read
    window = [line for line in lines if (since is None or line.at >= since) and (until is None or line.at < until)]
    window.sort(key=lambda line: line.at)
    head = b"".join(line.wire() for line in window[-limit:])
    followed = [w for w in workers if w.status in _FOLLOWED] if follow and until is None else []

    async def chunks() -> AsyncIterator[bytes]:
        if head:
            yield head
        if followed and runtime is not None:
            async for chunk in _follow(runtime, followed, read_up_to):
                yield chunk

    return chunks()


def _unavailable(idc_id: str) -> Unavailable:
    return Unavailable(f"the runtime of IDC {idc_id} cannot be reached right now; retry in a moment")


async def _read(stream: AsyncIterator[bytes], idc_id: str) -> bytes:
    """All of a worker's output; none when its container went meanwhile."""
    try:
        return b"".join([chunk async for chunk in stream])
    except RuntimeUnavailable:
        raise _unavailable(idc_id) from None
    except RuntimeFailure:
        return b""


async def _follow(
    runtime: Runtime, workers: Sequence[WorkerModel], read_up_to: dict[str, datetime]
) -> AsyncIterator[bytes]:
    """The lines of every worker written after the last one already read (`read_up_to`; all of a worker's lines
    when none was), as they come, tagged, until every worker stops or the reader hangs up. Following from the last
    line read, rather than from the log's end, loses no line written between the read and the follow, and the
    lines at or before it are dropped, so none is shown twice (an engine's `since` counts in whole seconds)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def one(worker: WorkerModel) -> None:
        after = read_up_to.get(worker.id)
        pending = b""
        try:
            async for chunk in runtime.logs(worker.runtime_id, follow=True, since=after, timestamps=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in parse_lines(b"\n".join(complete), worker.id):
                    if after is None or line.at > after:
                        queue.put_nowait(line.wire())
        except (RuntimeFailure, RuntimeUnavailable):
            pass  # its container went or the runtime is down: the others go on
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(one(worker)) for worker in workers]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def retention_cutoff(settings: Settings, now: datetime | None = None) -> datetime:
    """The removal time before which kept output is pruned."""
    return (now or utcnow()) - timedelta(seconds=settings.worker_log_retention_seconds)
