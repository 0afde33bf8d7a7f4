"""What a workload can be created as, per IDC: GMI `/api/v1/containers/products` (camelCase) and PPIO
`/gpus/v2/products` (snake_case)."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import ProductCategory
from dockyard.schemas.common import CamelModel, SnakeModel


class ProductInfo(CamelModel):
    name: str = Field(examples=["gpu.h100.1x"])
    idc: str = Field(examples=["local"])
    type: ProductCategory = Field(description="instance products are for containers, serverless ones for endpoints")
    price: float = Field(description="price per hour", examples=[2.49])
    valid: bool = Field(
        description="whether it can be ordered here now: false when no longer sold, or when the IDC has no node with"
        " enough of its GPUs that are healthy (existing containers keep running)"
    )
    spec: str = Field(
        description="GPUs, CPU and memory in words; `(simulated)` when the IDC's GPUs are a declared simulation",
        examples=["1 \N{MULTIPLICATION SIGN} H100 80GB, 16 vCPU, 128 GiB RAM"],
    )
    gpu_model: str = Field(examples=["H100"])
    product_line: str = Field(examples=["h100"])


class PpioProduct(SnakeModel):
    id: str = Field(examples=["serverless.h100"])
    name: str = Field(description="the product's name, which is its id (GMI's `name`)", examples=["serverless.h100"])
    category: ProductCategory = Field(description="serverless products are for endpoints, instance ones for containers")
    region_id: str = Field(examples=["local"])
    gpu_model: str = Field(description="empty for CPU-only products", examples=["H100"])
    gpu_num: int = Field(description="GPUs per container or worker", examples=[1])
    gpu_memory_gb: int = Field(description="memory of one GPU, rounded to whole GB", examples=[80])
    cpu_num: float = Field(description="vCPUs; may be fractional", examples=[16])
    memory_gb: float = Field(examples=[128])
    disk_gb: int = Field(examples=[20])
    price_per_hour: float = Field(examples=[2.99])
    available: bool = Field(
        description="whether it can be ordered here now: false when no longer sold, or when the region has no node"
        " with enough of its GPUs that are healthy (GMI's `valid`)"
    )
    spec: str = Field(
        description="GPUs, CPU and memory in words; `(simulated)` when the region's GPUs are a declared simulation",
        examples=["1 \N{MULTIPLICATION SIGN} H100 80GB, 16 vCPU, 128 GiB RAM"],
    )


class PpioProductList(SnakeModel):
    data: list[PpioProduct]
