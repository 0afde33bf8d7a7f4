"""The reconciler core on its own: a row's outcome is written with its event or not at all, and never over a newer
version; a pass's steps run at most `CONCURRENCY` at once and one that raises stops no other; observing lists every
runtime once and marks the unreachable; an orphan goes once seen for the grace, unless adopted."""

from __future__ import annotations

import asyncio

from dockyard.reconcilers.core import (
    CONCURRENCY,
    Delete,
    EventTarget,
    Orphans,
    RowWriter,
    Steps,
    Update,
    observe,
)
from dockyard.runtimes.base import RunSpec, RuntimeUnavailable
from dockyard.services.runspec import KIND_CONTAINER
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import BUSYBOX, event_types, make_containers, make_template, must_row, row_of


async def test_a_row_writer_writes_with_its_event_and_never_over_a_newer_version(harness: Harness) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    row, stale = await must_row(harness, container_id), await must_row(harness, container_id)
    target = EventTarget(row.org_id, KIND_CONTAINER, row.id)
    writer = RowWriter(harness.context.db, row, target, "container")
    before = await event_types(harness, container_id)

    assert await writer.apply(Update({"reason": "tested"}, ("Tested", "tested")))
    assert await writer.apply(Update({"reason": "tested"}, ("Tested", "again")))  # nothing differs: nothing written
    stored = await must_row(harness, container_id)
    assert (stored.reason, stored.version, writer.version) == ("tested", stale.version + 1, stale.version + 1)
    assert await event_types(harness, container_id) == [*before, "Tested"]

    late = RowWriter(harness.context.db, stale, target, "container")
    assert not await late.apply(Update({"reason": "stale"}, ("Stale", "stale")))
    assert not await late.apply(Delete(("Deleted", "stale")))
    assert (await must_row(harness, container_id)).reason == "tested"
    assert await event_types(harness, container_id) == [*before, "Tested"]

    assert await writer.apply(Delete(("Deleted", "gone")))
    assert await row_of(harness, container_id) is None
    assert await event_types(harness, container_id) == [*before, "Tested", "Deleted"]


async def test_steps_run_at_most_concurrency_at_once_and_one_that_raises_stops_no_other() -> None:
    running = peak = 0

    async def step(number: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        if number == 0:
            raise RuntimeUnavailable("gone")
        if number == 1:
            raise ValueError("broken")
        return number

    steps = Steps()
    results = await asyncio.gather(*(steps.run(step(n), lambda: -1, "step %s", n) for n in range(3 * CONCURRENCY)))
    assert results == [-1, -1, *range(2, 3 * CONCURRENCY)]
    assert peak == CONCURRENCY


async def test_orphans_go_once_seen_for_the_grace_unless_adopted() -> None:
    up, down = FakeRuntime(), FakeRuntime()
    down.available = False
    for resource_id in ("kept", "lost"):
        labels = {"dockyard.kind": "worker", "dockyard.id": resource_id, "dockyard.org": "org"}
        await up.create(RunSpec(name=f"dy-{resource_id}", image=BUSYBOX, labels=labels))
    observation = await observe({"up": up, "down": down})
    assert observation.unreachable == {"down": "fake runtime is down"}
    orphans = observation.objects("worker")
    assert sorted(orphans) == ["kept", "lost"]
    assert observation.objects("container") == {}

    async def adopt(resource_id: str, _: object) -> bool:
        return resource_id == "kept"

    sweeper = Orphans("worker")
    runtimes = {"up": up, "down": down}
    await sweeper.sweep(orphans, observation, runtimes, 60, adopt)  # first seen: within the grace
    assert sorted(obj.name for obj in up.objects.values()) == ["dy-kept", "dy-lost"]
    await sweeper.sweep(orphans, observation, runtimes, 0, adopt)
    assert [obj.name for obj in up.objects.values()] == ["dy-kept"]
