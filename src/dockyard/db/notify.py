"""`PostgresBus`: the bus (core/bus.py) between processes sharing one PostgreSQL database, on LISTEN/NOTIFY.

Two raw asyncpg connections made from the database URL, outside SQLAlchemy's pool (a pooled connection would
stop listening when returned, and a NOTIFY must never wait for a pooled connection behind requests):

- the listening connection `LISTEN`s on one channel. When it is lost (the server restarted, a network fault,
  `pg_terminate_backend`) it is made again with backoff, and once it listens again every subscriber is called
  with `EVERYTHING`: what was notified meanwhile is lost, so everything is read again. A connection that is
  silently gone (no termination seen) is found by a `SELECT 1` every `check_interval` seconds.
- the sending connection carries the `NOTIFY`s. `publish` delivers to this process's subscribers within the
  call and only queues the key for the others; a sender task takes everything queued since its last send, drops
  duplicates, and sends it in as few notifications as fit PostgreSQL's payload limit, in one statement. A send
  that fails is queued again and retried on a new connection after a backoff; nothing on a request's path ever
  waits for it.

A notification's payload is the origin's id on its first line, then one `topic key` line per signal; a process
ignores its own notifications (it delivered them locally already). Keys are ids and loop names: one line, no
space. Publishers call after their commit, and PostgreSQL delivers a notification after the commits that
preceded it, so a remote subscriber that reads on a signal sees the change that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from dockyard.core.bus import LocalBus, Subscriber, Subscribers, Topic
from dockyard.db.base import new_id
from dockyard.db.session import is_sqlite

log = logging.getLogger(__name__)

CHANNEL = "dockyard_bus"
# PostgreSQL refuses a payload of 8000 bytes or more.
PAYLOAD_LIMIT = 7999
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def asyncpg_dsn(url: str) -> str:
    """The libpq-style address asyncpg connects to, from the database URL SQLAlchemy is given."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def bus_for(url: str) -> LocalBus | PostgresBus:
    """The bus of a process on the database at `url`: SQLite serves one server, whose bus is in-process."""
    return LocalBus() if is_sqlite(url) else PostgresBus(url)


def payloads(origin: str, signals: Iterable[tuple[Topic, str]], limit: int = PAYLOAD_LIMIT) -> list[str]:
    """`signals` packed into as few payloads of at most `limit` bytes as they fit, each headed by `origin`. A signal
    too long for any payload is dropped with a warning (keys are ids: none is)."""
    head = origin.encode()
    packed: list[str] = []
    lines: list[bytes] = [head]
    size = len(head)
    for topic, key in signals:
        line = f"{topic.value} {key}".encode()
        if len(head) + 1 + len(line) > limit:
            log.warning("a %s key of %d bytes is too long to notify; dropped", topic.value, len(key))
            continue
        if size + 1 + len(line) > limit and len(lines) > 1:
            packed.append(b"\n".join(lines).decode())
            lines, size = [head], len(head)
        lines.append(line)
        size += 1 + len(line)
    if len(lines) > 1:
        packed.append(b"\n".join(lines).decode())
    return packed


def parse(payload: str) -> tuple[str, list[tuple[Topic, str]]]:
    """A payload's origin and its signals; a line naming no known topic is skipped (a newer process's topic)."""
    origin, *lines = payload.split("\n")
    signals = []
    for line in lines:
        name, _, key = line.partition(" ")
        if name in Topic._value2member_map_ and key:
            signals.append((Topic(name), key))
    return origin, signals


class PostgresBus:
    """See the module docstring. Made by a composition root, `start()`ed in its lifespan and `close()`d at its end."""

    def __init__(self, url: str, *, check_interval: float = 5.0, backoff_max: float = _BACKOFF_MAX) -> None:
        self.dsn = asyncpg_dsn(url)
        self.origin = new_id()
        self.subscribers = Subscribers()
        self.check_interval = check_interval
        self.backoff_max = backoff_max
        self._pending: dict[tuple[Topic, str], None] = {}
        self._queued = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the contract ---------------------------------------------------------------------------------------

    def publish(self, topic: Topic, key: str) -> None:
        self.subscribers.deliver(topic, key)
        self._pending[(topic, key)] = None
        self._queued.set()

    def subscribe(self, topic: Topic, callback: Subscriber) -> Callable[[], None]:
        return self.subscribers.add(topic, callback)

    # -- lifetime -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (raises when the database cannot be reached), then keep listening and sending until `close()`."""
        await self._listen()
        self._tasks = [
            asyncio.create_task(self._keep_listening(), name="bus-listen"),
            asyncio.create_task(self._send(), name="bus-send"),
        ]

    async def close(self) -> None:
        """Stop listening and sending; what is still queued is dropped (every wait it could end is bounded)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._drop_listener()

    # -- listening ------------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            connection.add_termination_listener(self._on_terminated)
            await connection.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            await _close(connection)
            raise
        self._lost.clear()
        self._listener = connection

    async def _drop_listener(self) -> None:
        connection, self._listener = self._listener, None
        if connection is not None:
            await _close(connection)

    def _on_terminated(self, connection: Any) -> None:
        if connection is self._listener:
            self._lost.set()

    def _on_notification(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        origin, signals = parse(payload)
        if origin == self.origin:
            return
        for topic, key in signals:
            self.subscribers.deliver(topic, key)

    async def _alive(self) -> bool:
        """False when the listening connection is gone, or does not answer within `check_interval`."""
        connection = self._listener
        if connection is None or connection.is_closed() or self._lost.is_set():
            return False
        try:
            await asyncio.wait_for(connection.fetchval("SELECT 1"), self.check_interval)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        return True

    async def _keep_listening(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.check_interval)
            if await self._alive():
                continue
            log.warning("the bus's listening connection was lost; listening again")
            await self._drop_listener()
            delay = _BACKOFF_FIRST
            while True:
                try:
                    await self._listen()
                    break
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("the bus cannot listen yet (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
            log.info("the bus listens again; every subscriber reads everything again")
            self.subscribers.deliver_everything()

    # -- sending --------------------------------------------------------------------------------------------

    async def _send(self) -> None:
        connection: asyncpg.Connection | None = None
        delay = _BACKOFF_FIRST
        try:
            while True:
                await self._queued.wait()
                self._queued.clear()
                batch, self._pending = self._pending, {}
                try:
                    if connection is None or connection.is_closed():
                        connection = await asyncpg.connect(self.dsn)
                    await connection.execute(
                        "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                        CHANNEL,
                        payloads(self.origin, batch),
                    )
                    delay = _BACKOFF_FIRST
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("the bus could not notify (%s); retrying in %.1f s", exc, delay)
                    batch.update(self._pending)
                    self._pending = batch
                    self._queued.set()
                    if connection is not None:
                        await _close(connection)
                        connection = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
        finally:
            if connection is not None:
                await _close(connection)


async def _close(connection: asyncpg.Connection) -> None:
    """Close gracefully if it answers at once, else drop it."""
    try:
        await asyncio.wait_for(connection.close(), 1.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        connection.terminate()
