"""The tables. One class per entity, named `<Entity>Model`; wire models live in `dockyard.schemas`.

JSON columns hold value objects that are always read and written whole (a workload spec, a port list);
anything that is queried or joined on is a column of its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from dockyard.core.status import (
    ContainerStatus,
    DesiredState,
    EndpointStatus,
    EndpointType,
    GpuHealth,
    GpuSource,
    IdcStatus,
    JobStatus,
    NetworkStorageStatus,
    ProcessKind,
    ProcessState,
    ProductCategory,
    RuntimeKind,
    WebhookState,
    WorkerStatus,
)
from dockyard.db.base import Base, Versioned, new_id, utcnow


def _enum(enum_cls: type[Any]) -> Enum:
    # Stored as VARCHAR with the enum's values: portable across SQLite and PostgreSQL, no ALTER TYPE to add one.
    return Enum(enum_cls, native_enum=False, values_callable=lambda e: [m.value for m in e], length=32)


class OrganizationModel(Versioned, Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)


class OrganizationQuotaModel(Base):
    """The operator's limits for one organization. A null column keeps the installation's default
    (`DOCKYARD_QUOTA_*`), so a changed default reaches every organization that has not been given its own."""

    __tablename__ = "organization_quotas"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    gpus: Mapped[int | None] = mapped_column(Integer, default=None)
    vcpus: Mapped[int | None] = mapped_column(Integer, default=None)
    memory_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    containers: Mapped[int | None] = mapped_column(Integer, default=None)
    endpoints: Mapped[int | None] = mapped_column(Integer, default=None)
    workers: Mapped[int | None] = mapped_column(Integer, default=None)
    storage_gb: Mapped[int | None] = mapped_column(Integer, default=None)
    queued_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MemberModel(Versioned, Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))


class ApiKeyModel(Versioned, Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class IdcModel(Versioned, Base):
    """A region: GMI calls it an IDC, PPIO a region. Each is bound to exactly one runtime."""

    __tablename__ = "idcs"

    id: Mapped[str] = mapped_column(String(50), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    country: Mapped[str] = mapped_column(String(64), default="")
    country_subdivision: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[IdcStatus] = mapped_column(_enum(IdcStatus), default=IdcStatus.AVAILABLE)
    runtime_kind: Mapped[RuntimeKind] = mapped_column(_enum(RuntimeKind), default=RuntimeKind.ENGINE)
    runtime_url: Mapped[str] = mapped_column(String(512), default="")
    # Why the runtime cannot be reached, as the reconciling server last saw it ("" while it answers), and since
    # when: for the operator (the admin API) only; tenants see the IDC in maintenance.
    runtime_error: Mapped[str] = mapped_column(Text, default="")
    runtime_error_since: Mapped[datetime | None] = mapped_column(default=None)


class ProductModel(Versioned, Base):
    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    idc_id: Mapped[str] = mapped_column(ForeignKey("idcs.id", ondelete="CASCADE"), index=True)
    category: Mapped[ProductCategory] = mapped_column(_enum(ProductCategory), default=ProductCategory.INSTANCE)
    product_line: Mapped[str] = mapped_column(String(64), default="")
    gpu_model: Mapped[str] = mapped_column(String(128), default="")
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    gpu_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    cpu: Mapped[float] = mapped_column(Float, default=1.0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=1024)
    pids_limit: Mapped[int] = mapped_column(Integer, default=4096)
    disk_gb: Mapped[int] = mapped_column(Integer, default=20)
    price_per_hour: Mapped[float] = mapped_column(Float, default=0.0)
    valid: Mapped[bool] = mapped_column(Boolean, default=True)


class NodeModel(Versioned, Base):
    """A host of an IDC's runtime and its discovered (or declared simulated) GPU inventory."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    idc_id: Mapped[str] = mapped_column(ForeignKey("idcs.id", ondelete="CASCADE"), index=True)
    gpu_source: Mapped[GpuSource] = mapped_column(_enum(GpuSource), default=GpuSource.NONE)
    driver_version: Mapped[str] = mapped_column(String(32), default="")
    cuda_version: Mapped[str] = mapped_column(String(32), default="")
    # The host's CPUs and memory as its engine reports them or the operator declares them (0: not known yet);
    # placement hands out these times the overcommit ratios (gpus/allocation.py).
    cpus: Mapped[float] = mapped_column(Float, default=0.0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class GpuModel(Base):
    __tablename__ = "gpus"

    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(128))
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    minor_number: Mapped[int] = mapped_column(Integer, default=-1)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    # As the GPU health loop last saw it (reconcilers/gpu_health.py); an unhealthy GPU takes no new placement.
    health: Mapped[GpuHealth] = mapped_column(_enum(GpuHealth), default=GpuHealth.HEALTHY)
    health_reason: Mapped[str] = mapped_column(Text, default="")


