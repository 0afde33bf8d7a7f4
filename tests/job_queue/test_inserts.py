"""The group commit of submitted jobs (job_queue/inserts.py) over a real database (SQLite and PostgreSQL):
concurrent submissions share transactions and are all committed before their callers resume; rows of one check key
share one check per transaction; a refused check refuses the rows of its key only; a batch the database refuses is
retried row by row, so only the offending row fails; and the API's `run` still answers only committed jobs, and
refuses a deleted endpoint's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.base import new_id
from dockyard.db.models import EndpointModel, JobModel
from dockyard.errors import Conflict
from dockyard.job_queue.inserts import Check
from tests.api.test_jobs import include_job_routes, make_endpoint
from tests.conftest import Harness


@pytest.fixture(autouse=True)
def job_routes(harness: Harness) -> None:
    include_job_routes(harness.app)


def row(endpoint_id: str, org_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": new_id(), "endpoint_id": endpoint_id, "org_id": org_id, "input": "{}", **fields}


async def stored(harness: Harness, ids: list[str]) -> set[str]:
    async with harness.context.db.read() as session:
        return set(await session.scalars(select(JobModel.id).where(JobModel.id.in_(ids))))


@pytest.fixture
async def endpoint(harness: Harness) -> tuple[str, str]:
    endpoint_id = await make_endpoint(harness.client)
    async with harness.context.db.read() as session:
        found = await session.get(EndpointModel, endpoint_id)
        assert found is not None
        return endpoint_id, found.org_id


async def test_concurrent_rows_are_committed_in_fewer_transactions_than_rows(
    harness: Harness, endpoint: tuple[str, str]
) -> None:
    endpoint_id, org_id = endpoint
    checks = 0
    transactions: set[int] = set()

    async def check(session: AsyncSession) -> str:
        nonlocal checks
        checks += 1
        transactions.add(id(session))
        return "checked"

    rows = [row(endpoint_id, org_id) for _ in range(50)]
    results = await asyncio.gather(*(harness.context.job_inserts.insert(r, check, r["id"]) for r in rows))
    assert results == ["checked"] * 50
    assert checks == 50  # a key of its own per row: each row was checked
    assert len(transactions) < 50  # rows that arrived together shared a transaction
    assert await stored(harness, [r["id"] for r in rows]) == {r["id"] for r in rows}


async def test_rows_with_one_check_key_share_one_check_per_transaction(
    harness: Harness, endpoint: tuple[str, str]
) -> None:
    endpoint_id, org_id = endpoint
    checked_in: list[int] = []

    async def check(session: AsyncSession) -> int:
        checked_in.append(id(session))
        return len(checked_in)

    rows = [row(endpoint_id, org_id) for _ in range(50)]
    key = (org_id, endpoint_id)
    results = await asyncio.gather(*(harness.context.job_inserts.insert(r, check, key) for r in rows))
    assert len(checked_in) == len(set(checked_in)) < 50  # once per transaction, and fewer transactions than rows
    assert sorted(set(results)) == list(range(1, len(checked_in) + 1))  # each row got its own batch's answer
    assert await stored(harness, [r["id"] for r in rows]) == {r["id"] for r in rows}


async def test_a_refusal_is_every_row_of_its_check_key(harness: Harness, endpoint: tuple[str, str]) -> None:
    endpoint_id, org_id = endpoint

    async def check(session: AsyncSession) -> None:
        raise Conflict("this endpoint takes no jobs")

    async def accept(session: AsyncSession) -> None:
        return None

    refused = [row(endpoint_id, org_id) for _ in range(5)]
    accepted = row(endpoint_id, org_id)
    outcomes = await asyncio.gather(
        *(harness.context.job_inserts.insert(r, check, "closed") for r in refused),
        harness.context.job_inserts.insert(accepted, accept, "open"),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, Conflict) for outcome in outcomes[:5])
    assert outcomes[5] is None
    assert await stored(harness, [r["id"] for r in [*refused, accepted]]) == {accepted["id"]}


async def test_a_refused_check_refuses_its_own_row_only(harness: Harness, endpoint: tuple[str, str]) -> None:
    endpoint_id, org_id = endpoint
    refused = row(endpoint_id, org_id)

    def check_for(candidate: dict[str, Any]) -> Check:
        async def check(session: AsyncSession) -> None:
            if candidate is refused:
                raise Conflict("not this one")

        return check

    rows = [row(endpoint_id, org_id), refused, row(endpoint_id, org_id)]
    outcomes = await asyncio.gather(
        *(harness.context.job_inserts.insert(r, check_for(r), r["id"]) for r in rows), return_exceptions=True
    )
    assert isinstance(outcomes[1], Conflict)
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert await stored(harness, [r["id"] for r in rows]) == {rows[0]["id"], rows[2]["id"]}


async def test_a_row_the_database_refuses_fails_alone(harness: Harness, endpoint: tuple[str, str]) -> None:
    endpoint_id, org_id = endpoint

    async def check(session: AsyncSession) -> None:
        return None

    # No such endpoint: the foreign key refuses this row, and with it the batch it arrived in.
    orphan = row("no-such-endpoint", org_id)
    rows = [row(endpoint_id, org_id), orphan, row(endpoint_id, org_id)]
    outcomes = await asyncio.gather(
        *(harness.context.job_inserts.insert(r, check, org_id) for r in rows), return_exceptions=True
    )
    assert isinstance(outcomes[1], IntegrityError)
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert await stored(harness, [r["id"] for r in rows]) == {rows[0]["id"], rows[2]["id"]}


async def test_run_answers_committed_jobs_and_refuses_a_deleted_endpoint(harness: Harness) -> None:
    endpoint_id = await make_endpoint(harness.client)
    answers = await asyncio.gather(
        *(harness.client.post(f"/v1/{endpoint_id}/run", json={"input": {"n": n}}) for n in range(40))
    )
    assert [a.status_code for a in answers] == [200] * 40
    ids = [a.json()["id"] for a in answers]
    assert await stored(harness, ids) == set(ids)
    async with harness.context.db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(JobModel).where(JobModel.endpoint_id == endpoint_id)
        )
    assert count == 40

    assert (await harness.client.delete(f"/gpus/v2/endpoints/{endpoint_id}")).status_code == 200
    refused = await harness.client.post(f"/v1/{endpoint_id}/run", json={"input": {}})
    assert refused.status_code in (404, 409), refused.text
