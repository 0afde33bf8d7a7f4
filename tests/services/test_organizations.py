"""services/organizations.py on a real database: the key `dockyard admin keys revoke KEY` picks."""

from __future__ import annotations

import pytest

from dockyard.db.models import ApiKeyModel
from dockyard.errors import BadRequest, Conflict, NotFound
from dockyard.services import keys, organizations
from tests.conftest import Harness


async def test_revoke_picks_one_key_by_its_id_a_unique_beginning_of_it_or_its_first_characters(
    harness: Harness,
) -> None:
    db = harness.context.db
    async with db.write_session() as session:
        org = await keys.get_or_create_org(session, "ops")
        member = await keys.get_or_create_member(session, org, "default")
        for key_id, prefix in (("abcd-0001", "dy_aaaaaaa"), ("abcd-0002", "dy_bbbbbbb"), ("abcd-0002-x", "dy_ccccccc")):
            session.add(
                ApiKeyModel(id=key_id, org_id=org.id, member_id=member.id, name="", prefix=prefix, key_hash=key_id)
            )
        await session.commit()

    async def revoke(key: str) -> str:
        async with db.write_session() as session:
            return (await organizations.revoke_key(session, key)).id

    with pytest.raises(BadRequest, match="too short"):
        await revoke("abc")
    with pytest.raises(Conflict, match="abcd matches 3 keys; give more of the id"):
        await revoke("abcd")
    assert await revoke("abcd-0002") == "abcd-0002"  # the whole id, although another id begins with it
    assert await revoke("dy_ccccccc") == "abcd-0002-x"
    assert await revoke("abcd") == "abcd-0001"  # the one left not revoked
    with pytest.raises(NotFound, match="`dockyard admin keys list` shows every key"):
        await revoke("abcd")
