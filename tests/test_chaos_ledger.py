"""The chaos test's ledger (tests/chaos.py) on its own: a failure is explained only when the killed process held
that request at the moment it died, a process that is down is routed around, and each kill counts what it held."""

from __future__ import annotations

import time
from pathlib import Path

from tests.chaos import Ledger
from tests.cluster import Kind, Member
from tests.servers import ServerProcess


class StubProcess(ServerProcess):
    """A process that starts and dies at once, so that the ledger's bookkeeping is all that runs."""

    def start(self) -> None:
        self.started = getattr(self, "started", 0) + 1

    def kill(self) -> None:
        self.killed = getattr(self, "killed", 0) + 1


def members(tmp_path: Path) -> list[Member]:
    return [
        Member(name, Kind.SERVER, StubProcess({}, tmp_path / f"{name}.log", port=port), incarnation=1)
        for name, port in (("a", 1), ("b", 2))
    ]


def test_only_what_the_killed_process_held_is_explained(tmp_path: Path) -> None:
    a, b = members(tmp_path)
    ledger = Ledger([a, b])
    held = ledger.send([a], "sync")
    answered = ledger.send([a], "sync")
    assert held is not None
    assert answered is not None
    ledger.done(answered[0], None)
    kill = ledger.kill(a, time.monotonic())
    assert ledger.send([a], "sync") is None  # down until started again
    ledger.restart(a, kill)
    ledger.done(held[0], "RemoteProtocolError")
    after = ledger.send([a], "sync")  # the new life of `a`
    assert after is not None
    assert after[0].incarnation == 2
    ledger.done(after[0], "503 no worker")
    assert [failure.sent for failure in ledger.unexplained("sync")] == [after[0]]
    ((counted, count, failed),) = ledger.per_kill("sync")
    assert (counted.member, counted.incarnation, count, failed) == ("a", 1, 1, 1)
    assert ledger.per_kill("submit")[0][1:] == (0, 0)


def test_a_process_that_is_down_is_routed_around(tmp_path: Path) -> None:
    a, b = members(tmp_path)
    ledger = Ledger([a, b])
    ledger.down.add("a")
    picked = [ledger.send([a, b], "sync") for _ in range(4)]
    assert {sent.member for sent, _ in filter(None, picked)} == {"b"}
    ledger.down.add("b")
    assert ledger.send([a, b], "sync") is None
    assert ledger.routed_around == 1
