"""The moving parts of the chaos test (tests/test_chaos.py): the clients that load a cluster while its processes
are killed, and the ledger that says afterwards which failures a kill explains.

A client sends each request to the next process in round-robin order that is up, as a load balancer with a
health check would: a process that is down is skipped and the skip counted, never sent to. Every request is in
the ledger's in-flight set of the process it went to from before it is sent until it is answered; a kill takes
the dead process's set at the moment of the SIGKILL. A failed request is explained when it was in the set that
the kill of its process's life took; any other failure is the system's."""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import ppio_gpus
import runpod
from ppio_gpus.client import Job as PpioJob
from runpod.endpoint.runner import Job as RunpodJob

from tests.cluster import Member


@dataclass(frozen=True)
class Sent:
    """One request: its number, its kind (`sync`, `submit`), the process it went to and that process's life."""

    number: int
    kind: str
    member: str
    incarnation: int


@dataclass(frozen=True)
class Failure:
    sent: Sent
    what: str  # the exception's class, or the status code and the answer's start


@dataclass
class Kill:
    at: float  # seconds since the chaos began
    member: str
    incarnation: int
    in_flight: dict[int, str]  # the requests it held when it died: number -> kind
    restart_seconds: float = 0.0  # from the kill to the new life answering /healthz
    restart_failed: str = ""  # why the process did not start again


@dataclass
class Ledger:
    """What was sent where, what failed, and what each kill took down with it."""

    members: Sequence[Member]
    lock: threading.Lock = field(default_factory=threading.Lock)
    down: set[str] = field(default_factory=set)
    in_flight: dict[str, dict[int, str]] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    answered: int = 0
    routed_around: int = 0
    _numbers: itertools.count[int] = field(default_factory=itertools.count)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, among: Sequence[Member], kind: str) -> tuple[Sent, Member] | None:
        """The next live process of `among` in turn, the request entered in its in-flight set; None, and the
        skip counted, when all of them are down."""
        with self.lock:
            start = next(self._turn)
            for offset in range(len(among)):
                member = among[(start + offset) % len(among)]
                if member.name not in self.down:
                    sent = Sent(next(self._numbers), kind, member.name, member.incarnation)
                    self.in_flight.setdefault(member.name, {})[sent.number] = kind
                    return sent, member
            self.routed_around += 1
            return None

    def done(self, sent: Sent, failure: str | None) -> None:
        with self.lock:
            self.in_flight[sent.member].pop(sent.number, None)
            if failure is None:
                self.answered += 1
            else:
                self.failures.append(Failure(sent, failure))

    def kill(self, member: Member, started: float) -> Kill:
        """SIGKILL `member`, its in-flight set taken at that moment; it stays down until `restart`."""
        with self.lock:
            self.down.add(member.name)
            kill = Kill(
                time.monotonic() - started, member.name, member.incarnation, dict(self.in_flight.get(member.name, {}))
            )
            member.kill()
            self.kills.append(kill)
        return kill

    def restart(self, member: Member, kill: Kill) -> None:
        """Start `member` again on its port; it is sent requests once it answers."""
        began = time.monotonic()
        try:
            member.start()
        except AssertionError as failed:  # reported with the kill; the process stays out of the rotation
            kill.restart_failed = str(failed)[:2000]
            return
        with self.lock:
            kill.restart_seconds = time.monotonic() - began
            self.down.discard(member.name)

    def of(self, kind: str) -> list[Failure]:
        return [failure for failure in self.failures if failure.sent.kind == kind]

    def unexplained(self, kind: str) -> list[Failure]:
        """Failures of `kind` that no kill explains: the request was not held by its process when it died."""
        held = {(kill.member, kill.incarnation): kill.in_flight for kill in self.kills}
        return [
            failure
            for failure in self.of(kind)
            if failure.sent.number not in held.get((failure.sent.member, failure.sent.incarnation), {})
        ]

    def per_kill(self, kind: str) -> list[tuple[Kill, int, int]]:
        """Each kill with the number of requests of `kind` it held, and how many of those failed."""
        failed = {(f.sent.member, f.sent.incarnation, f.sent.number) for f in self.of(kind)}
        counts = []
        for kill in self.kills:
            held = [number for number, held_kind in kill.in_flight.items() if held_kind == kind]
            lost = sum((kill.member, kill.incarnation, number) in failed for number in held)
            counts.append((kill, len(held), lost))
        return counts


