"""The async job queue in `/metrics`: each endpoint's queue depth and the age of its oldest queued job (gauges the
job reaper sets every pass, reconcilers/jobs.py), and how jobs ended (a counter, counted where a job's final write
committed: a worker's result, the reaper's timeouts and lost attempts, a client's cancel or purge-queue)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from dockyard.core.status import JobStatus
from dockyard.metrics_registry import per_registry


@dataclass(frozen=True)
class JobMetrics:
    queued: Gauge
    oldest_queued: Gauge
    finished: Counter

    def ended(self, endpoint_id: str, status: JobStatus, count: int = 1) -> None:
        """Count `count` jobs of the endpoint that ended as `status` (a final one; any other is not an ending)."""
        if status.final and count:
            self.finished.labels(endpoint_id, status.value.lower()).inc(count)


@per_registry
def job_metrics(registry: CollectorRegistry) -> JobMetrics:
    return JobMetrics(
        queued=Gauge("dockyard_jobs_queued", "Async jobs IN_QUEUE, by endpoint", ["endpoint"], registry=registry),
        oldest_queued=Gauge(
            "dockyard_jobs_oldest_queued_seconds",
            "Seconds the oldest IN_QUEUE job of the endpoint has waited",
            ["endpoint"],
            registry=registry,
        ),
        finished=Counter(
            "dockyard_jobs_finished",
            "Async jobs that ended, by endpoint and outcome (completed, failed, timed_out, cancelled)",
            ["endpoint", "outcome"],
            registry=registry,
        ),
    )
