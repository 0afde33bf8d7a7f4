"""The operator's API, `/admin/v1` (ours): organizations, their keys and quotas, IDCs, products, nodes and GPUs,
and the live processes with the leases they hold."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from dockyard.api.deps import AdminDep, ContextDep, ReadSessionDep, WriteSessionDep
from dockyard.schemas.admin import (
    ApiKey,
    CreatedApiKey,
    CreateIdcRequest,
    CreateKeyRequest,
    CreateOrganizationRequest,
    CreateProductRequest,
    Idc,
    Node,
    NodeEvent,
    Organization,
    Product,
    SetQuotasRequest,
    SimulatedGpusRequest,
    UpdateIdcRequest,
    UpdateProductRequest,
)
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.processes import Process
from dockyard.schemas.quotas import Quotas
from dockyard.services import catalog, inventory, keys, processes, quotas
from dockyard.services import organizations as service

router = APIRouter(prefix="/admin/v1", tags=["admin"], responses=ERROR_RESPONSES)

OrgId = Annotated[str, Path(min_length=1, max_length=64)]
IdcId = Annotated[str, Path(min_length=1, max_length=50)]
ProductId = Annotated[str, Path(min_length=1, max_length=256)]
NodeId = Annotated[str, Path(min_length=1, max_length=255)]


@router.post("/organizations", response_model=Organization, summary="Create an organization")
async def create_organization(body: CreateOrganizationRequest, _: AdminDep, session: WriteSessionDep) -> Organization:
    """Makes an organization with no keys and the installation's default quotas; give it a key with `POST
    /admin/v1/organizations/{org_id}/keys` (`dockyard admin create-key --org NAME`)."""
    return await service.create_org(session, body.name)


@router.get("/organizations", response_model=list[Organization], summary="List organizations")
async def list_organizations(_: AdminDep, session: ReadSessionDep) -> list[Organization]:
    """Every organization, with its id and name."""
    return await service.list_orgs(session)


@router.post("/organizations/{org_id}/keys", response_model=CreatedApiKey, summary="Create an API key")
async def create_api_key(org_id: OrgId, body: CreateKeyRequest, _: AdminDep, session: WriteSessionDep) -> CreatedApiKey:
    """Makes a key for the organization and answers it whole, this once only: only its hash is stored. 404 when the
    organization does not exist."""
    return await service.create_key(session, org_id, body)


@router.get("/organizations/{org_id}/keys", response_model=list[ApiKey], summary="List an organization's keys")
async def list_api_keys(org_id: OrgId, _: AdminDep, session: ReadSessionDep) -> list[ApiKey]:
    """The organization's keys: id, name, prefix (the first characters, to recognise one), admin or not, when made
    and when revoked; never the key itself."""
    return await service.list_keys(session, org_id)


@router.get(
    "/organizations/{org_id}/quotas",
    response_model=Quotas,
    summary="An organization's quotas and what it holds",
    description="Each limit in force (`default`: the installation's `DOCKYARD_QUOTA_*`) and the use against it.",
)
async def get_quotas(org_id: OrgId, context: ContextDep, _: AdminDep, session: ReadSessionDep) -> Quotas:
    return await quotas.get(session, org_id, settings=context.settings)


@router.put(
    "/organizations/{org_id}/quotas",
    response_model=Quotas,
    summary="Set an organization's quotas",
    description="Sets the limits sent; one left out keeps its limit, null returns it to the installation's default. "
    "A limit below what the organization holds refuses new asks; nothing running is stopped.",
)
async def set_quotas(
    org_id: OrgId, body: SetQuotasRequest, context: ContextDep, _: AdminDep, session: WriteSessionDep
) -> Quotas:
    return await quotas.set_limits(session, org_id, body, settings=context.settings)


@router.delete("/keys/{key_id}", response_model=dict[str, str], summary="Revoke an API key")
async def revoke_api_key(
    key_id: Annotated[str, Path(min_length=1, max_length=64)],
    _: AdminDep,
    context: ContextDep,
    session: WriteSessionDep,
) -> dict[str, str]:
    """The key stops authenticating; its organization and everything the organization holds are kept."""
    await keys.revoke_key(context, session, key_id)
    return {}


@router.get("/idcs", response_model=list[Idc], summary="List IDCs")
async def list_idcs(_: AdminDep, session: ReadSessionDep) -> list[Idc]:
    """Every IDC with its runtime, its status and, while its runtime cannot be reached, `runtime_error`: why
    (tenants see only `maintenance`)."""
    return await catalog.list_idcs(session)


@router.post("/idcs", response_model=Idc, summary="Create an IDC bound to a runtime")
async def create_idc(body: CreateIdcRequest, context: ContextDep, _: AdminDep, session: WriteSessionDep) -> Idc:
    """Binds a new IDC to a container runtime (its URL, without a password); tenants can then place containers and
    workers in it."""
    return await catalog.create_idc(session, body, context=context)


@router.patch("/idcs/{idc_id}", response_model=Idc, summary="Rename an IDC or put it in maintenance")
async def update_idc(idc_id: IdcId, body: UpdateIdcRequest, _: AdminDep, session: WriteSessionDep) -> Idc:
    """Changes an IDC's name, or its status between `available` and `maintenance`; in maintenance it takes no new
    containers, and those it runs go on."""
    return await catalog.update_idc(session, idc_id, body)


@router.get("/products", response_model=list[Product], summary="List products")
async def list_products(_: AdminDep, session: ReadSessionDep) -> list[Product]:
    """Every product, instance and serverless, with its GPUs, CPUs, memory and price."""
    return await catalog.list_products(session)


@router.post("/products", response_model=Product, summary="Create a product")
async def create_product(body: CreateProductRequest, _: AdminDep, session: WriteSessionDep) -> Product:
    """Adds a product tenants may run containers or endpoint workers as."""
    return await catalog.create_product(session, body)


@router.get("/products/{product_id}", response_model=Product, summary="Get a product")
async def get_product(product_id: ProductId, _: AdminDep, session: ReadSessionDep) -> Product:
    """One product by id; 404 when there is none."""
    return await catalog.get_product(session, product_id)


@router.put("/products/{product_id}", response_model=Product, summary="Replace a product")
async def update_product(
    product_id: ProductId, body: UpdateProductRequest, _: AdminDep, session: WriteSessionDep
) -> Product:
    """Replaces the product's fields with the body's."""
    return await catalog.update_product(session, product_id, body)


@router.delete("/products/{product_id}", response_model=dict[str, str], summary="Delete a product")
async def delete_product(product_id: ProductId, _: AdminDep, session: WriteSessionDep) -> dict[str, str]:
    """Removes a product; 404 when there is none."""
    await catalog.delete_product(session, product_id)
    return {}


@router.get("/nodes", response_model=list[Node], summary="List nodes and their GPUs")
async def list_nodes(_: AdminDep, session: ReadSessionDep) -> list[Node]:
    """Every node of every IDC: its GPUs (model, memory, UUID, and `allocated_to`, the container holding each),
    driver and CUDA versions, and the CPUs and memory it offers placement."""
    return await inventory.list_nodes(session)


@router.get("/nodes/{node_id}/events", response_model=list[NodeEvent], summary="A node's events")
async def list_node_events(
    node_id: NodeId, _: AdminDep, session: ReadSessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[NodeEvent]:
    """What the GPU health loop saw of the node's GPUs (one turned unhealthy, and why; one answers again), oldest
    first; 404 when there is no such node."""
    return await inventory.node_events(session, node_id, limit)


@router.put(
    "/nodes/{node_id}/simulated-gpus",
    response_model=Node,
    summary="Declare (or with count 0 clear) a simulated GPU inventory on a node without GPUs",
)
async def set_simulated_gpus(
    node_id: NodeId, body: SimulatedGpusRequest, _: AdminDep, session: WriteSessionDep
) -> Node:
    """For tests and demos: the node reports `count` GPUs of `model`, marked `(simulated)`; placement counts them
    like real ones, and none is ever attached to a container."""
    return await inventory.set_simulated_gpus(session, node_id, body)


@router.get("/processes", response_model=list[Process], summary="List the live servers and gateways")
async def list_processes(context: ContextDep, _: AdminDep, session: ReadSessionDep) -> list[Process]:
    """Every `dockyard server` and `dockyard gateway` sharing this database, oldest first: where it runs, the
    address it serves on, its last heartbeat and state (`serving`, `draining` after SIGTERM, `lost` once its
    heartbeat is a lease period old), and the leases it holds with their fencing token and the time its loops
    first ran under it (docs/operations.md)."""
    return await processes.list_processes(session, context.settings.lease_seconds)
