"""The containers service below the API: a stale concurrent write is refused, never lost."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from dockyard.core.callers import Principal
from dockyard.core.status import DesiredState
from dockyard.db.models import ContainerModel
from dockyard.schemas.containers import UpdateContainerRequest
from dockyard.services import containers
from tests.api.test_containers import container_row, create_one, make_template
from tests.conftest import Harness


async def test_update_over_a_concurrent_write_raises_stale(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    row = await container_row(harness, container_id)
    principal = Principal(org_id=row.org_id, member_id=row.member_id, key_id="test")
    db = harness.context.db
    async with db.write_session() as first:
        # Held in a variable: the session's identity map is weak, and this stale copy must stay in it.
        loaded = await containers.get_row(first, principal, container_id)
        await first.commit()  # the read is over; the loaded row stays at the version it read
        async with db.write() as second:  # the reconciler records an observation in between
            await second.execute(
                update(ContainerModel)
                .where(ContainerModel.id == container_id)
                .values(version=ContainerModel.version + 1, reason="pulling the image")
            )
        assert loaded.version == 1  # while the database holds version 2
        request = UpdateContainerRequest(name="lost-update", template_id=template_id)
        with pytest.raises(StaleDataError):
            await containers.update(first, principal, container_id, request, context=harness.context)
    after = await container_row(harness, container_id)
    assert (after.name, after.reason, after.generation) == ("box", "pulling the image", 1)


async def _reconciler_writes_after_the_first_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make a concurrent writer bump the row's version right after the service's first load of it, as a reconciler
    recording an observation does when a DELETE lands during its pass; the ids loaded, in order. The write goes
    through the request's own connection, below the ORM (on SQLite no other writer can come between a write
    session's read and its commit), so the ORM's flush finds the version moved exactly as it would."""
    loads: list[str] = []
    real = containers.get_row

    async def racing(session: AsyncSession, principal: Principal, container_id: str) -> ContainerModel:
        row = await real(session, principal, container_id)
        loads.append(container_id)
        if len(loads) == 1:
            await session.execute(
                update(ContainerModel)
                .where(ContainerModel.id == container_id)
                .values(version=ContainerModel.version + 1)
                .execution_options(synchronize_session=False)
            )
        return row

    monkeypatch.setattr(containers, "get_row", racing)
    return loads


@pytest.mark.parametrize("action", ["delete", "stop", "restart"])
async def test_a_delete_or_an_action_over_a_reconciler_write_is_not_a_conflict(
    harness: Harness, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """The user's DELETE, stop or restart does not depend on the version it read: a reconciler's write between the
    read and the commit makes the service read again and apply it, not answer 409 (seen under load as a DELETE
    answered "the object changed while this request was updating it")."""
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    loads = await _reconciler_writes_after_the_first_load(monkeypatch)
    url = f"/api/v1/containers/{container_id}"
    answer = await (client.delete(url) if action == "delete" else client.post(f"{url}/{action}"))
    assert answer.status_code == 200, answer.text
    assert loads == [container_id, container_id]  # read again after the stale write
    row = await container_row(harness, container_id)
    expected = {
        "delete": (DesiredState.DELETED, 0),
        "stop": (DesiredState.STOPPED, 0),
        "restart": (DesiredState.RUNNING, 1),
    }
    assert (row.desired, row.restart_generation) == expected[action]
