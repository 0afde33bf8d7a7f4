"""The host's image cache on real Podman against a real private registry: an image one organization pulled with
its registry credentials runs for it, and for nobody whose credentials the registry refuses, although the image
is in the cache; nor under another spelling the engine would resolve to it (a short name)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from dockyard.core.status import ContainerStatus
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.engine import EngineRuntime
from tests.conftest import Harness
from tests.engine import Registry, remove_networks
from tests.engine_harness import database_url  # noqa: F401
from tests.reconcilers.conftest import make_containers, make_template, must_row
from tests.reconcilers.test_containers_engine import objects_of, status_is, until

pytestmark = pytest.mark.engine

REFUSED = "needs registry credentials that can pull it"


@pytest.fixture
def registry_client(private_registry: Registry) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=private_registry.engine_url)
    yield client
    client.close()


@pytest.fixture
async def fake_runtime(
    private_registry: Registry, registry_client: docker.DockerClient
) -> AsyncIterator[EngineRuntime]:
    """The harness's runtime: the engine that reaches the private registry (tests/engine_harness.py's pattern)."""
    runtime = EngineRuntime(private_registry.engine_url, installation_id="")
    yield runtime
    if runtime.installation_id:
        label = f"dockyard.installation={runtime.installation_id}"
        for container in registry_client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
        remove_networks(runtime.installation_id)  # and their keepers: the organizations' networks outlive a test


@pytest.fixture
def private_image(private_registry: Registry, busybox_image: str) -> Iterator[str]:
    """busybox pushed to the private registry under a repository of this test's own; only a pull tags it here."""
    image = private_registry.push(busybox_image, f"org-a-{uuid.uuid4().hex[:12]}/web:1")
    yield image
    private_registry.forget(image)


async def test_an_image_pulled_with_credentials_runs_only_for_credentials_its_registry_accepts(
    harness: Harness,
    private_registry: Registry,
    private_image: str,
    registry_client: docker.DockerClient,
) -> None:
    reconciler = ContainerReconciler(harness.context)
    credential = {"username": private_registry.username, "secret": private_registry.password}
    template_a = await make_template(harness.client, image=private_image, credential=credential)
    (owned,) = await make_containers(harness.client, template_a)
    await until(reconciler, lambda: status_is(harness, owned, ContainerStatus.RUNNING), "org A's container running")
    assert registry_client.images.get(private_image).id  # in the host's cache now

    org_b = await harness.new_client("umbrella")
    wrong = {"username": private_registry.username, "secret": "not-the-password"}
    # Without credentials, with wrong ones, and by a short name Podman resolves to the cached image by itself.
    short_name = private_image.split("/", 1)[1]
    attempts = {
        "none": await make_template(org_b, image=private_image),
        "wrong": await make_template(org_b, image=private_image, credential=wrong),
        "short name": await make_template(org_b, image=short_name),
    }
    containers = {what: (await make_containers(org_b, template))[0] for what, template in attempts.items()}
    for what, container_id in containers.items():
        await until(
            reconciler, lambda c=container_id: status_is(harness, c, ContainerStatus.ERROR), f"org B ({what}) refused"
        )
        row = await must_row(harness, container_id)
        assert (row.runtime_id, row.started_at) == ("", None), what
        assert objects_of(registry_client, container_id) == [], what
        if what == "short name":
            assert row.reason.startswith(f"image {short_name} not found"), row.reason
        else:
            assert row.reason.startswith(f"image {private_image} {REFUSED}: "), row.reason
            assert "unauthorized" in row.reason, row.reason
            assert private_registry.password not in row.reason
    assert registry_client.images.get(private_image).id  # refused although the image is in the cache

    # The owner's next container re-pulls with its own credentials and runs.
    (again,) = await make_containers(harness.client, template_a)
    await until(reconciler, lambda: status_is(harness, again, ContainerStatus.RUNNING), "org A's second container")
