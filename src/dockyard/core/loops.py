"""The names of the reconcile loops: how a loop declares itself to the supervisor and how a write asks for one.

Every loop takes its `name` from here, and `ServerContext.wake` and `Supervisor.wake` take nothing else, so a
misspelt loop is a type error rather than a wake-up that silently never comes.
"""

from __future__ import annotations

from enum import StrEnum


class LoopName(StrEnum):
    CONTAINERS = "containers"
    NETWORK_STORAGES = "network_storages"
    ENDPOINTS = "endpoints"
    AUTOSCALER = "autoscaler"
    JOBS = "jobs"  # the reaper of jobs that ran out of time or lost their worker
    JOB_WEBHOOKS = "job_webhooks"
    GPU_HEALTH = "gpu_health"  # the local node's GPUs checked through NVML
