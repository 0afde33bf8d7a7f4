"""PPIO serverless endpoints: the API records desired state and answers at once; the endpoint reconciler and
the autoscaler make the runtime match (docs/architecture.md). Nothing here calls a runtime.

An endpoint's worker template is one `WorkloadSpec` (principle 4) plus its product and region. A PUT that
changes the template bumps `generation`, which is what tells the reconciler to roll the workers; a PUT that
only changes scaling bounds, timeouts or the policy leaves the workers as they are.
"""

from __future__ import annotations

import base64
import binascii
import json
import shlex
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.bus import Topic
from dockyard.core.callers import Principal
from dockyard.core.loops import LoopName
from dockyard.core.planes import EndpointConfig
from dockyard.core.status import (
    DesiredState,
    EndpointStatus,
    EndpointType,
    PolicyType,
    ProductCategory,
    WorkerStatus,
)
from dockyard.core.workload import HealthCheck, PortSpec, VolumeSpec, WorkloadSpec
from dockyard.db.base import retry_stale
from dockyard.db.models import EndpointModel, IdcModel, ProductModel, WorkerModel
from dockyard.errors import Conflict, InvalidField, NotFound
from dockyard.json_depth import too_deep
from dockyard.schemas.endpoints import (
    CreateEndpointRequest,
    Endpoint,
    EndpointEnv,
    EndpointList,
    HealthCheckIn,
    HealthCheckOut,
    Policy,
    StatusInfo,
    UpdateEndpointRequest,
    Volume,
    VolumeIn,
    Worker,
    WorkerConfig,
    WorkerConfigOut,
)
from dockyard.secrets import SecretBox
from dockyard.services import idempotency, network_storages, products, quotas, registry_auths, waits
from dockyard.services.tenancy import owned_row
from dockyard.services.worker_runspec import health_check as effective_health_check
from dockyard.services.workloads import decrypt_envs, encrypt_envs, masked_envs, split_command

CREATE_OPERATION = "POST /gpus/v2/endpoints"
LISTING = "GET /gpus/v2/endpoints"
DEPLOYING_REASON = "accepted; waiting for its workers to be placed and started"
UPDATING_REASON = "the worker template changed; rolling the workers"
DELETING_REASON = "deletion requested; draining, then removing the workers"
DEFAULT_POLICY = Policy(type=PolicyType.CONCURRENCY, value=1)


def route_config(row: EndpointModel, settings: Settings) -> EndpointConfig:
    """What the gateway needs to serve the endpoint, as the planes' channel carries it (core/planes.py)."""
    config = row.worker_config
    return EndpointConfig(
        endpoint_id=row.id,
        org_id=row.org_id,
        type=row.type,
        request_timeout=float(config["request_timeout"]),
        max_concurrent_per_worker=int(config["max_concurrent_per_worker"]),
        queue_limit=settings.gateway_queue_limit,
        status=row.status,
        reason=row.reason,
    )


async def get_row(session: AsyncSession, principal: Principal, endpoint_id: str) -> EndpointModel:
    """The endpoint if it is this organization's; another organization's is as missing as a wrong id."""
    return await owned_row(session, principal, EndpointModel, endpoint_id, "endpoint", LISTING)


async def _region(session: AsyncSession, region_id: str) -> IdcModel:
    idc = await session.get(IdcModel, region_id)
    if idc is None:
        raise InvalidField("region_id", f"no region {region_id}; GET /gpus/v2/regions lists them")
    return idc


async def _product_gpus(session: AsyncSession, region_id: str, product_id: str) -> int:
    """The GPUs per worker of `product_id`, if it is a serverless product orderable in `region_id` now."""
    listing = f"GET /gpus/v2/products?category=serverless&region_ids={region_id} lists them"
    offer = await products.offer(session, product_id)
    if offer is None or offer.product.idc_id != region_id:
        raise InvalidField("product_id", f"no product {product_id} in region {region_id}; {listing}")
    if offer.product.category != ProductCategory.SERVERLESS:
        raise InvalidField("product_id", f"product {product_id} is for containers; pick a serverless one ({listing})")
    if not offer.orderable:
        raise InvalidField(
            "product_id", f"product {product_id} cannot be ordered in region {region_id} now ({offer.spec}); {listing}"
        )
    return offer.product.gpu_count