class TemplateModel(Versioned, Base):
    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[str] = mapped_column(String(36), default="")
    name: Mapped[str] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)


class SshKeyModel(Versioned, Base):
    __tablename__ = "ssh_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128), default="")


class NetworkStorageModel(Versioned, Base):
    """A named volume on the IDC's runtime, shared by containers' `storages` and endpoints' `volumes`."""

    __tablename__ = "network_storages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    idc_id: Mapped[str] = mapped_column(ForeignKey("idcs.id"))
    size_gb: Mapped[int] = mapped_column(Integer)
    status: Mapped[NetworkStorageStatus] = mapped_column(
        _enum(NetworkStorageStatus), default=NetworkStorageStatus.AVAILABLE, index=True
    )


class PrivateImageModel(Base):
    """An image repository some workload pulled with registry credentials in an IDC. From then on every create of
    it there re-pulls with the requester's own credentials (services/private_images.py), so the host's image
    cache never hands it to an organization its registry would refuse. Never deleted: a repository that was
    private once is treated as private for good."""

    __tablename__ = "private_images"

    idc_id: Mapped[str] = mapped_column(ForeignKey("idcs.id", ondelete="CASCADE"), primary_key=True)
    repository: Mapped[str] = mapped_column(String(512), primary_key=True)  # `ImageReference.repository`
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RegistryAuthModel(Versioned, Base):
    """Credentials for a private image registry, named by endpoints' `registry_auth_id`; the password is stored
    encrypted and never answered."""

    __tablename__ = "registry_auths"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(255))
    password: Mapped[str] = mapped_column(Text)


