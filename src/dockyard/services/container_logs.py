"""A container's output, read from its runtime object (the one API path that reaches a runtime: logs are
not state to record but bytes the runtime holds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.context import ServerContext
from dockyard.errors import Conflict, InvalidField, Unavailable
from dockyard.runtimes.base import RuntimeFailure, RuntimeUnavailable
from dockyard.services.containers import get_row
from dockyard.services.keys import Principal


def parse_since(value: str | None) -> datetime | None:
    """RFC 3339 (`2024-05-01T12:00:00Z`) or unix seconds (`1714564800`); raises `InvalidField` on `since`."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidField("since", "expected RFC 3339 (2024-05-01T12:00:00Z) or unix seconds (1714564800)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _unavailable(idc_id: str) -> Unavailable:
    return Unavailable(f"the runtime of IDC {idc_id} cannot be reached right now; retry in a moment")


async def open_logs(
    context: ServerContext,
    session: AsyncSession,
    principal: Principal,
    container_id: str,
    *,
    tail: int | None,
    follow: bool,
    since: datetime | None,
) -> AsyncIterator[bytes]:
    """An iterator over the container's output. The first chunk is read here, so a missing object or an
    unreachable runtime is an error answer (409, 503) rather than a stream that breaks after its headers."""
    row = await get_row(session, principal, container_id)
    if not row.runtime_id:
        raise Conflict("container has not started yet; no logs. Retry once its status is running")
    runtime = context.runtime_for(row.idc_id)
    if runtime is None:
        raise _unavailable(row.idc_id)
    stream = aiter(runtime.logs(row.runtime_id, tail=tail, follow=follow, since=since))
    try:
        first = await anext(stream, b"")
    except RuntimeUnavailable:
        raise _unavailable(row.idc_id) from None
    except RuntimeFailure as exc:
        raise Conflict(f"no logs for container {container_id}: {exc.reason}") from None
    idc_id = row.idc_id

    async def chunks() -> AsyncIterator[bytes]:
        if first:
            yield first
        try:
            async for chunk in stream:
                yield chunk
        except RuntimeUnavailable:
            # Headers are sent already: the stream ends, with the reason as its last line.
            yield f"\n[dockyard: {_unavailable(idc_id).message}]\n".encode()
        except RuntimeFailure as exc:
            yield f"\n[dockyard: {exc.reason}]\n".encode()
        finally:
            # A follower that hangs up must not leave the runtime's log stream open.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    return chunks()
