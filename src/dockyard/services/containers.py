"""GMI containers: the API records desired state and answers at once; the containers reconciler makes the
runtime match (docs/architecture.md). Nothing here calls a runtime.

A container's spec is its template's spec overlaid with the request: a non-empty `command`, `args` or
`ports` replaces the template's, `envs` merge by name with the request winning; the product gives the GPU
count and the storages the volumes. The spec is copied at creation, so a later change to the template
never changes a container until it is updated.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.context import ServerContext
from dockyard.core.callers import Principal
from dockyard.core.loops import LoopName
from dockyard.core.status import ContainerStatus, DesiredState, IPStatus, ProductCategory
from dockyard.core.workload import EnvVar, PortSpec, VolumeSpec, WorkloadSpec
from dockyard.db.base import new_id, retry_stale
from dockyard.db.models import ContainerModel, IdcModel, ProductModel
from dockyard.errors import Conflict, InvalidField, NotFound
from dockyard.schemas.common import Page
from dockyard.schemas.containers import (
    Container,
    ContainerAction,
    CreateContainerRequest,
    IpAddress,
    Storage,
    StorageIn,
    UpdateContainerRequest,
)
from dockyard.schemas.gmi import Port
from dockyard.services import idempotency, network_storages, quotas, ssh_keys, templates
from dockyard.services.idcs import get_usable, gpus_by_idc
from dockyard.services.products import matching_gpus
from dockyard.services.tenancy import owned_row
from dockyard.services.workloads import encrypt_envs, gmi_envs_in, gmi_envs_out, gmi_ports_in, split_command

CREATE_OPERATION = "POST /api/v1/containers"
CREATING_REASON = "accepted; waiting to be placed and started"
RECREATING_REASON = "recreating with the new configuration; local data is lost, storages are kept"
TERMINATING_REASON = "deletion requested; stopping and removing the container"


def etag(version: int) -> str:
    return f'"{version}"'


def check_if_match(row: ContainerModel, if_match: str | None) -> None:
    """`If-Match: "<version>"` (as GET's ETag gives it) must name the row's current version; else 409."""
    if if_match is None:
        return
    value = if_match.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()):  # isdigit alone takes "²", which int() refuses
        raise InvalidField("If-Match", 'expected the ETag a GET answered, like "3"')
    if int(value) != row.version:
        raise Conflict(
            f"container {row.id} is at version {row.version}, not {value}; GET it again and resend your change"
        )


def _refuse_terminating(row: ContainerModel, action: str) -> None:
    if row.desired == DesiredState.DELETED or row.status == ContainerStatus.TERMINATING:
        raise Conflict(f"container {row.id} is being deleted and cannot be {action}; create a new container instead")


async def get_row(session: AsyncSession, principal: Principal, container_id: str) -> ContainerModel:
    """The container if it is this organization's; another organization's is as missing as a wrong id."""
    return await owned_row(session, principal, ContainerModel, container_id, "container", "GET /api/v1/containers")


async def _template_spec(session: AsyncSession, principal: Principal, template_id: str) -> WorkloadSpec:
    try:
        row = await templates.get_row(session, principal, template_id)
    except NotFound:
        raise InvalidField(
            "templateId", f"template {template_id} not found in your organization; POST /api/v1/templates creates one"
        ) from None
    return WorkloadSpec.model_validate(row.spec)


async def _product(session: AsyncSession, idc: IdcModel, product_id: str) -> ProductModel:
    """The product, if it is sold in `idc` for containers and the IDC has the GPUs it needs."""
    listing = f"GET /api/v1/containers/products?idc={idc.id} lists them"
    row = await session.get(ProductModel, product_id)
    if row is None or row.idc_id != idc.id:
        raise InvalidField("product", f"no product {product_id} in IDC {idc.id}; {listing}")
    if not row.valid:
        raise InvalidField("product", f"product {product_id} is no longer sold; pick another ({listing})")
    if row.category != ProductCategory.INSTANCE:
        raise InvalidField("product", f"product {product_id} is for serverless endpoints; pick an instance product")
    if row.gpu_count <= 0:
        return row
    per_node: dict[str, int] = {}
    for gpu in matching_gpus(row, (await gpus_by_idc(session, idc.id)).get(idc.id, [])):
        per_node[gpu.node_id] = per_node.get(gpu.node_id, 0) + 1
    most = max(per_node.values(), default=0)
    if most < row.gpu_count:
        cpu = await session.scalar(
            select(ProductModel.id)
            .where(
                ProductModel.idc_id == idc.id,
                ProductModel.gpu_count == 0,
                ProductModel.valid.is_(True),
                ProductModel.category == ProductCategory.INSTANCE,
            )
            .order_by(ProductModel.price_per_hour, ProductModel.id)
            .limit(1)
        )
        plural = "GPU" if row.gpu_count == 1 else "GPUs"
        has = "none" if most == 0 else f"at most {most} on one node"
        pick = f"pick a CPU product ({cpu})" if cpu else "pick another product"
        raise InvalidField(
            "product",
            f"product {product_id} needs {row.gpu_count} \N{MULTIPLICATION SIGN} {row.gpu_model} {plural} "
            f"but IDC {idc.id} has {has}; "
            f"{pick} or declare a simulated inventory (DOCKYARD_SIMULATED_GPUS)",
        )
    return row


async def _volumes(
    session: AsyncSession, principal: Principal, idc_id: str, storages: Sequence[StorageIn]
) -> list[VolumeSpec]:
    requested = [(storage.id, storage.container_path) for storage in storages]
    return await network_storages.volume_specs(
        session, principal, idc_id, requested, field="storages", path_field="containerPath", place="IDC"
    )


async def _check_host_ports(
    session: AsyncSession, idc_id: str, ports: Sequence[PortSpec], *, count: int, exclude: str, from_request: bool
) -> None:
    """A fixed host port is one container's: refused when count > 1 or when another live container of the IDC
    (one not being deleted) asks for it too."""
    fixed = [(index, port) for index, port in enumerate(ports) if port.host_port is not None]
    if not fixed:
        return

    def field(index: int) -> str:
        return f"ports[{index}].port" if from_request else "templateId"

    if count > 1:
        whose = "" if from_request else "the template's ports fix a host port; "
        raise InvalidField(field(fixed[0][0]), f"{whose}a fixed host port serves one container; omit it when count > 1")
    rows = await session.execute(
        select(ContainerModel.id, ContainerModel.spec).where(
            ContainerModel.idc_id == idc_id,
            ContainerModel.desired != DesiredState.DELETED,
            ContainerModel.id != exclude,
        )
    )
    taken: dict[tuple[int, str], str] = {}
    for container_id, spec in rows:
        for port in (spec or {}).get("ports") or ():
            if port.get("host_port"):
                taken[(int(port["host_port"]), str(port.get("protocol", "TCP")))] = container_id
    seen: set[tuple[int, str]] = set()
    for index, port in fixed:
        key = (int(port.host_port or 0), port.protocol.value)
        if key in seen:
            raise InvalidField(field(index), f"host port {key[0]}/{key[1]} is given twice")
        seen.add(key)
        if holder := taken.get(key):
            raise InvalidField(
                field(index),
                f"host port {key[0]}/{key[1]} is already requested by container {holder} in IDC {idc_id}; "
                "choose another port or omit it to get a free one",
            )


def _merge_envs(base: Sequence[EnvVar], overrides: Sequence[EnvVar]) -> list[EnvVar]:
    merged = {env.name: env for env in base}
    merged.update({env.name: env for env in overrides})
    return list(merged.values())


def _overlay(
    template: WorkloadSpec,
    *,
    command: list[str],
    args: list[str],
    envs: Sequence[EnvVar],
    ports: list[PortSpec],
    volumes: list[VolumeSpec],
    gpu_count: int,
) -> WorkloadSpec:
    return template.model_copy(
        update={
            "command": command or template.command,
            "args": args or template.args,
            "envs": _merge_envs(template.envs, envs),
            "ports": ports or template.ports,
            "volumes": volumes,
            "gpu_count": gpu_count,
        }
    )


async def _add_rows(
    session: AsyncSession, principal: Principal, request: CreateContainerRequest, *, context: ServerContext
) -> list[dict[str, str]]:
    """Validate against the database and add `count` rows (flushed, not committed); answer their ids."""
    suffix = f"-{request.count}" if request.count > 1 else ""
    if len(request.name) + len(suffix) > 255:
        raise InvalidField("name", f"with count {request.count} the name must leave room for the suffix {suffix}")
    idc = await get_usable(session, request.idc)
    product = await _product(session, idc, request.product)
    template = await _template_spec(session, principal, request.template_id)
    await ssh_keys.check_owned(session, principal, request.ssh_key_id_list, "sshKeyIdList")
    ports = gmi_ports_in(request.ports)
    await _check_host_ports(
        session, idc.id, ports or template.ports, count=request.count, exclude="", from_request=bool(ports)
    )
    spec = _overlay(
        template,
        command=split_command(request.command),
        args=list(request.args),
        envs=encrypt_envs(gmi_envs_in(request.envs), template.envs, box=context.box),
        ports=ports,
        volumes=await _volumes(session, principal, idc.id, request.storages),
        gpu_count=product.gpu_count,
    )
    amounts = quotas.container_amounts(product, request.count)
    await quotas.admit(session, principal.org_id, amounts, settings=context.settings)
    stored_spec = spec.model_dump(mode="json")
    ids = [new_id() for _ in range(request.count)]
    for number, container_id in enumerate(ids, start=1):
        session.add(
            ContainerModel(
                id=container_id,
                org_id=principal.org_id,
                member_id=principal.member_id,
                name=f"{request.name}-{number}" if request.count > 1 else request.name,
                idc_id=idc.id,
                product_id=product.id,
                template_id=request.template_id,
                command=shlex.join(spec.command),
                spec=stored_spec,
                ssh_key_ids=list(request.ssh_key_id_list),
                desired=DesiredState.RUNNING,
                status=ContainerStatus.CREATING,
                reason=CREATING_REASON,
            )
        )
    await session.flush()
    return [{"id": container_id} for container_id in ids]


async def create(
    session: AsyncSession,
    principal: Principal,
    request: CreateContainerRequest,
    idempotency_key: str | None = None,
    *,
    context: ServerContext,
) -> idempotency.Answer:
    """Record `count` rows (`creating`, desired `running`) and answer their ids; once per Idempotency-Key."""
    body = request.model_dump(mode="json", by_alias=True)
    answer = await idempotency.once(
        session,
        principal.org_id,
        idempotency_key,
        CREATE_OPERATION,
        body,
        lambda: _add_rows(session, principal, request, context=context),
    )
    await session.commit()
    context.wake(LoopName.CONTAINERS)
    return answer


def _published(row: ContainerModel) -> dict[tuple[int, str], int]:
    """(containerPort, PROTOCOL) -> host port, as the reconciler read it back from the runtime."""
    result: dict[tuple[int, str], int] = {}
    for entry in row.published_ports or ():
        try:
            key = (int(entry["containerPort"]), str(entry.get("protocol", "TCP")).upper())
            result[key] = int(entry["port"])
        except (KeyError, TypeError, ValueError):
            continue  # a malformed entry is no port at all; the GET still answers with the requested one
    return result


def _ip(row: ContainerModel, spec: WorkloadSpec, address: str) -> IpAddress:
    if spec.ports and row.status == ContainerStatus.RUNNING:
        return IpAddress(ip_address=address, status=IPStatus.READY)
    if spec.ports and row.status == ContainerStatus.CREATING:
        return IpAddress(ip_address="", status=IPStatus.PENDING)
    return IpAddress(ip_address="", status=IPStatus.NONE)


def to_wire(row: ContainerModel, context: ServerContext) -> Container:
    spec = WorkloadSpec.model_validate(row.spec)
    published = _published(row)
    ports = [
        Port(
            container_port=port.container_port,
            port=published.get((port.container_port, port.protocol.value.upper()), port.host_port),
            protocol=port.protocol,
        )
        for port in spec.ports
    ]
    ip = _ip(row, spec, context.settings.public_address)
    return Container(
        reason=row.reason,
        status=row.status,
        storages=[Storage(container_path=volume.mount_path, id=volume.storage_id) for volume in spec.volumes],
        idc=row.idc_id,
        product=row.product_id,
        name=row.name,
        template_id=row.template_id,
        created_at=row.created_at,
        id=row.id,
        inbound_i_p=ip,
        modified_at=row.modified_at,
        org_id=row.org_id,
        outbound_i_p=ip,
        public_i_p=ip,
        args=spec.args,
        command=shlex.join(spec.command),
        envs=gmi_envs_out(spec.envs, box=context.box),
        ports=ports,
        ssh_key_id_list=list(row.ssh_key_ids or []),
    )


async def get(
    session: AsyncSession, principal: Principal, container_id: str, *, context: ServerContext
) -> tuple[Container, str]:
    """The container and its ETag."""
    row = await get_row(session, principal, container_id)
    return to_wire(row, context), etag(row.version)


async def list_page(
    session: AsyncSession,
    principal: Principal,
    *,
    page: int,
    page_size: int,
    status: ContainerStatus | None = None,
    name: str | None = None,
    context: ServerContext,
) -> Page[Container]:
    """The organization's containers, newest first (served by the (org_id, created_at) index)."""
    conditions: list[Any] = [ContainerModel.org_id == principal.org_id]
    if status is not None:
        conditions.append(ContainerModel.status == status)
    if name:
        conditions.append(func.lower(ContainerModel.name).contains(name.lower(), autoescape=True))
    total = await session.scalar(select(func.count()).select_from(ContainerModel).where(*conditions)) or 0
    rows = await session.scalars(
        select(ContainerModel)
        .where(*conditions)
        .order_by(ContainerModel.created_at.desc(), ContainerModel.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    items = [to_wire(row, context) for row in rows]
    return Page[Container](items=items, total=total, page=page, page_size=page_size)


async def update(
    session: AsyncSession,
    principal: Principal,
    container_id: str,
    request: UpdateContainerRequest,
    if_match: str | None = None,
    *,
    context: ServerContext,
) -> str:
    """Reconfigure and recreate (a new generation). Omitted optional fields keep the current values."""
    row = await get_row(session, principal, container_id)
    check_if_match(row, if_match)
    _refuse_terminating(row, "updated")
    current = WorkloadSpec.model_validate(row.spec)
    template = await _template_spec(session, principal, request.template_id)
    if request.envs is None:
        envs = list(current.envs)
    else:
        envs = encrypt_envs(gmi_envs_in(request.envs), [*template.envs, *current.envs], box=context.box)
    ports = current.ports if request.ports is None else gmi_ports_in(request.ports)
    await _check_host_ports(
        session, row.idc_id, ports or template.ports, count=1, exclude=row.id, from_request=bool(request.ports)
    )
    volumes = current.volumes
    if request.storages is not None:
        volumes = await _volumes(session, principal, row.idc_id, request.storages)
    spec = _overlay(
        template,
        command=current.command if request.command is None else split_command(request.command),
        args=current.args if request.args is None else list(request.args),
        envs=envs,
        ports=list(ports),
        volumes=volumes,
        gpu_count=current.gpu_count,
    )
    row.name = request.name
    row.template_id = request.template_id
    row.spec = spec.model_dump(mode="json")
    row.command = shlex.join(spec.command)
    row.generation += 1
    row.status = ContainerStatus.CREATING
    row.reason = RECREATING_REASON
    await session.commit()
    context.wake(LoopName.CONTAINERS)
    return row.id


async def delete(session: AsyncSession, principal: Principal, container_id: str, *, context: ServerContext) -> None:
    """Mark it for teardown; the reconciler removes it, releases its GPUs and ports, then drops the row.
    Deleting a container already being deleted changes nothing."""

    async def change() -> None:
        row = await get_row(session, principal, container_id)
        if row.desired != DesiredState.DELETED:
            row.desired = DesiredState.DELETED
            row.status = ContainerStatus.TERMINATING
            row.reason = TERMINATING_REASON
            await session.commit()

    await retry_stale(session, change)
    context.wake(LoopName.CONTAINERS)


async def _act(
    session: AsyncSession,
    principal: Principal,
    container_id: str,
    action: str,
    desired: DesiredState,
    restart: bool = False,
    *,
    context: ServerContext,
) -> ContainerAction:
    """Record `desired` and answer the status the action leads to, with a reason saying it is under way (GET shows
    the status observed meanwhile); a container already there is answered as it is."""

    async def change() -> ContainerModel:
        row = await get_row(session, principal, container_id)
        _refuse_terminating(row, action)
        if row.desired != desired or restart:
            row.desired = desired
            if restart:
                row.restart_generation += 1
            await session.commit()
        return row

    row = await retry_stale(session, change)
    context.wake(LoopName.CONTAINERS)
    target = ContainerStatus.STOPPED if desired == DesiredState.STOPPED else ContainerStatus.RUNNING
    if row.status == target and not restart:
        return ContainerAction(id=row.id, status=target, reason=row.reason)
    verb = {"started": "start", "stopped": "stop", "restarted": "restart"}[action]
    return ContainerAction(id=row.id, status=target, reason=f"{verb} requested; in progress")


async def start(
    session: AsyncSession, principal: Principal, container_id: str, *, context: ServerContext
) -> ContainerAction:
    return await _act(session, principal, container_id, "started", DesiredState.RUNNING, context=context)


async def stop(
    session: AsyncSession, principal: Principal, container_id: str, *, context: ServerContext
) -> ContainerAction:
    return await _act(session, principal, container_id, "stopped", DesiredState.STOPPED, context=context)


async def restart(
    session: AsyncSession, principal: Principal, container_id: str, *, context: ServerContext
) -> ContainerAction:
    """Restart it (starting it if it was stopped): the reconciler restarts once per `restart_generation`."""
    return await _act(
        session, principal, container_id, "restarted", DesiredState.RUNNING, restart=True, context=context
    )
