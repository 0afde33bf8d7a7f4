"""The operator's API (`/admin/v1`, ours): snake_case like PPIO, RFC 3339 times."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import GpuHealth, GpuSource, IdcStatus, ProductCategory, RuntimeKind
from dockyard.schemas.common import EngineUrl, Rfc3339, SnakeModel


class CreateOrganizationRequest(SnakeModel):
    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class Organization(SnakeModel):
    id: str
    name: str
    created_at: Rfc3339


class CreateKeyRequest(SnakeModel):
    member: str = Field(default="default", min_length=1, max_length=255, description="the member's name")
    name: str = Field(default="", max_length=255, description="a label for the key")
    is_admin: bool = Field(default=False, description="whether the key may call /admin/v1")


class ApiKey(SnakeModel):
    id: str
    org_id: str
    member_id: str
    name: str
    prefix: str = Field(description="the first characters of the key, to recognise it")
    is_admin: bool
    created_at: Rfc3339
    revoked_at: Rfc3339 | None = None


class CreatedApiKey(ApiKey):
    key: str = Field(description="the key itself; shown this once and never again")


ID_PATTERN = r"^[a-zA-Z0-9._-]+$"
VERSION_PATTERN = r"^[0-9]+(\.[0-9]+){0,3}$"


class CreateIdcRequest(SnakeModel):
    id: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN, examples=["us-west-1"])
    name: str = Field(min_length=1, max_length=255, examples=["US West 1"])
    country: str = Field(default="", max_length=64, examples=["US"])
    country_subdivision: str = Field(default="", max_length=64, examples=["CA"])
    runtime_kind: RuntimeKind = Field(default=RuntimeKind.ENGINE, description="the runtime the IDC is bound to")
    runtime_url: EngineUrl = Field(
        default="",
        max_length=512,
        pattern=r"^((unix|tcp|http|https|ssh)://\S+)?$",
        description="the engine's API (`unix:///...`, `tcp://...`, `ssh://user@host`; no password); empty: the "
        "server's own engine",
    )


class UpdateIdcRequest(SnakeModel):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    status: IdcStatus | None = Field(default=None, description="`available` or `maintenance`")


class Idc(SnakeModel):
    id: str
    name: str
    country: str
    country_subdivision: str
    status: IdcStatus
    runtime_kind: RuntimeKind
    runtime_url: str
    runtime_error: str = Field(
        description="why its runtime cannot be reached, as the reconciling server last saw it; empty while it answers"
    )
    runtime_error_since: Rfc3339 | None = Field(description="when its runtime stopped answering; null while it does")
    created_at: Rfc3339


class ProductFields(SnakeModel):
    """A product's definition; every number is bounded so that a typo cannot ask for an impossible machine."""

    idc_id: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN, description="the IDC that sells it")
    category: ProductCategory = ProductCategory.INSTANCE
    gpu_model: str = Field(default="", max_length=128, description="required when gpu_count > 0")
    gpu_count: int = Field(default=0, ge=0, le=64, description="GPUs per unit")
    gpu_memory_mb: int = Field(default=0, ge=0, le=1024 * 1024)
    cpu: float = Field(default=1.0, gt=0, le=1024, description="CPU cores")
    memory_mb: int = Field(default=1024, ge=16, le=64 * 1024 * 1024)
    pids_limit: int = Field(default=4096, ge=16, le=4_194_304)
    disk_gb: int = Field(default=20, ge=1, le=65536)
    price_per_hour: float = Field(default=0.0, ge=0, le=1_000_000)
    product_line: str = Field(default="", max_length=64)
    valid: bool = True


class CreateProductRequest(ProductFields):
    id: str = Field(min_length=1, max_length=256, pattern=ID_PATTERN, examples=["gpu.h100.1x"])


class UpdateProductRequest(ProductFields):
    pass


class Product(ProductFields):
    id: str
    created_at: Rfc3339
    modified_at: Rfc3339


class NodeGpu(SnakeModel):
    uuid: str
    index: int
    model: str
    memory_mb: int
    simulated: bool = Field(description="declared by the operator, not discovered: never attached to a container")
    allocated_to: str | None = Field(description="the id of the container holding it, or null when free")
    health: GpuHealth = Field(
        default=GpuHealth.HEALTHY,
        description="as NVML last showed it: an unhealthy GPU (it stopped answering, or reported a critical XID "
        "error) takes no new container or worker, and its workers are replaced",
    )
    health_reason: str = Field(default="", description="why it is unhealthy; empty while healthy")


class Node(SnakeModel):
    id: str
    idc_id: str
    gpu_source: GpuSource
    simulated: bool = Field(description="true when the inventory below is simulated")
    driver_version: str
    cuda_version: str
    cpus: float = Field(description="the host's CPUs for placement, as its engine reports or the operator declares")
    memory_mb: int = Field(description="the host's memory for placement; both are counted times the overcommit")
    gpus: list[NodeGpu]
    seen_at: Rfc3339


class NodeEvent(SnakeModel):
    type: str = Field(description="`GpuUnhealthy` or `GpuHealthy`", examples=["GpuUnhealthy"])
    message: str
    created_at: Rfc3339


class SimulatedGpusRequest(SnakeModel):
    model: str = Field(
        default="NVIDIA H100 80GB HBM3",
        min_length=1,
        max_length=128,
        pattern=r"^[^,:]+$",
        description="the GPU model name (no ',' or ':')",
    )
    count: int = Field(ge=0, le=64, description="how many GPUs; 0 clears the simulated inventory")
    memory_mb: int = Field(default=81559, ge=1, le=1024 * 1024)
    driver_version: str = Field(default="550.54.15", min_length=1, max_length=32, pattern=VERSION_PATTERN)
    cuda_version: str = Field(default="12.4", min_length=1, max_length=32, pattern=VERSION_PATTERN)


_QUOTA_MAX = 2**31 - 1  # the limits' columns are 32-bit integers


class SetQuotasRequest(SnakeModel):
    """Limits to set for one organization. A field left out keeps its current limit; null returns it to the
    installation's default (`DOCKYARD_QUOTA_*`); 0 allows none."""

    gpus: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, examples=[8])
    vcpus: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, examples=[64])
    memory_mb: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, examples=[262144])
    containers: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, examples=[50])
    endpoints: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, examples=[10])
    workers: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, description="workers all endpoints want together")
    storage_gb: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, description="network storages' sizes together")
    queued_jobs: int | None = Field(default=None, ge=0, le=_QUOTA_MAX, examples=[10000])
