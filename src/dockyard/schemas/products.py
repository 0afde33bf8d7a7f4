"""GMI `/api/v1/containers/products`: what a container can be created as, per IDC."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import ProductCategory
from dockyard.schemas.common import CamelModel


class ProductInfo(CamelModel):
    name: str = Field(examples=["gpu.h100.1x"])
    idc: str = Field(examples=["local"])
    type: ProductCategory = Field(description="instance products are for containers, serverless ones for endpoints")
    price: float = Field(description="price per hour", examples=[2.49])
    valid: bool = Field(
        description="whether it can be ordered here now: false when no longer sold, or when the IDC has no node with"
        " enough of its GPUs (existing containers keep running)"
    )
    spec: str = Field(
        description="GPUs, CPU and memory in words; `(simulated)` when the IDC's GPUs are a declared simulation",
        examples=["1 \N{MULTIPLICATION SIGN} H100 80GB, 16 vCPU, 128 GiB RAM"],
    )
    gpu_model: str = Field(examples=["H100"])
    product_line: str = Field(examples=["h100"])
