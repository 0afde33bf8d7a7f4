"""Products in words: the `spec` string of GMI's product list."""

from __future__ import annotations

import pytest

from dockyard.db.models import ProductModel
from dockyard.services.products import describe


@pytest.mark.parametrize(
    ("fields", "simulated", "expected"),
    [
        ({"cpu": 0.5, "memory_mb": 512}, False, "0.5 vCPU, 512 MiB RAM"),
        ({"cpu": 4.0, "memory_mb": 1536}, False, "4 vCPU, 1.5 GiB RAM"),
        (
            {"gpu_count": 2, "gpu_model": "L4", "gpu_memory_mb": 23034, "cpu": 8.0, "memory_mb": 32768},
            False,
            "2 \N{MULTIPLICATION SIGN} L4 22GB, 8 vCPU, 32 GiB RAM",
        ),
        (
            {"gpu_count": 1, "gpu_model": "H100", "gpu_memory_mb": 0, "cpu": 16.0, "memory_mb": 131072},
            True,
            "1 \N{MULTIPLICATION SIGN} H100 (simulated), 16 vCPU, 128 GiB RAM",
        ),
    ],
)
def test_describe(fields: dict[str, object], simulated: bool, expected: str) -> None:
    product = ProductModel(id="p", idc_id="local", **{"gpu_count": 0, "gpu_model": "", "gpu_memory_mb": 0, **fields})
    assert describe(product, simulated) == expected
