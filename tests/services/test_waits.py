"""`waits.blocking`, the one reason an endpoint's queue waits, from made-up facts: each code, the order in which
they win, and the queue that moves (no reason); and the per-endpoint snapshot the job status view reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from dockyard.config import Settings
from dockyard.core.status import EndpointStatus, EndpointType, WorkerStatus
from dockyard.reconcilers.endpoints_workers import never_called_in
from dockyard.schemas.waits import WaitCode
from dockyard.services import waits
from dockyard.services.waits import QueueFacts, Snapshot, WorkerFacts, blocking, estimated_start
from tests.api.test_jobs import make_endpoint
from tests.conftest import Harness

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
URL = "http://host.containers.internal:8000"


def worker(status: WorkerStatus, reason: str = "", *, ago: float = 5.0, **kw: object) -> WorkerFacts:
    values: dict[str, object] = {
        "id": f"w-{status.value}",
        "status": status,
        "reason": reason,
        "current": True,
        "drain": False,
        "called_in": False,
        "since": NOW - timedelta(seconds=ago),
        "created_at": NOW - timedelta(seconds=ago + 1),
        **kw,
    }
    return WorkerFacts(**values)  # type: ignore[arg-type]


def facts(*workers: WorkerFacts, **kw: object) -> QueueFacts:
    values: dict[str, object] = {
        "endpoint_id": "ep1",
        "type": EndpointType.ASYNC,
        "status": EndpointStatus.RUNNING,
        "reason": "",
        "failed_since": None,
        "max_replicas": 2,
        "desired_replicas": 1,
        "gpus_per_worker": 0,
        "queued": 3,
        "running": 0,
        "workers": workers,
        "held": None,
        "webhook_url": URL,
        "call_in_seconds": 30.0,
        **kw,
    }
    return QueueFacts(**values)  # type: ignore[arg-type]


def code_of(found: QueueFacts) -> WaitCode | None:
    reason = blocking(found, NOW)
    return reason.code if reason is not None else None


def test_a_failed_endpoint_says_its_reason_and_since_when_first() -> None:
    failed_at = NOW - timedelta(minutes=1)
    found = blocking(
        facts(
            worker(WorkerStatus.FAILED, "exited with code 1"),
            status=EndpointStatus.FAILED,
            reason="3 workers in a row failed before becoming ready; the last: exited with code 1",
            failed_since=failed_at,
        ),
        NOW,
    )
    assert found is not None
    assert found.code == WaitCode.ENDPOINT_FAILED
    assert "exited with code 1" in found.message
    assert "dockyard endpoints update ep1" in found.message
    assert found.since == int(failed_at.timestamp())


def test_an_async_worker_that_never_called_in_names_the_url_it_was_given() -> None:
    silent = worker(WorkerStatus.STARTING, "started; waiting for its first webhook call", ago=31)
    found = blocking(facts(silent), NOW)
    assert found is not None
    assert found.code == WaitCode.WORKERS_NOT_CALLING_IN
    assert URL in found.message
    assert "DOCKYARD_WORKER_WEBHOOK_URL" in found.message
    # Within the bound it is only starting; a sync worker is never judged by its webhooks.
    assert code_of(facts(replace(silent, since=NOW - timedelta(seconds=29)))) == WaitCode.WORKER_STARTING
    assert code_of(facts(silent, type=EndpointType.SYNC)) == WaitCode.WORKER_STARTING


def test_workers_failed_for_never_calling_in_keep_that_code_with_the_reconcilers_reason() -> None:
    """The reconciler fails and replaces a silent worker at the bound; its jobs keep saying why, not just that
    workers fail."""
    reason = never_called_in(Settings(host="127.0.0.1", port=8080, worker_call_in_timeout=60), "ep1")
    failed = worker(WorkerStatus.FAILED, reason, ago=5)
    found = blocking(facts(failed, worker(WorkerStatus.STARTING, ago=1)), NOW)
    assert found is not None
    assert found.code == WaitCode.WORKERS_NOT_CALLING_IN
    assert "1 worker(s) failed for never calling the webhooks" in found.message
    assert "dockyard server --host 0.0.0.0" in found.message


def test_workers_failing_before_ready_give_the_last_error() -> None:
    first = worker(WorkerStatus.FAILED, "image not found", ago=20)
    last = replace(worker(WorkerStatus.FAILED, "exited with code 3", ago=2), id="w-last")
    backoff = worker(WorkerStatus.PENDING, "waiting 4 s before starting: 2 worker(s) in a row failed")
    found = blocking(facts(first, last, backoff), NOW)
    assert found is not None
    assert found.code == WaitCode.WORKERS_FAILING
    assert "2 worker(s) failed" in found.message
    assert "exited with code 3" in found.message
    assert "dockyard endpoints logs ep1 w-last" in found.message
    assert found.since == int(first.since.timestamp())
    # Failing workers explain a silent one too (it may be the next to fail); old failures explain nothing.
    silent = worker(WorkerStatus.STARTING, ago=60)
    assert code_of(facts(last, silent)) == WaitCode.WORKERS_FAILING
    assert code_of(facts(replace(last, since=NOW - timedelta(hours=1)), silent)) == WaitCode.WORKERS_NOT_CALLING_IN
    # Failures of an older template do not count against the current one.
    assert code_of(facts(replace(first, current=False), backoff)) == WaitCode.WORKER_STARTING


@pytest.mark.parametrize(("gpus", "code"), [(1, WaitCode.NO_FREE_GPU), (0, WaitCode.NO_ROOM)])
def test_a_worker_no_node_can_place(gpus: int, code: WaitCode) -> None:
    placing = worker(WorkerStatus.PENDING, "waiting to be placed: no node has 1 free GPU of model X; wait")
    found = blocking(facts(placing, gpus_per_worker=gpus), NOW)
    assert found is not None
    assert found.code == code
    assert "no node has 1 free GPU of model X" in found.message


def test_a_scale_up_held_by_the_quota_with_no_worker_coming() -> None:
    held_at = NOW - timedelta(seconds=10)
    held = ("0 workers, 1 wanted: workers quota 0 reached", held_at)
    found = blocking(facts(held=held, desired_replicas=0), NOW)
    assert found is not None
    assert found.code == WaitCode.QUOTA_REACHED
    assert "workers quota 0 reached" in found.message
    assert "dockyard admin quotas" in found.message
    assert found.since == int(held_at.timestamp())
    # A worker on its way is the better answer: the quota held only the ones beyond it.
    assert code_of(facts(worker(WorkerStatus.STARTING), held=held)) == WaitCode.WORKER_STARTING


def test_max_replicas_when_every_worker_it_may_have_is_busy() -> None:
    busy = [replace(worker(WorkerStatus.READY), id=f"w{n}") for n in range(2)]
    found = blocking(facts(*busy, running=2), NOW)
    assert found is not None
    assert found.code == WaitCode.MAX_REPLICAS
    assert "--max-replicas" in found.message
    # A ready worker with room, or room for another worker: the queue moves.
    assert blocking(facts(*busy, running=1), NOW) is None
    assert blocking(facts(busy[0], running=1), NOW) is None
    zero = blocking(facts(max_replicas=0, desired_replicas=0), NOW)
    assert zero is not None
    assert zero.code == WaitCode.MAX_REPLICAS
    assert "max_replicas is 0" in zero.message


def test_scaling_from_zero_only_when_something_waits() -> None:
    found = blocking(facts(desired_replicas=0), NOW)
    assert found is not None
    assert found.code == WaitCode.SCALING_FROM_ZERO
    assert blocking(facts(desired_replicas=0, queued=0), NOW) is None  # idle at zero: nothing waits
    # Gone and draining workers are no help.
    gone = [worker(WorkerStatus.EXITED), worker(WorkerStatus.READY, drain=True)]
    assert code_of(facts(*gone)) == WaitCode.SCALING_FROM_ZERO


def test_the_estimate_follows_the_throughput_and_not_a_blocked_queue() -> None:
    moving = Snapshot(None, rate=0.5, at=NOW)  # one job taken every two seconds
    assert estimated_start(moving, 1) == int(NOW.timestamp()) + 1
    assert estimated_start(moving, 5) == int(NOW.timestamp()) + 8 + 1
    assert estimated_start(Snapshot(None, rate=0.0, at=NOW), 1) is None
    failed = blocking(facts(status=EndpointStatus.FAILED, reason="x"), NOW)
    assert estimated_start(Snapshot(failed, rate=0.5, at=NOW), 1) is None
    turn = blocking(facts(*[worker(WorkerStatus.READY)], max_replicas=1, running=1), NOW)
    assert turn is not None
    assert turn.code == WaitCode.MAX_REPLICAS
    assert estimated_start(Snapshot(turn, rate=0.5, at=NOW), 3) == int(NOW.timestamp()) + 4 + 1


async def test_the_snapshot_is_reused_for_a_second_and_expired_ones_are_dropped(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    endpoint_id = await make_endpoint(client)
    first = await waits.snapshot(harness.context, endpoint_id)
    assert first.blocking is None  # an endpoint at zero with nothing queued: nothing waits
    assert await waits.snapshot(harness.context, endpoint_id) is first  # within its second: not read again
    entries = harness.context.waits.entries
    entries.update({f"gone-{n}": (0.0, first) for n in range(1024)})  # expired long ago
    entries[endpoint_id] = (0.0, first)
    assert await waits.snapshot(harness.context, endpoint_id) is not first
    assert set(entries) == {endpoint_id}
