"""The pull policy a create gets: once a repository was pulled with credentials in an IDC, every create of it there,
under any tag or digest, pulls with the requester's own credentials; public and local images keep the cache (the
real engine and registry: tests/reconcilers/test_private_images_engine.py)."""

from __future__ import annotations

from sqlalchemy import select

from dockyard.db.models import PrivateImageModel
from dockyard.runtimes.base import PullPolicy, RegistryAuth, RunSpec
from dockyard.services.private_images import with_pull_policy
from tests.conftest import Harness

CREDENTIALS = RegistryAuth("robot", "s3cret")


async def policy(harness: Harness, image: str, auth: RegistryAuth | None = None, idc_id: str = "local") -> PullPolicy:
    spec = RunSpec(name="x", image=image, labels={}, registry_auth=auth)
    return (await with_pull_policy(harness.context.db, idc_id, spec)).pull_policy


async def test_a_repository_pulled_with_credentials_is_pulled_again_by_every_create(harness: Harness) -> None:
    assert await policy(harness, "registry.example/team/app:1") == PullPolicy.IF_NOT_PRESENT
    assert await policy(harness, "localhost/app:1", CREDENTIALS) == PullPolicy.IF_NOT_PRESENT  # never pulled

    assert await policy(harness, "registry.example/team/app:1", CREDENTIALS) == PullPolicy.ALWAYS
    spellings = ("registry.example/team/app:1", "registry.example/team/app:2", "Registry.Example/team/app@sha256:0")
    for spelling in spellings:
        assert await policy(harness, spelling) == PullPolicy.ALWAYS, spelling
    assert await policy(harness, "registry.example/team/other:1") == PullPolicy.IF_NOT_PRESENT
    assert await policy(harness, "registry.example/team/app:1", idc_id="elsewhere") == PullPolicy.IF_NOT_PRESENT

    async with harness.context.db.read() as session:
        recorded = [(row.idc_id, row.repository) for row in await session.scalars(select(PrivateImageModel))]
    assert recorded == [("local", "registry.example/team/app")]