def sync_client(ledger: Ledger, among: Sequence[Member], endpoint_id: str, key: str, stop: threading.Event) -> None:
    """Send echo requests to `endpoint_id` round-robin over `among` until `stop`; each body is checked in the
    answer."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=60) as client:
        while not stop.is_set():
            picked = ledger.send(among, "sync")
            if picked is None:
                time.sleep(0.05)
                continue
            sent, member = picked
            body = f"request {sent.number}".encode()
            failure: str | None = None
            try:
                answer = client.post(f"{member.url}/{endpoint_id}/echo", content=body)
                if answer.status_code != 200:
                    failure = f"{answer.status_code} {answer.text[:120]}"
                elif answer.json()["body"] != body.decode():
                    failure = f"wrong body {answer.text[:120]}"
            except httpx.HTTPError as error:
                failure = type(error).__name__
            ledger.done(sent, failure)


def job_input(sdk: str, n: int) -> dict[str, Any]:
    """Job `n`'s input, with a checksum of its own so that an output is matched to its input."""
    return {"n": n, "sdk": sdk, "check": hashlib.sha256(f"{sdk}:{n}".encode()).hexdigest()[:16]}


@dataclass
class Submitted:
    """The jobs a client was answered an id for, by number; the submissions that failed, and the job ids of the
    numbers accepted more than once (a client's repeat of a submission it saw fail, that had been done)."""

    ids: dict[int, str] = field(default_factory=dict)
    failed: list[Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _sdk_endpoint(sdk: str, endpoint_id: str, key: str, url: str) -> Callable[[dict[str, Any]], str]:
    """A submission through `sdk`'s own client pointed at the server at `url`: returns the job's id."""
    if sdk == "ppio":
        ppio = ppio_gpus.Endpoint(endpoint_id, api_key=key, endpoint_url_base=f"{url}/v1")
        return lambda request: str(ppio.run(request).job_id)
    endpoint = runpod.Endpoint(endpoint_id, api_key=key)
    endpoint.rp_client.endpoint_url_base = f"{url}/v2"
    return lambda request: str(endpoint.run(request).job_id)


def submitter(
    ledger: Ledger,
    servers: Sequence[Member],
    sdk: str,
    endpoint_id: str,
    key: str,
    numbers: Sequence[int],
    submitted: Submitted,
    pace: Callable[[int], None],
) -> None:
    """Submit job `n` for each of `numbers` through `sdk`'s client, round-robin over the live servers; a
    submission that fails is counted and made again on the next server until one is answered."""
    clients = {member.name: _sdk_endpoint(sdk, endpoint_id, key, member.url) for member in servers}
    for n in numbers:
        pace(n)
        while True:
            picked = ledger.send(servers, "submit")
            if picked is None:
                time.sleep(0.05)
                continue
            sent, member = picked
            try:
                job_id = clients[member.name](job_input(sdk, n))
            except Exception as error:  # whatever the SDK raises for a submission that was not answered
                ledger.done(sent, type(error).__name__)
                with submitted.lock:
                    submitted.failed.append(Failure(sent, type(error).__name__))
                continue
            ledger.done(sent, None)
            with submitted.lock:
                submitted.ids[n] = job_id
            break


def read_job(sdk: str, endpoint_id: str, job_id: str, key: str, url: str) -> dict[str, Any]:
    """The job as `sdk`'s client reads it from the server at `url`."""
    if sdk == "ppio":
        client = ppio_gpus.Endpoint(endpoint_id, api_key=key, endpoint_url_base=f"{url}/v1")._client
        state: dict[str, Any] = PpioJob(endpoint_id, job_id, client)._fetch_job()
        return state
    endpoint = runpod.Endpoint(endpoint_id, api_key=key)
    endpoint.rp_client.endpoint_url_base = f"{url}/v2"
    state = RunpodJob(endpoint_id, job_id, endpoint.rp_client)._fetch_job()
    return state


def killer(ledger: Ledger, members: Sequence[Member], every: float, kills: int, seed: int) -> None:
    """Every `every` seconds, `kills` times, SIGKILL one process of `members` that is up, chosen at random (from
    `seed`), and start it again beside the next kills; returns once every one is back."""
    chooser = random.Random(seed)
    started = time.monotonic()
    restarts = []
    for index in range(1, kills + 1):
        time.sleep(max(0.0, started + index * every - time.monotonic()))
        with ledger.lock:
            up = [member for member in members if member.name not in ledger.down]
        if not up:
            continue
        member = chooser.choice(up)
        kill = ledger.kill(member, started)
        restart = threading.Thread(target=ledger.restart, args=(member, kill), name=f"restart {member.name}")
        restart.start()
        restarts.append(restart)
    for restart in restarts:
        restart.join()
