"""Several `dockyard server` and `dockyard gateway` child processes on one PostgreSQL database, as an operator runs
them behind a load balancer: each its own port and data directory, all one secret key and admin token, every one
killable with SIGKILL and restartable on its port.

Who holds the control loops' lease is read in one place, `lease_holder`: the `reconcilers` lease row, whose holder
names the process id of the server that holds it."""

from __future__ import annotations

import asyncio
import enum
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import select

from dockyard.db.models import LeaseModel
from dockyard.db.session import Database
from dockyard.reconcilers.supervisor import LEASE_NAME
from tests.conftest import ADMIN_TOKEN
from tests.live import free_port
from tests.servers import ServerProcess

# A start waits this long for the process's first answer: on a loaded machine a restart amid the others has taken
# over a minute (its migrations check included).
START_SECONDS = 240.0
GATEWAY_COMMAND = (sys.executable, "-m", "dockyard", "gateway", "--host", "{host}", "--port", "{port}")


class Kind(enum.StrEnum):
    SERVER = "server"
    GATEWAY = "gateway"


@dataclass
class Member:
    """One process of the cluster. `incarnation` counts its starts, so that what happened to one life of it is
    told apart from the next."""

    name: str
    kind: Kind
    process: ServerProcess
    incarnation: int = 0

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int | None:
        return None if self.process.process is None else self.process.process.pid

    def start(self) -> None:
        self.process.start()
        self.incarnation += 1

    def kill(self) -> None:
        self.process.kill()


def cluster_env(database_url: str, engine_url: str, **settings: str) -> dict[str, str]:
    """What every process of one cluster shares: this environment without any DOCKYARD_ variable, the database,
    the engine, one secret key and admin token, and `settings` (`LEASE_SECONDS="3"` sets DOCKYARD_LEASE_SECONDS)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(
        DOCKYARD_DATABASE_URL=database_url,
        DOCKYARD_ENGINE_URL=engine_url,
        DOCKYARD_SECRET_KEY=Fernet.generate_key().decode(),
        DOCKYARD_ADMIN_TOKEN=ADMIN_TOKEN,
        DOCKYARD_PUBLIC_ADDRESS="127.0.0.1",
    )
    env.update({f"DOCKYARD_{name}": value for name, value in settings.items()})
    return env


@dataclass
class Cluster:
    """`servers` and `gateways`, started in that order (the first server migrates the database alone)."""

    root: Path
    env: dict[str, str]
    servers: list[Member] = field(default_factory=list)
    gateways: list[Member] = field(default_factory=list)

    @property
    def members(self) -> list[Member]:
        return [*self.servers, *self.gateways]

    def add(self, kind: Kind, port: int = 0, **env: str) -> Member:
        """A member not yet started, with a data directory of its own and `env` added to the cluster's."""
        index = len(self.servers if kind is Kind.SERVER else self.gateways) + 1
        name = f"{kind.value}-{index}"
        data = self.root / name
        data.mkdir(parents=True)
        member_env = {**self.env, "DOCKYARD_DATA_DIR": str(data), **env}
        log, port = data / "process.log", port or free_port()
        if kind is Kind.GATEWAY:
            process = ServerProcess(member_env, log, port=port, command=GATEWAY_COMMAND, start_seconds=START_SECONDS)
        else:
            process = ServerProcess(member_env, log, port=port, start_seconds=START_SECONDS)
        member = Member(name, kind, process)
        (self.servers if kind is Kind.SERVER else self.gateways).append(member)
        return member

    def set_env(self, settings: dict[str, str]) -> None:
        """Add `settings` (`PUBLIC_URL` sets DOCKYARD_PUBLIC_URL) to every member's environment, before they
        start: addresses chosen after the members' own ports, such as a load balancer's in front of them."""
        for member in self.members:
            member.process.env.update({f"DOCKYARD_{name}": value for name, value in settings.items()})

    def start(self) -> None:
        for member in self.members:
            member.start()

    def stop(self) -> None:
        for member in self.members:
            member.process.stop()

    def by_pid(self, pid: int) -> Member | None:
        return next((member for member in self.members if member.pid == pid), None)


@contextmanager
def running(cluster: Cluster) -> Iterator[Cluster]:
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass(frozen=True)
class Lease:
    holder: str
    pid: int
    expires_at: datetime


async def lease_holder(database_url: str) -> Lease | None:
    """The control loops' lease as the database has it now; None before any server took it.

    The holder string is `host:pid:nonce` (the supervisor's), so the process holding it is found by its pid."""
    db = Database(database_url)
    try:
        async with db.read() as session:
            row = await session.scalar(select(LeaseModel).where(LeaseModel.name == LEASE_NAME))
    finally:
        await db.dispose()
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return Lease(row.holder, int(row.holder.split(":")[1]), expires)


def leader(cluster: Cluster, database_url: str) -> Member | None:
    """The server holding an unexpired lease now, if any."""
    lease = asyncio.run(lease_holder(database_url))
    if lease is None or lease.expires_at <= datetime.now(UTC):
        return None
    return cluster.by_pid(lease.pid)


def names(members: Sequence[Member]) -> str:
    return ", ".join(member.name for member in members)
