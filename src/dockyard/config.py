"""Server configuration: `DOCKYARD_*` variables, then an optional YAML file, then defaults.

The precedence (environment over file over default) is the twelve-factor one every deployment tool expects:
a container orchestrator sets variables, an operator on a single machine edits a file.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import stat
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from dockyard.core.inputs import engine_url_problem
from dockyard.outbound import host_policy, redact_url
from dockyard.redaction import url_password

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dockyard"


def default_engine_url() -> str:
    """The engine socket: `DOCKER_HOST` when set, else Docker's, else Podman's standard socket."""
    if host := os.environ.get("DOCKER_HOST"):
        return host
    candidates = [Path("/var/run/docker.sock"), Path("/run/podman/podman.sock")]
    if runtime_dir := os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(runtime_dir) / "podman" / "podman.sock")
    for path in candidates:
        if path.exists():
            return f"unix://{path}"
    return "unix:///var/run/docker.sock"


def default_public_address() -> str:
    """The host's outward address, found by asking the kernel which source address it would route from.

    No packet is sent: connecting a UDP socket only selects a route.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, so nothing leaves the host
            address: str = probe.getsockname()[0]
            return address
    except OSError:
        return "127.0.0.1"


def ensure_private_dir(path: Path) -> None:
    """Make `path` if missing, open to its owner only: the data dir holds the database and the secret key. One that
    others may read (made by hand, or before Dockyard made it 0700) is tightened at start with a warning rather
    than refused as PostgreSQL refuses its data directory: the fix is the same, and a server that will not start
    is worse for nothing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & 0o700)
    except OSError as exc:
        log.warning("data dir %s is open to other users (mode %03o) and cannot be tightened: %s", path, mode, exc)
        return
    log.warning("data dir %s was open to other users (mode %03o); it is now %03o", path, mode, mode & 0o700)


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the setting and says where it comes from."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost")  # a server listening on one is reached from this host only


class Settings(BaseSettings):
    """Everything the server reads at start; one instance per process, built by `load_settings()`."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # Secret values (the database URL may hold a password) are left out of repr() and str(): a settings object
    # in a log line or a traceback shows none of them. `log_secrets` lists them for the log's redaction.
    database_url: str = Field(default="", repr=False)
    engine_url: str = Field(default_factory=default_engine_url)
    # Every container's network mode in place of the organizations' networks ("slirp4netns" where the host has
    # no iptables); empty: each organization's containers and workers join a network of its own.
    engine_network_mode: str = ""
    public_address: str = Field(default_factory=default_public_address)
    public_url: str = ""
    gateway_url: str = ""
    # The server's base URL as a worker container reaches it (async workers' webhooks). Empty: `public_url`, with
    # a loopback host replaced by `host.containers.internal` (services/worker_runspec.webhook_base_url).
    worker_webhook_url: str = ""
    secret_key: str = Field(default="", repr=False)
    admin_token: str = Field(default="", repr=False)
    # A bearer token that reads `/metrics` and nothing else, for Prometheus' scrape config (the admin token and
    # admin keys read it too). Empty: only those.
    metrics_token: str = Field(default="", repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "console"
    max_body_bytes: int = 10 * 1024 * 1024
    # Connections (serving/protocol.py). An idle keep-alive connection is kept this long for its next request: 75 s
    # as nginx's keepalive_timeout, so a client pausing between calls, as a worker SDK does while a synchronous
    # handler holds its loop, reuses its connection instead of finding it closed (uvicorn's own default is 5 s).
    keep_alive_timeout_seconds: int = Field(default=75, ge=1)
    # A request's head must arrive whole within this of its first byte, or the client is answered 408 and closed:
    # 20 s as Apache's mod_reqtimeout, made against slowloris (a real client sends its head at once).
    header_timeout_seconds: float = Field(default=20.0, gt=0)
    # A request body may pause this long between reads: 60 s as nginx's client_body_timeout.
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    # Connections one server process holds at most; past it the one idle the longest is closed for the newcomer
    # (503 when none is idle). 0: derived from the open-files limit (raised to its hard limit at start), which
    # also caps a value set here.
    max_connections: int = Field(default=0, ge=0)
    # The serving path's speed-ups (serving/), each on by default. Off, a request takes the plain way through
    # uvicorn and FastAPI and is answered the same: to measure what one is worth, or to rule one out.
    # A response's head leaves in the same write as its body (serving/protocol.py).
    head_with_body: bool = True
    # The job API's `run` and `status` are served in front of FastAPI (api/jobs_lean.py).
    lean_job_routes: bool = True
    # What exists once the server has started is frozen out of the garbage collector's scans (serving/front.py).
    gc_freeze: bool = True
    reconcile_interval: float = 2.0
    missing_debounce_seconds: float = 10.0
    zombie_grace_seconds: float = 60.0
    stop_timeout_seconds: int = 10
    simulated_gpus: str = ""
    simulated_driver_version: str = "550.54.15"
    simulated_cuda_version: str = "12.4"
    # Where the NVIDIA driver's user-space files are, for GPU containers on an engine that takes no device request
    # (runtimes/nvidia.py): a filesystem root ("/run/nvidia/driver") or the driver's own directory with lib64 and
    # bin ("/usr/local/nvidia"). Empty: found through `ldconfig -p`, LD_LIBRARY_PATH and the usual directories.
    nvidia_driver_root: str = ""
    # Seconds between two health checks of the local node's GPUs through NVML (gpus/health.py): a GPU that stops
    # answering or reports a critical XID error is marked unhealthy and its workers are replaced.
    gpu_health_interval: float = Field(default=5.0, gt=0)
    run_reconcilers: bool = True
    # The control lease (reconcilers/supervisor.py): its holder renews it every lease/5 s and a candidate tries as
    # often, so a dead holder's lease is taken within lease + lease/5 s; a holder that could not renew for a
    # whole lease stops its loops first. Live processes whose heartbeat is older than one lease show as lost.
    lease_seconds: float = Field(default=10.0, ge=1)
    # On SIGTERM a server or gateway stops accepting, answers 503 on /healthz, and gives the requests in flight
    # this long to finish before it closes them, releases its lease and deletes its process row.
    drain_seconds: int = Field(default=30, ge=0)
    # Serverless endpoints. The queue bound is per endpoint and per gateway process: beyond it a request is
    # refused with 429 at once rather than held, so a burst cannot exhaust the gateway's memory.
    gateway_queue_limit: int = Field(default=1000, ge=0)
    autoscale_interval: float = Field(default=0.5, gt=0)
    gateway_report_interval: float = Field(default=0.5, gt=0)  # how often a stand-alone gateway reports its load
    gateway_sync_interval: float = Field(default=1.0, gt=0)  # a gateway without the endpoint loop re-reads routes
    # An endpoint's `max_concurrent_per_worker` holds across every gateway process on the database: a worker's
    # request slots are leases in the database that the processes move between them by demand (control/slots.py).
    # Off: each gateway process enforces the limit on its own, so G gateways may send a worker G times it.
    global_concurrency: bool = True
    # A slot a process holds expires this long after its last renewal (renewed every third of it): a process that
    # dies frees its slots within this, and one that cannot renew stops using them before then.
    slot_lease_seconds: float = Field(default=6.0, gt=0)
    # A process that holds a busy slot another process wants gives that slot no new request once it has held it
    # this long, and hands it over when the request on it ends.
    slot_quantum_seconds: float = Field(default=0.1, ge=0)
    # A starting worker is probed this often, so readiness is seen within this much of the worker answering.
    worker_probe_interval: float = Field(default=0.05, gt=0)
    health_check_interval: float = Field(default=5.0, gt=0)  # a ready worker is probed this often
    health_check_timeout: float = Field(default=2.0, gt=0)
    health_check_failures: int = Field(default=3, ge=1)  # failed probes in a row before a ready worker is replaced
    # A starting worker whose container runs but whose health check has not answered 200 is failed after this
    # many checks `health_check_interval` apart (12 x 5 s: a minute), naming the last probe's result; a worker that
    # loads a large model before it serves its health check needs more. The image pull comes before and is not
    # counted: `worker_startup_timeout` bounds it.
    health_startup_failures: int = Field(default=12, ge=1)
    worker_startup_timeout: float = Field(default=600.0, gt=0)  # created -> ready, image pull included
    # An async worker whose container runs but that has made no webhook call (job-take or ping) this long is
    # failed and replaced, with the URL it was given: the SDKs call at once, so a silent one cannot reach it. Half
    # this long, its endpoint's queued jobs already name it as why they wait (services/waits.py).
    worker_call_in_timeout: float = Field(default=60.0, gt=0)
    # Workers' output kept after their containers are removed (reconcilers/endpoint_logs.py): each worker's last
    # `worker_log_bytes`, at most `endpoint_log_bytes` per endpoint (its oldest dropped first), for
    # `worker_log_retention_seconds`.
    worker_log_bytes: int = Field(default=1024 * 1024, ge=0)
    endpoint_log_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    worker_log_retention_seconds: float = Field(default=86400.0, gt=0)
    worker_drain_timeout: float = Field(default=300.0, ge=0)  # a draining worker is removed after this, busy or not
    # Async jobs. A worker's lease on a job lasts `job_lease_seconds` from its last ping (the SDKs ping every
    # 10 s), so a dead worker's job is back in the queue within that; after `job_max_attempts` takes it fails.
    job_lease_seconds: float = Field(default=30.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    job_execution_timeout_seconds: float = Field(default=600.0, gt=0)  # unless the job's policy sets one
    job_ttl_seconds: float = Field(default=1800.0, gt=0)  # a finished job's result is kept this long (RunPod: 30 min)
    # A job not finished this long after submission is TIMED_OUT, queued or running, unless its policy sets `ttl`:
    # RunPod's default job TTL of 24 hours.
    job_lifetime_seconds: float = Field(default=86400.0, ge=10, le=7 * 24 * 3600)
    job_max_payload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)  # an input or an output; larger is 413
    job_take_wait_seconds: float = Field(default=20.0, ge=0)  # how long an empty job-take is held open
    job_reap_interval: float = Field(default=1.0, gt=0)  # leases, timeouts, TTLs and webhooks are checked this often
    webhook_max_attempts: int = Field(default=5, ge=1)
    # Where job webhooks may go (outbound.py), in the terms of Gitea's ALLOWED_HOST_LIST: keywords `external` (the
    # public internet), `loopback`, `private` and `*`, networks and host-name patterns; the list replaces the
    # default, so an operator adding a private receiver writes `external,10.1.2.3`.
    webhook_allowed_hosts: str = "external"
    # Deliveries in flight at once, and of one organization (reconcilers/job_webhooks.py): one tenant's hanging
    # receivers hold only its own slots.
    webhook_concurrency: int = Field(default=32, ge=1)
    webhook_concurrency_per_org: int = Field(default=4, ge=1)
    webhook_connect_timeout: float = Field(default=3.0, gt=0)
    # A whole delivery, connecting included: GitHub gives its webhook receivers 10 s.
    webhook_timeout: float = Field(default=10.0, gt=0)
    # Quotas: what one organization may hold at once, unless the operator sets its own limits
    # (PUT /admin/v1/organizations/{id}/quotas). The defaults let one organization fill one whole node of the
    # largest default product (gpu.h100.8x: 8 GPUs, 128 vCPUs, 1 TiB) and no more, and bound the rows it can
    # make (containers, endpoints, workers, queued jobs) well below what degrades a small install's database.
    quota_gpus: int = Field(default=8, ge=0)
    quota_vcpus: int = Field(default=128, ge=0)
    quota_memory_mb: int = Field(default=1024 * 1024, ge=0)
    quota_containers: int = Field(default=100, ge=0)
    quota_endpoints: int = Field(default=20, ge=0)
    quota_workers: int = Field(default=100, ge=0)  # workers wanted by all of an organization's endpoints together
    quota_storage_gb: int = Field(default=10 * 1024, ge=0)  # network storages' declared sizes together
    quota_queued_jobs: int = Field(default=10_000, ge=0)  # jobs IN_QUEUE across the organization's endpoints
    # Placement: the CPUs and memory of each engine host that containers and workers may be given, times the
    # overcommit ratio. 0 counts what the engine reports (`docker info`: NCPU, MemTotal). The ratios are
    # OpenStack Nova's defaults: CPU time is shared (a busy container is throttled, not killed), so 4 vCPUs
    # per core; memory is not (overcommitted memory ends in the OOM killer), so none.
    node_cpus: float = Field(default=0.0, ge=0)
    node_memory_mb: int = Field(default=0, ge=0)
    cpu_overcommit: float = Field(default=4.0, gt=0)
    memory_overcommit: float = Field(default=1.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file := os.environ.get("DOCKYARD_CONFIG"):
            # The YAML source reads a missing file as empty: an operator's typo would silently run on defaults.
            if not Path(config_file).is_file():
                raise ConfigError(f"DOCKYARD_CONFIG names {config_file}, which is not a file; fix the path or unset it")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError("log_format must be 'console' or 'json'")
        return value

    @field_validator("engine_url")
    @classmethod
    def _no_engine_password(cls, value: str) -> str:
        if (why := engine_url_problem(value)) is not None:
            raise ValueError(why)
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _host_list(cls, value: str) -> str:
        host_policy(value)  # raises ValueError naming a bad entry
        return value

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'dockyard.db'}"

    @property
    def masked_database_url(self) -> str:
        """The database URL with its userinfo and query values masked (a password may sit in either), for logs."""
        return redact_url(self.resolved_database_url)

    def log_secrets(self) -> list[str]:
        """The configured secrets a log line must never show: the admin and metrics tokens, the Fernet key when
        given (the generated one is added where it is read, app.py), and the database password."""
        return [self.admin_token, self.metrics_token, self.secret_key, *url_password(self.database_url)]

    @cached_property
    def resolved_public_url(self) -> str:
        """`public_url`, else this server at its public address; a server listening on loopback only can be
        reached nowhere else, so its URL is then the loopback address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        address = self.host if self.host in LOOPBACK_HOSTS else self.public_address
        return f"http://{address}:{self.port}"

    @cached_property
    def resolved_gateway_url(self) -> str:
        return (self.gateway_url or self.resolved_public_url).rstrip("/")

    @cached_property
    def resolved_secret_key(self) -> str:
        """The Fernet key for secrets at rest; generated once into the data directory when not given."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret.key"
        if path.exists():
            return path.read_text().strip()
        from cryptography.fernet import Fernet

        ensure_private_dir(self.data_dir)
        key = Fernet.generate_key().decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server starting beside this one wrote it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(key)
        return key


def load_settings(*, make_data_dir: bool = True, **overrides: Any) -> Settings:
    """The settings from overrides, `DOCKYARD_*` variables, the YAML file and defaults, in that order; the data dir
    is made (0700) unless `make_data_dir` is false, as for the operator's commands, which must not make one where
    they found none.

    Raises `ConfigError` naming every bad setting.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ConfigError(
            f"invalid configuration ({problems}); fix the DOCKYARD_* variable or the DOCKYARD_CONFIG file that sets it"
        ) from exc
    if make_data_dir:
        ensure_private_dir(settings.data_dir)
    return settings


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
