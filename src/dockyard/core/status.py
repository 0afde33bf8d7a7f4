"""Strict enums for every status, desired state and reason kind.

A status alone never explains itself: each is stored beside a `reason` sentence a user can act on.
"""

from __future__ import annotations

from enum import StrEnum


class ContainerStatus(StrEnum):
    """GMI Cloud's container statuses, with the meanings Dockyard gives them on a real runtime."""

    UNKNOWN = "unknown"  # the runtime cannot be reached right now
    CREATING = "creating"  # wanted, not yet running (pulling, creating, starting, recreating)
    RUNNING = "running"
    TERMINATING = "terminating"  # deletion asked for; teardown in progress
    STOPPED = "stopped"  # stopped on request
    ERROR = "error"  # failed to start, exited on its own, or disappeared
    ZOMBIE = "zombie"  # the runtime still runs it, Dockyard no longer wants it; removed after a grace


class DesiredState(StrEnum):
    """What the user asked for; reconcilers converge the runtime towards it."""

    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


class EndpointType(StrEnum):
    SYNC = "sync"  # requests proxied to a worker through the gateway
    ASYNC = "async"  # jobs queued and taken by workers over the webhook protocol


class EndpointStatus(StrEnum):
    """PPIO endpoint statuses (ours, as docs/api.md documents them)."""

    DEPLOYING = "deploying"  # created; its first workers are being placed
    RUNNING = "running"
    UPDATING = "updating"  # the worker template changed; workers are being rolled
    FAILED = "failed"
    DELETING = "deleting"  # deletion asked for; workers are drained, then removed


class WorkerStatus(StrEnum):
    """An endpoint worker's lifecycle: pending -> starting -> ready -> draining -> stopping -> gone."""

    PENDING = "pending"  # wanted, not yet placed on a node
    STARTING = "starting"  # created on the runtime, not yet answering its health check
    READY = "ready"
    DRAINING = "draining"  # takes no new requests; finishes those in flight
    STOPPING = "stopping"
    FAILED = "failed"
    EXITED = "exited"


class PolicyType(StrEnum):
    QUEUE = "queue"  # scale up when a request has waited longer than `value` seconds
    CONCURRENCY = "concurrency"  # about `value` queued-or-in-flight requests per worker


class IdcStatus(StrEnum):
    AVAILABLE = "available"
    FULL = "full"
    MAINTENANCE = "maintenance"


class RuntimeKind(StrEnum):
    ENGINE = "engine"  # Docker or Podman through the Docker Engine API
    KUBERNETES = "kubernetes"


class GpuSource(StrEnum):
    """Where a node's GPU inventory comes from; `simulated` is shown wherever the inventory is."""

    NVML = "nvml"
    SIMULATED = "simulated"
    NONE = "none"


class GpuHealth(StrEnum):
    """A GPU's health as NVML last showed it (gpus/health.py); `health_reason` says why one is unhealthy."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # stopped answering, or reported a critical XID error: nothing new is placed on it


class NetworkStorageStatus(StrEnum):
    AVAILABLE = "available"
    DELETING = "deleting"  # deletion asked for; the volume is removed, then the row


class ProductCategory(StrEnum):
    INSTANCE = "instance"
    SERVERLESS = "serverless"


class IPStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    NONE = "none"


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"


class JobStatus(StrEnum):
    """An async job's status, as the PPIO and RunPod clients read it."""

    IN_QUEUE = "IN_QUEUE"  # committed, waiting for a worker to take it
    IN_PROGRESS = "IN_PROGRESS"  # a worker holds it under a lease its pings renew
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # the handler failed, or its attempts ran out
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"  # ran past its executionTimeout

    @property
    def final(self) -> bool:
        return self not in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)


class WebhookState(StrEnum):
    """Delivery of a finished job's result to the `webhook` its submitter gave."""

    NONE = "none"  # no webhook, or the job is not finished
    PENDING = "pending"  # to be delivered (again) at `webhook_next_at`
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed; `webhook_error` says how


class ProcessKind(StrEnum):
    """What a live Dockyard process serves."""

    SERVER = "server"  # `dockyard server`: the API, the gateway, and the loops while it holds the lease
    GATEWAY = "gateway"  # `dockyard gateway`: the sync gateway alone


class ProcessState(StrEnum):
    """Where a live process stands. `lost` is never stored: it is how a row whose heartbeat stopped is shown."""

    SERVING = "serving"
    DRAINING = "draining"  # it had SIGTERM: it takes no new connection and finishes the requests it holds
    LOST = "lost"  # no heartbeat for a lease period: killed, or cut off from the database


# How a worker that no node has room for is worded (its placement's reason follows): the reconciler writes it and
# the queue's explanation (services/waits.py) recognises it, so both take it from here.
UNPLACED_PREFIX = "waiting to be placed: "
# How an async worker failed for never calling its webhooks is worded, for the same two readers.
NEVER_CALLED_IN_PREFIX = "never called in: "
