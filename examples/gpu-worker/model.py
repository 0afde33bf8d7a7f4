"""The example GPU worker's model and its one handler, shared by the sync server (server.py) and the async worker on
the PPIO SDK (handler.py).

The model is a small MLP built here, its weights drawn from a generator seeded with `SEED`, so every process that
builds it (a worker on the GPU, a test on the CPU) holds the same weights and no download is needed. A request is
`{"inputs": [[float] * INPUTS, ...]}` (at most `MAX_BATCH` rows), or `{"seed": N, "batch": B}` for B rows drawn
from a generator seeded with N (the same rows everywhere, for tests and benchmarks that send no data). The answer:
`{"outputs": [[float] * CLASSES, ...], "argmax": [int, ...], "device", "gpu", "gpu_uuid", "visible_gpus",
"phases"}`, where `gpu_uuid` is NVML's form of the device's UUID and `phases` the worker's cold start (`Phases`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from torch import nn

SEED = 16
INPUTS = 64
HIDDEN = 1024
CLASSES = 10
MAX_BATCH = 256


class BadRequest(ValueError):
    """The request is not one this model answers; the message says why."""


def build() -> nn.Module:
    """The model on the CPU, its weights drawn from a generator seeded with `SEED`."""
    generator = torch.Generator().manual_seed(SEED)
    model = nn.Sequential(
        nn.Linear(INPUTS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    )
    with torch.no_grad():
        for parameter in model.parameters():
            bound = 1.0 / parameter.shape[-1] ** 0.5
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
    return model.eval()


def inputs(request: dict[str, Any]) -> torch.Tensor:
    """The request's rows as a (batch, INPUTS) float tensor on the CPU; `BadRequest` when it holds none."""
    if "inputs" in request:
        try:
            rows = torch.tensor(request["inputs"], dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"inputs must be a list of lists of {INPUTS} numbers: {exc}") from exc
        if rows.dim() != 2 or rows.shape[1] != INPUTS:
            raise BadRequest(f"inputs must be a list of lists of {INPUTS} numbers, got shape {list(rows.shape)}")
    elif "seed" in request:
        batch = int(request.get("batch", 1))
        if not 0 < batch <= MAX_BATCH:
            raise BadRequest(f"batch must be 1 to {MAX_BATCH}")
        rows = torch.rand((batch, INPUTS), generator=torch.Generator().manual_seed(int(request["seed"])))
    else:
        raise BadRequest('send {"inputs": [[...], ...]} or {"seed": N, "batch": B}')
    if not 0 < rows.shape[0] <= MAX_BATCH:
        raise BadRequest(f"send 1 to {MAX_BATCH} rows")
    return rows


class Phases:
    """The worker's cold start as wall-clock times (seconds since the epoch, the host's clock, which containers
    share): `process_start` (the worker's first line), `torch_imported`, `model_on_gpu` (weights copied and one
    forward pass finished on the device), `first_answer` (the first request answered). A phase not reached yet is
    absent."""

    def __init__(self, process_start: float) -> None:
        self._times = {"process_start": process_start}
        self._lock = threading.Lock()

    def mark(self, name: str) -> None:
        """Record `name` now, unless it was recorded before."""
        with self._lock:
            self._times.setdefault(name, time.time())

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return dict(self._times)


class Worker:
    """The model loaded on `device` (CUDA unless told otherwise) and the handler both entry points serve."""

    def __init__(self, phases: Phases, device: str = "cuda") -> None:
        self.phases = phases
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                "CUDA is not available in this process: the container needs its GPU's device nodes and the "
                "driver's libraries (libcuda.so.1 on LD_LIBRARY_PATH)"
            )
        self.device = torch.device(device)
        self.model = build().to(self.device)
        with torch.inference_mode():
            self.model(torch.zeros((1, INPUTS), device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            properties = torch.cuda.get_device_properties(self.device)
            self.gpu, self.gpu_uuid = properties.name, f"GPU-{properties.uuid}"
            self.visible_gpus = torch.cuda.device_count()
        else:
            self.gpu, self.gpu_uuid, self.visible_gpus = "", "", 0
        phases.mark("model_on_gpu")

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request's answer (module docstring); `BadRequest` for a request it cannot answer."""
        rows = inputs(request)
        with torch.inference_mode():
            outputs = self.model(rows.to(self.device)).float().cpu()
        self.phases.mark("first_answer")
        return {
            "outputs": outputs.tolist(),
            "argmax": outputs.argmax(dim=1).tolist(),
            "device": str(self.device),
            "gpu": self.gpu,
            "gpu_uuid": self.gpu_uuid,
            "visible_gpus": self.visible_gpus,
            "phases": self.phases.as_dict(),
        }
