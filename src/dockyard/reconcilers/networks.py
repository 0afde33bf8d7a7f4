"""The organizations' networks on every runtime, made right from a pass's observation (the containers loop's last
step before its gauges; see reconcilers/containers.py).

Every listed object of an organization that exists, of any kind (containers and endpoint workers) and in any state,
that is on another network than its organization's (`runspec.org_network`), as one made before organizations had
networks of their own is on the engine's default network, is moved onto its organization's network and off every
other, live (`Runtime.move_to_network`: it keeps running and its published ports), with a `NetworkMoved` event on
the container or the worker's endpoint; level-triggered, so one moved back behind Dockyard's back is moved again.
Then an organization's network on an IDC is removed once nothing of that organization needs it there: no listed
object, and no row that may run again (a container in any state, an endpoint even at zero workers). Each network
holds a subnet of the engine's address pools, which are finite (Docker's defaults hold about 30 bridge networks), so
one goes with its organization's last row there; it stays while rows remain, because making it again (and on
Podman its keeper) is most of a scale from zero's container start (bench/RESULTS.md, Cold start). An object created
on it since the listing keeps it, as the runtime never removes a network an object is on, and a create that comes
after the removal makes it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from dockyard.db.session import Database
from dockyard.reconcilers.core import CONCURRENCY, EventTarget, Observation
from dockyard.runtimes.base import LABEL_KIND, LABEL_ORG, Runtime, RuntimeFailure, RuntimeObject, RuntimeUnavailable
from dockyard.services.runspec import KIND_CONTAINER, org_network
from dockyard.services.worker_runspec import KIND_WORKER, LABEL_ENDPOINT
from dockyard.services.worker_webhooks import KIND_ENDPOINT

log = logging.getLogger(__name__)


async def converge_networks(
    db: Database,
    runtimes: Mapping[str, Runtime],
    observation: Observation,
    org_ids: set[str],
    removed: set[str],
    homes: set[tuple[str, str]],
) -> None:
    """Move the objects `observation` lists off their organization's network onto it (but those `removed` this pass,
    and those of organizations not among `org_ids`), then remove the networks that neither a listed object nor an
    organization's rows need: `homes` holds (IDC, organization) for each organization with rows on that IDC."""
    await _move_to_own_networks(db, runtimes, observation, org_ids, removed)
    await _remove_unused_networks(runtimes, observation, homes)


async def _move_to_own_networks(
    db: Database, runtimes: Mapping[str, Runtime], observation: Observation, org_ids: set[str], removed: set[str]
) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def move(idc_id: str, obj: RuntimeObject) -> None:
        org = obj.labels.get(LABEL_ORG, "")
        network = org_network(org)
        async with limit:
            try:
                await runtimes[idc_id].move_to_network(obj.id, network, org)
            except (RuntimeFailure, RuntimeUnavailable) as exc:
                log.warning("object %s not moved onto network %s this pass: %s", obj.name, network, exc)
                return
        left = ", ".join(name for name in obj.networks if name != network) or "no other"
        message = (
            f"moved onto its organization's network {network} and off {left}, without a restart: it was made "
            "before each organization had a network of its own"
        )
        log.info("object %s %s", obj.name, message)
        target = EventTarget(org, KIND_CONTAINER, obj.resource_id)
        if obj.labels.get(LABEL_KIND) == KIND_WORKER:
            target = EventTarget(org, KIND_ENDPOINT, obj.labels.get(LABEL_ENDPOINT, ""), f"worker {obj.resource_id}: ")
        async with db.write() as session:
            target.record(session, "NetworkMoved", message)

    await asyncio.gather(
        *(
            move(idc_id, obj)
            for idc_id, listed in observation.listed.items()
            for obj in listed
            if obj.networks
            and obj.networks != (org_network(obj.labels.get(LABEL_ORG, "")),)
            and obj.labels.get(LABEL_ORG) in org_ids
            and obj.id not in removed
        )
    )


async def _remove_unused_networks(
    runtimes: Mapping[str, Runtime], observation: Observation, homes: set[tuple[str, str]]
) -> None:
    """Remove each listed IDC's networks that no organization with an object or a row there joins."""
    for idc_id, listed in observation.listed.items():
        runtime = runtimes[idc_id]
        keep = {org_network(obj.labels.get(LABEL_ORG, "")) for obj in listed}
        keep.update(org_network(org_id) for home_idc, org_id in homes if home_idc == idc_id)
        try:
            for name in await runtime.list_networks():
                if name not in keep:
                    await _remove_network(runtime, name)
        except (RuntimeUnavailable, RuntimeFailure) as exc:
            log.info("networks of IDC %s not pruned this pass: %s", idc_id, exc)


async def _remove_network(runtime: Runtime, name: str) -> None:
    try:
        await runtime.remove_network(name)
    except RuntimeFailure as exc:  # an object joined it since the listing
        log.debug("network %s kept: %s", name, exc.reason)
    else:
        log.info("removed network %s: nothing of its organization is left there", name)