class ContainerModel(Versioned, Base):
    """A GPU container: desired state (spec, `desired`, `generation`) and observed state (status onwards).

    `generation` counts spec changes (an update recreates the container); `restart_generation` counts
    restart requests. The reconciler records what it has acted on in the `observed_*` columns.
    """

    __tablename__ = "containers"
    # The GMI list is one organization's rows newest first; this index answers it without a sort.
    # The list's order, newest first with the id breaking ties, read straight off the index: a deep page then
    # skips index entries only, never the rows themselves.
    __table_args__ = (Index("ix_containers_org_id_created_at_id", "org_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[str] = mapped_column(String(36), default="")
    name: Mapped[str] = mapped_column(String(255), index=True)
    idc_id: Mapped[str] = mapped_column(String(50))
    product_id: Mapped[str] = mapped_column(String(256))
    template_id: Mapped[str] = mapped_column(String(36))
    command: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    ssh_key_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    desired: Mapped[DesiredState] = mapped_column(_enum(DesiredState), default=DesiredState.RUNNING, index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    restart_generation: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[ContainerStatus] = mapped_column(_enum(ContainerStatus), default=ContainerStatus.CREATING)
    reason: Mapped[str] = mapped_column(Text, default="")
    node_id: Mapped[str] = mapped_column(String(255), default="")
    gpu_uuids: Mapped[list[str]] = mapped_column(JSON, default=list)
    runtime_id: Mapped[str] = mapped_column(String(128), default="")
    published_ports: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)
    observed_restart_generation: Mapped[int] = mapped_column(Integer, default=0)
    missing_since: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)


class EndpointModel(Versioned, Base):
    """A serverless endpoint: desired state (spec, worker_config, policy, `desired`, `desired_replicas`,
    `generation`) and its observed status.

    `spec` is the worker template, a `WorkloadSpec` (envs encrypted). `generation` counts changes to what a
    worker runs (the spec, the product, the region); a change to scaling bounds or policy does not bump it.
    `desired_replicas` is the autoscaler's figure, kept within the worker_config's min and max.
    """

    __tablename__ = "endpoints"
    # The PPIO list is one organization's rows newest first, paged by (created_at, id); this index answers it.
    __table_args__ = (Index("ix_endpoints_org_id_created_at", "org_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[str] = mapped_column(String(36), default="")
    type: Mapped[EndpointType] = mapped_column(_enum(EndpointType))
    name: Mapped[str] = mapped_column(String(255))
    app_name: Mapped[str] = mapped_column(String(255), default="")
    product_id: Mapped[str] = mapped_column(String(256))
    idc_id: Mapped[str] = mapped_column(String(50))  # PPIO's region_id
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    worker_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    desired: Mapped[DesiredState] = mapped_column(_enum(DesiredState), default=DesiredState.RUNNING, index=True)
    desired_replicas: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[EndpointStatus] = mapped_column(_enum(EndpointStatus), default=EndpointStatus.DEPLOYING)
    reason: Mapped[str] = mapped_column(Text, default="")


class WorkerModel(Versioned, Base):
    """One worker container of an endpoint, at the endpoint `generation` it was created for."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(36), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    status: Mapped[WorkerStatus] = mapped_column(_enum(WorkerStatus), default=WorkerStatus.PENDING)
    reason: Mapped[str] = mapped_column(Text, default="")
    health: Mapped[bool] = mapped_column(Boolean, default=False)  # the last health check's result
    drain: Mapped[bool] = mapped_column(Boolean, default=False)  # takes no new requests
    runtime_id: Mapped[str] = mapped_column(String(128), default="")
    node_id: Mapped[str] = mapped_column(String(255), default="")
    gpu_uuids: Mapped[list[str]] = mapped_column(JSON, default=list)
    published_ports: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # An async worker's webhook key (SHA-256 of it; the key itself is only in the worker's environment): it
    # authenticates that worker's job-take, job-done, stream and ping calls, and nothing else.
    key_hash: Mapped[str] = mapped_column(String(64), default="", index=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)  # an async worker's last webhook call
    first_seen_at: Mapped[datetime | None] = mapped_column(default=None)  # and its first
    # A starting or ready worker's last health probe that differed from the one before, or counted against it
    # (control/prober.py `probe_result`: "ok", "connection refused", "status 404", "timeout").
    last_probe_at: Mapped[datetime | None] = mapped_column(default=None)
    last_probe_result: Mapped[str] = mapped_column(String(64), default="")


class WorkerSlotModel(Base):
    """One of a worker's `max_concurrent_per_worker` request slots, leased to one gateway process at a time
    (control/slots.py): `holder` is that process ("" when free) until `expires_at` (the database's clock on
    PostgreSQL); `wanted_by` names a process whose requests wait for it, so its holder hands it over. Rows are
    made when a process first takes a worker's slots and go with the worker's row."""

    __tablename__ = "worker_slots"

    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[datetime] = mapped_column()
    wanted_by: Mapped[str] = mapped_column(String(128), default="")


class WorkerLogModel(Base):
    """A removed worker's output, kept for `worker_log_retention_seconds` after its container went
    (reconcilers/endpoint_logs.py): its last `worker_log_bytes`, each line led by the engine's RFC 3339 time."""

    __tablename__ = "worker_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(36))
    worker_id: Mapped[str] = mapped_column(String(36))
    output: Mapped[bytes] = mapped_column(LargeBinary)
    removed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class EventModel(Base):
    """An append-only record of what a reconciler or autoscaler decided, and why."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(36), index=True)
    object_kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class IdempotencyKeyModel(Base):
    """A write answered once per (organization, key); replays get the stored answer for 24 hours."""

    __tablename__ = "idempotency_keys"

    org_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class SettingModel(Base):
    """Installation-wide values (the installation id that labels every runtime object)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class LeaseModel(Base):
    """A named lease; the server holding `reconcilers` runs the reconcile loops (one leader per database).
    `token` is raised at every change of holder and fences the loops' writes (db/fence.py). Its times are the
    database's clock on PostgreSQL, where holders on several hosts share the row."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))  # empty once released
    expires_at: Mapped[datetime] = mapped_column()
    token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    acquired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    renewed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When every loop had begun its first pass under this holder; null until then.
    first_pass_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ProcessModel(Base):
    """A live `dockyard server` or `dockyard gateway` process: inserted at its start, heartbeaten every few
    seconds (database clock on PostgreSQL), marked draining on SIGTERM, deleted on a clean stop. A row whose
    heartbeat is older than a lease period is shown as lost; the lease holder deletes rows lost for long."""

    __tablename__ = "processes"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid:random, the lease holder's name
    kind: Mapped[ProcessKind] = mapped_column(_enum(ProcessKind))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column(index=True)
    state: Mapped[ProcessState] = mapped_column(_enum(ProcessState))


class GatewayReportModel(Base):
    """One gateway process's load figures for one endpoint, rewritten every report interval by each
    stand-alone gateway (`dockyard gateway`), so the autoscaler and the endpoint reconciler see the requests
    queued and in flight there. A report older than a few intervals is from a gateway that stopped and is
    ignored. The gateway inside the server process is read directly and never reports here."""

    __tablename__ = "gateway_reports"

    gateway_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    oldest_wait: Mapped[float] = mapped_column(Float, default=0.0)
    # worker id -> [requests in flight, seconds idle]
    workers: Mapped[dict[str, list[float]]] = mapped_column(JSON, default=dict)
    reported_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class JobModel(Versioned, Base):
    """One async job: committed before `run` answers, taken by one worker at a time under a lease.

    `attempts` counts the times a worker took it; `history` records each attempt (worker, start, end, how it
    ended), so a job run twice (its worker died mid-job and the lease expired) is counted and explained.
    Payloads are JSON text bounded by the settings. `expires_at` is when the job expires: until it finishes, the end
    of its lifetime (its `ttl` from submission, after which it is TIMED_OUT); once finished, when it is purged
    (`keep_ms` later). Rows from before lifetimes have none while unfinished."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The queue: an endpoint's jobs in a status, oldest first (take, health counts, purge-queue).
        Index("ix_jobs_endpoint_status_created", "endpoint_id", "status", "created_at"),
        # An organization's queued jobs, counted against its quota at every `run`.
        Index("ix_jobs_org_id_status", "org_id", "status"),
        UniqueConstraint("endpoint_id", "idempotency_key", name="uq_jobs_endpoint_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.IN_QUEUE)
    input: Mapped[str] = mapped_column(Text)  # the JSON `input` as submitted
    output: Mapped[str | None] = mapped_column(Text, default=None)  # JSON
    error: Mapped[str] = mapped_column(Text, default="")
    webhook: Mapped[str] = mapped_column(String(2048), default="")
    execution_timeout_ms: Mapped[int] = mapped_column(Integer, default=0)  # 0: the server's default
    ttl_ms: Mapped[int] = mapped_column(Integer, default=0)  # its lifetime from submission (RunPod's policy.ttl)
    keep_ms: Mapped[int] = mapped_column(Integer, default=0)  # a finished job is kept this long; 0: the default
    low_priority: Mapped[bool] = mapped_column(Boolean, default=False)  # never makes the endpoint add a worker
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    worker_id: Mapped[str] = mapped_column(String(36), default="")  # the holder while IN_PROGRESS
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retried: Mapped[int] = mapped_column(Integer, default=0)  # times a client asked `retry`
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)  # the holder is told to stop
    started_at: Mapped[datetime | None] = mapped_column(default=None)  # of the current attempt
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    delay_ms: Mapped[int] = mapped_column(Integer, default=0)  # queued -> taken (last attempt)
    execution_ms: Mapped[int] = mapped_column(Integer, default=0)  # taken -> finished
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    webhook_state: Mapped[WebhookState] = mapped_column(_enum(WebhookState), default=WebhookState.NONE, index=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(default=None)
    webhook_error: Mapped[str] = mapped_column(Text, default="")


class JobStreamModel(Base):
    """One partial output a generator handler streamed (`stream` webhook), in order per job."""

    __tablename__ = "job_streams"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    output: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