def _worker_config(config: WorkerConfig, product_gpus: int) -> dict[str, Any]:
    """The stored worker_config, `gpu_num` resolved against the product; bounds checked across fields."""
    if config.min_replicas > config.max_replicas:
        raise InvalidField(
            "worker_config.min_replicas",
            f"{config.min_replicas} is above worker_config.max_replicas ({config.max_replicas})",
        )
    gpu_num = product_gpus if config.gpu_num is None else config.gpu_num
    if gpu_num > product_gpus:
        raise InvalidField(
            "worker_config.gpu_num", f"the product gives {product_gpus} GPU(s) per worker; send at most that"
        )
    return {**config.model_dump(mode="json"), "gpu_num": gpu_num}


async def _registry_auth(session: AsyncSession, principal: Principal, auth_id: str) -> str | None:
    if not auth_id:
        return None
    try:
        return (await registry_auths.get_row(session, principal, auth_id)).id
    except NotFound:
        raise InvalidField(
            "registry_auth_id", f"registry auth {auth_id} not found; POST /gpus/v2/registry-auths creates one"
        ) from None


async def _volumes(
    session: AsyncSession, principal: Principal, region_id: str, volumes: Sequence[VolumeIn]
) -> list[VolumeSpec]:
    requested = [(volume.id, volume.mount_point) for volume in volumes]
    return await network_storages.volume_specs(
        session, principal, region_id, requested, field="volumes", path_field="mount_point", place="region"
    )


def _ports(ports: Sequence[int]) -> list[PortSpec]:
    if len(set(ports)) != len(ports):
        raise InvalidField("ports", "a port is given twice")
    return [PortSpec(container_port=port) for port in ports]


def _health_check(health_check: HealthCheckIn | None, ports: Sequence[PortSpec]) -> HealthCheck:
    """The given health check, its port or all of it defaulting to `/health` on the first port (the WorkloadSpec's
    default port when none)."""
    default = HealthCheck(port=ports[0].container_port) if ports else HealthCheck()
    if health_check is None:
        return default
    return HealthCheck(path=health_check.path, port=default.port if health_check.port is None else health_check.port)


def _template(spec: WorkloadSpec, box: SecretBox, product_id: str, region_id: str) -> dict[str, Any]:
    """What a worker runs, with env values decrypted: ciphertexts differ for equal values, plaintexts do not."""
    view = spec.model_dump(mode="json", exclude={"envs"})
    return {**view, "envs": decrypt_envs(spec.envs, box=box), "product_id": product_id, "region_id": region_id}


async def _add_row(
    context: ServerContext, session: AsyncSession, principal: Principal, request: CreateEndpointRequest
) -> dict[str, str]:
    await _region(session, request.region_id)
    product_gpus = await _product_gpus(session, request.region_id, request.product_id)
    worker_config = _worker_config(request.worker_config, product_gpus)
    ports = _ports(request.ports)
    spec = WorkloadSpec(
        image=request.image,
        registry_auth_id=await _registry_auth(session, principal, request.registry_auth_id),
        entrypoint=split_command(request.entrypoint, "entrypoint"),
        command=split_command(request.command),
        envs=encrypt_envs([(env.key, env.value) for env in request.envs], box=context.box),
        ports=ports,
        volumes=await _volumes(session, principal, request.region_id, request.volumes),
        gpu_count=worker_config["gpu_num"],
        rootfs_size_gb=worker_config["rootfs_size_gb"],
        min_cuda_version=worker_config["min_cuda_version"] or None,
        health_check=_health_check(request.health_check, ports),
    )
    row = EndpointModel(
        org_id=principal.org_id,
        member_id=principal.member_id,
        type=request.type,
        name=request.name,
        app_name=request.app_name,
        product_id=request.product_id,
        idc_id=request.region_id,
        spec=spec.model_dump(mode="json"),
        worker_config=worker_config,
        policy=(request.policy or DEFAULT_POLICY).model_dump(mode="json"),
        desired=DesiredState.RUNNING,
        desired_replicas=worker_config["min_replicas"],
        status=EndpointStatus.DEPLOYING,
        reason=DEPLOYING_REASON,
    )
    product = await session.get(ProductModel, request.product_id)
    await quotas.admit(session, principal.org_id, quotas.endpoint_amounts(row, product), settings=context.settings)
    session.add(row)
    await session.flush()
    return {"id": row.id}


