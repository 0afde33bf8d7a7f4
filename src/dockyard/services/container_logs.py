"""The output of a container or an endpoint worker, read from its runtime object (the one API path that
reaches a runtime: logs are not state to record but bytes the runtime holds)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.context import ServerContext
from dockyard.core.callers import Principal
from dockyard.errors import Conflict, InvalidField, Unavailable
from dockyard.runtimes.base import RuntimeFailure, RuntimeUnavailable
from dockyard.services.containers import get_row

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SINCE_FORMATS = "expected RFC 3339 (2024-05-01T12:00:00Z) or unix seconds (1714564800)"


def parse_since(value: str | None, field: str = "since") -> datetime | None:
    """RFC 3339 (`2024-05-01T12:00:00Z`) or unix seconds (`1714564800`). None, meaning from the beginning, when
    absent or at or before the epoch (`0`, `-1`, `1970-01-01T00:00:00Z`); a time in the future is kept (no
    output yet). Raises `InvalidField` on `field` for anything else: not a time, not finite, past year 9999."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidField(field, _SINCE_FORMATS) from None
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    else:
        if not math.isfinite(seconds):
            raise InvalidField(field, f"{text} is not a time; {_SINCE_FORMATS}")
        if seconds <= 0:
            return None
        try:
            parsed = datetime.fromtimestamp(seconds, UTC)
        except (ValueError, OverflowError, OSError):
            raise InvalidField(field, f"{text} is past year 9999; send a time before it, or omit {field}") from None
    return None if parsed <= _EPOCH else parsed


def _unavailable(idc_id: str) -> Unavailable:
    return Unavailable(f"the runtime of IDC {idc_id} cannot be reached right now; retry in a moment")


async def open_logs(
    session: AsyncSession,
    principal: Principal,
    container_id: str,
    *,
    tail: int | None,
    follow: bool,
    since: datetime | None,
    context: ServerContext,
) -> AsyncIterator[bytes]:
    """An iterator over the container's output; errors as `open_runtime_logs` gives them."""
    row = await get_row(session, principal, container_id)
    if not row.runtime_id:
        raise Conflict("container has not started yet; no logs. Retry once its status is running")
    return await open_runtime_logs(
        context, row.idc_id, row.runtime_id, f"container {container_id}", tail=tail, follow=follow, since=since
    )


async def open_runtime_logs(
    context: ServerContext,
    idc_id: str,
    runtime_id: str,
    what: str,
    *,
    tail: int | None,
    follow: bool,
    since: datetime | None,
) -> AsyncIterator[bytes]:
    """An iterator over the output of runtime object `runtime_id` of IDC `idc_id` (`what` names it in errors:
    "container <id>", "worker <id>"). The first chunk is read here, so a missing object (409) or an unreachable
    runtime (503) is an error answer rather than a stream that breaks after its headers."""
    runtime = context.runtime_for(idc_id)
    if runtime is None:
        raise _unavailable(idc_id)
    stream = aiter(runtime.logs(runtime_id, tail=tail, follow=follow, since=since))
    try:
        first = await anext(stream, b"")
    except RuntimeUnavailable:
        raise _unavailable(idc_id) from None
    except RuntimeFailure as exc:
        raise Conflict(f"no logs for {what}: {exc.reason}") from None

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
