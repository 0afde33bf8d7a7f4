"""The containers service below the API: a stale concurrent write is refused, never lost."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm.exc import StaleDataError

from dockyard.db.models import ContainerModel
from dockyard.schemas.containers import UpdateContainerRequest
from dockyard.services import containers
from dockyard.services.keys import Principal
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
            await containers.update(harness.context, first, principal, container_id, request)
    after = await container_row(harness, container_id)
    assert (after.name, after.reason, after.generation) == ("box", "pulling the image", 1)