async def create(
    session: AsyncSession,
    principal: Principal,
    request: CreateEndpointRequest,
    idempotency_key: str | None = None,
    *,
    context: ServerContext,
) -> idempotency.Answer:
    """Record the endpoint (`deploying`, desired `running`, `min_replicas` wanted) and answer `{"id"}`; once
    per Idempotency-Key."""
    body = request.model_dump(mode="json")
    answer = await idempotency.once(
        session,
        principal.org_id,
        idempotency_key,
        CREATE_OPERATION,
        body,
        lambda: _add_row(context, session, principal, request),
    )
    await session.commit()
    if (row := await session.get(EndpointModel, answer.body["id"])) is not None:
        context.planes.endpoint_changed(route_config(row, context.settings))
        context.bus.publish(Topic.ROUTES, row.id)
    context.wake(LoopName.ENDPOINTS)
    return answer


def _status(status: str, reason: str, failed: bool) -> StatusInfo:
    return StatusInfo(status=status, error=reason if failed else "", message=reason)


def endpoint_url(row: EndpointModel, settings: Settings) -> str:
    """Where the endpoint is called. A sync one at the gateway: `{url}/{path}` reaches a worker. An async one at its
    job API on the server (which serves it, not the stand-alone gateways): `{url}/run`, `{url}/status/{job}`, ...,
    under `/v1`, the base of PPIO's own client (ppio-gpus), as the endpoint API is PPIO's; the runpod client's
    `/v2/{id}` serves the same."""
    if row.type == EndpointType.ASYNC:
        return f"{settings.resolved_public_url}/v1/{row.id}"
    return f"{settings.resolved_gateway_url}/{row.id}"


def to_wire(row: EndpointModel, workers: Sequence[WorkerModel], context: ServerContext) -> Endpoint:
    spec = WorkloadSpec.model_validate(row.spec)
    health = effective_health_check(spec)
    public = context.settings.resolved_public_url
    return Endpoint(
        id=row.id,
        type=row.type,
        name=row.name,
        app_name=row.app_name,
        status=_status(row.status.value, row.reason, row.status == EndpointStatus.FAILED),
        url=endpoint_url(row, context.settings),
        product_id=row.product_id,
        worker_config=WorkerConfigOut.model_validate(row.worker_config),
        policy=Policy.model_validate(row.policy),
        image=spec.image,
        registry_auth_id=spec.registry_auth_id or "",
        entrypoint=shlex.join(spec.entrypoint),
        command=shlex.join(spec.command),
        volumes=[Volume(id=v.storage_id, type="network", mount_point=v.mount_path) for v in spec.volumes],
        envs=[EndpointEnv(key=name, value=value) for name, value in masked_envs(spec.envs, box=context.box)],
        ports=[port.container_port for port in spec.ports],
        workers=[
            Worker(
                id=worker.id,
                status=_status(worker.status.value, worker.reason, worker.status == WorkerStatus.FAILED),
                log=f"{public}/gpus/v2/endpoints/{row.id}/workers/{worker.id}/logs",
                health=worker.health,
                drain=worker.drain,
            )
            for worker in workers
        ],
        health_check=HealthCheckOut(path=health.path, port=health.port),
        region_id=row.idc_id,
        member_id=row.member_id,
        owner_id=row.org_id,
        created_at=row.created_at,
    )


async def _workers(session: AsyncSession, endpoint_ids: Sequence[str]) -> dict[str, list[WorkerModel]]:
    """Each endpoint's workers, oldest first, in one query."""
    result: dict[str, list[WorkerModel]] = {endpoint_id: [] for endpoint_id in endpoint_ids}
    if endpoint_ids:
        rows = await session.scalars(
            select(WorkerModel)
            .where(WorkerModel.endpoint_id.in_(endpoint_ids))
            .order_by(WorkerModel.created_at, WorkerModel.id)
        )
        for worker in rows:
            result[worker.endpoint_id].append(worker)
    return result


async def get(session: AsyncSession, principal: Principal, endpoint_id: str, *, context: ServerContext) -> Endpoint:
    """The endpoint, its workers, and what its work waits for (`blocking`, services/waits.py)."""
    row = await get_row(session, principal, endpoint_id)
    endpoint = to_wire(row, (await _workers(session, [row.id]))[row.id], context)
    endpoint.blocking = await waits.explain(session, row, settings=context.settings)
    return endpoint


def encode_cursor(created_at: datetime, endpoint_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), endpoint_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor resumes after; anything not made by `encode_cursor` is an InvalidField."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if too_deep(raw):
            raise ValueError("nested too deep")
        created_at, endpoint_id = json.loads(raw)
        return datetime.fromisoformat(created_at), str(endpoint_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidField(
            "cursor", "not a cursor this API answered; send next_cursor from the previous page"
        ) from None


async def list_page(
    session: AsyncSession,
    principal: Principal,
    *,
    limit: int,
    cursor: str | None = None,
    keyword: str | None = None,
    member_ids: str | None = None,
    context: ServerContext,
) -> EndpointList:
    """The organization's endpoints newest first, `limit` at a time, resuming strictly after `cursor`: keyset
    paging on (created_at, id), so rows created meanwhile never shift a page into duplicates or gaps."""
    conditions: list[Any] = [EndpointModel.org_id == principal.org_id]
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        conditions.append(
            or_(
                EndpointModel.created_at < created_at,
                and_(EndpointModel.created_at == created_at, EndpointModel.id < last_id),
            )
        )
    if keyword:
        conditions.append(func.lower(EndpointModel.name).contains(keyword.lower(), autoescape=True))
    members = [part.strip() for part in (member_ids or "").split(",") if part.strip()]
    if members:
        conditions.append(EndpointModel.member_id.in_(members))
    rows = list(
        await session.scalars(
            select(EndpointModel)
            .where(*conditions)
            .order_by(EndpointModel.created_at.desc(), EndpointModel.id.desc())
            .limit(limit + 1)
        )
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    workers = await _workers(session, [row.id for row in rows])
    return EndpointList(
        data=[to_wire(row, workers[row.id], context) for row in rows],
        next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if has_more else "",
        has_more=has_more,
    )


async def update(
    session: AsyncSession,
    principal: Principal,
    endpoint_id: str,
    request: UpdateEndpointRequest,
    *,
    context: ServerContext,
) -> None:
    """Apply the sent fields over the current ones. A changed worker template (image, registry auth, entrypoint,
    command, envs, ports, volumes, GPUs, rootfs, CUDA, health check, product, region) bumps `generation` and
    marks the endpoint `updating`; anything else is recorded without touching the workers."""
    row = await get_row(session, principal, endpoint_id)
    if row.desired == DesiredState.DELETED:
        raise Conflict(f"endpoint {row.id} is being deleted and cannot be updated; create a new endpoint instead")
    current = WorkloadSpec.model_validate(row.spec)
    region_id = request.region_id or row.idc_id
    product_id = request.product_id or row.product_id
    if request.region_id is not None:
        await _region(session, region_id)
    product_gpus = await _product_gpus(session, region_id, product_id)
    config = WorkerConfig.model_validate(row.worker_config)
    if request.worker_config is not None:  # merged onto the current one: what it leaves out is kept
        sent = request.worker_config.model_dump(include=request.worker_config.model_fields_set)
        config = WorkerConfig.model_validate({**row.worker_config, **sent})
    worker_config = _worker_config(config, product_gpus)
    await _admit_update(context, session, row, product_id, worker_config)
    ports = current.ports if request.ports is None else _ports(request.ports)
    if request.volumes is not None:
        volumes = await _volumes(session, principal, region_id, request.volumes)
    elif region_id != row.idc_id and current.volumes:
        raise InvalidField("region_id", "the endpoint's volumes are in another region; send volumes of the new one")
    else:
        volumes = current.volumes
    registry_auth_id = current.registry_auth_id
    if request.registry_auth_id is not None:
        registry_auth_id = await _registry_auth(session, principal, request.registry_auth_id)
    envs = current.envs
    if request.envs is not None:
        envs = encrypt_envs([(env.key, env.value) for env in request.envs], current.envs, box=context.box)
    health_check = current.health_check
    exposed = {port.container_port for port in ports}
    if request.health_check is not None:
        health_check = _health_check(request.health_check, ports)
    elif health_check and exposed and health_check.port not in exposed:
        # A health check on a port the new port list no longer has would never pass: it moves to the first one.
        health_check = health_check.model_copy(update={"port": ports[0].container_port})
    spec = current.model_copy(
        update={
            "image": current.image if request.image is None else request.image,
            "registry_auth_id": registry_auth_id,
            "entrypoint": current.entrypoint
            if request.entrypoint is None
            else split_command(request.entrypoint, "entrypoint"),
            "command": current.command if request.command is None else split_command(request.command),
            "envs": envs,
            "ports": ports,
            "volumes": volumes,
            "gpu_count": worker_config["gpu_num"],
            "rootfs_size_gb": worker_config["rootfs_size_gb"],
            "min_cuda_version": worker_config["min_cuda_version"] or None,
            "health_check": health_check,
        }
    )
    if _template(spec, context.box, product_id, region_id) != _template(
        current, context.box, row.product_id, row.idc_id
    ):
        row.generation += 1
        row.status = EndpointStatus.UPDATING
        row.reason = UPDATING_REASON
    row.name = row.name if request.name is None else request.name
    row.product_id = product_id
    row.idc_id = region_id
    row.spec = spec.model_dump(mode="json")
    row.worker_config = worker_config
    if request.policy is not None:
        row.policy = request.policy.model_dump(mode="json")
    row.desired_replicas = min(max(row.desired_replicas, worker_config["min_replicas"]), worker_config["max_replicas"])
    await session.commit()
    context.planes.endpoint_changed(route_config(row, context.settings))
    context.bus.publish(Topic.ROUTES, row.id)
    context.wake(LoopName.ENDPOINTS)


async def _admit_update(
    context: ServerContext, session: AsyncSession, row: EndpointModel, product_id: str, worker_config: dict[str, Any]
) -> None:
    """Refuse a PUT whose workers (their count as wanted after it, their GPUs, CPU and memory) would take the
    organization past a quota; checked before the row changes, so the organization's lock comes first, as for the
    autoscaler."""
    product = await session.get(ProductModel, product_id)
    wanted = quotas.wanted_workers(row.desired_replicas, worker_config)
    cpu, memory_mb = (product.cpu, product.memory_mb) if product is not None else (0.0, 0)
    before = quotas.endpoint_amounts(row, await session.get(ProductModel, row.product_id))
    asked = quotas.worker_amounts(worker_config, cpu, memory_mb, wanted)
    await quotas.admit(session, row.org_id, asked, before=before, except_endpoint=row.id, settings=context.settings)


async def delete(session: AsyncSession, principal: Principal, endpoint_id: str, *, context: ServerContext) -> None:
    """Mark it for teardown (`deleting`, desired `deleted`); the reconciler drains and removes its workers, then
    drops the row. Deleting an endpoint already being deleted changes nothing."""

    async def change() -> None:
        row = await get_row(session, principal, endpoint_id)
        if row.desired != DesiredState.DELETED:
            row.desired = DesiredState.DELETED
            row.status = EndpointStatus.DELETING
            row.reason = DELETING_REASON
            await session.commit()

    await retry_stale(session, change)
    context.bus.publish(Topic.ROUTES, endpoint_id)
    context.wake(LoopName.ENDPOINTS)
