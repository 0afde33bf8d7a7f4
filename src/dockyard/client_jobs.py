"""The SDK's methods for async endpoints' jobs, mixed into `dockyard.client.Client` (import that, not this).

The job API is the one the official `ppio-gpus` and `runpod` clients speak, at `{server}/v1/{endpoint_id}/...`:
`run` queues a job and answers `{id, status}`; `status` answers the job's view `{id, status, delayTime,
executionTime, output?, error?}` (times in milliseconds); a job ends in one of `FINAL_STATUSES`. Errors are
the client's: `ApiError` for an error answer (404 for an unknown endpoint or job), `ServerUnreachable` when no
answer came.

    with Client("http://127.0.0.1:8080", api_key) as client:
        job = client.run_job(endpoint_id, {"prompt": "hello"})
        view = client.wait_for_job(endpoint_id, job["id"], timeout=600)
        print(view["status"], view.get("output"), view.get("error"))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, cast

Json = dict[str, Any]

FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
"""The statuses a job leaves only by `retry_job` (COMPLETED never)."""

RUNSYNC_TIMEOUT = 300.0 + 30.0
"""Seconds `run_job_sync` waits for the answer: past the longest wait the server grants (5 minutes), so that the
server answers first, with the job's status."""


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def job_request(
    input: Any,
    *,
    webhook: str | None = None,
    execution_timeout_ms: int | None = None,
    ttl_ms: int | None = None,
) -> Json:
    """The body of `run` and `runsync`: `{input, webhook?, policy?{executionTimeout, ttl}}`."""
    body: Json = {"input": input, **_given(webhook=webhook)}
    policy = _given(executionTimeout=execution_timeout_ms, ttl=ttl_ms)
    if policy:
        body["policy"] = policy
    return body


class JobsMixin:
    """Job methods over the requests of the class they are mixed into (`Client`): its `_object(method, path,
    json=, params=, headers=, timeout=)` answers the decoded JSON object or raises the client's errors."""

    _object: Callable[..., Json]

    def run_job(
        self,
        endpoint_id: str,
        input: Any,
        *,
        webhook: str | None = None,
        execution_timeout_ms: int | None = None,
        ttl_ms: int | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        """Queue a job with `input`; answers `{id, status: "IN_QUEUE"}` at once. `webhook` is POSTed the final
        status; `execution_timeout_ms` bounds a run (then TIMED_OUT), `ttl_ms` the job's whole life. A repeated
        `idempotency_key` answers the first job instead of queueing another."""
        body = job_request(input, webhook=webhook, execution_timeout_ms=execution_timeout_ms, ttl_ms=ttl_ms)
        headers = _given(**{"Idempotency-Key": idempotency_key})
        return self._object("POST", f"/v1/{endpoint_id}/run", json=body, headers=headers)

    def run_job_sync(
        self,
        endpoint_id: str,
        input: Any,
        *,
        webhook: str | None = None,
        execution_timeout_ms: int | None = None,
        ttl_ms: int | None = None,
        wait_ms: int | None = None,
    ) -> Json:
        """Queue a job and let the server wait for it, `wait_ms` at most (the server's default 90 s, its limit
        5 minutes); answers its status view, still IN_QUEUE or IN_PROGRESS if the wait ran out (then
        `wait_for_job` goes on)."""
        body = job_request(input, webhook=webhook, execution_timeout_ms=execution_timeout_ms, ttl_ms=ttl_ms)
        params = _given(wait=wait_ms)
        return self._object("POST", f"/v1/{endpoint_id}/runsync", json=body, params=params, timeout=RUNSYNC_TIMEOUT)

    def job_status(self, endpoint_id: str, job_id: str) -> Json:
        """`{id, status, delayTime, executionTime, output?, error?}`; times in milliseconds."""
        return self._object("GET", f"/v1/{endpoint_id}/status/{job_id}")

    def stream_job(self, endpoint_id: str, job_id: str, *, interval: float = 0.5) -> Iterator[Any]:
        """The parts a generator handler yields, in order, as they arrive: `stream/{job_id}` polled every
        `interval` seconds (each answer holds the parts not given before) until the job is final. A failed
        job's error is in `job_status` once the iteration ends."""
        while True:
            answer = self._object("GET", f"/v1/{endpoint_id}/stream/{job_id}")
            for part in answer.get("stream") or []:
                yield part.get("output")
            if answer.get("status") in FINAL_STATUSES:
                return
            time.sleep(interval)

    def cancel_job(self, endpoint_id: str, job_id: str) -> Json:
        """Cancel a queued or running job (a running one's worker is told to stop); answers its status view."""
        return self._object("POST", f"/v1/{endpoint_id}/cancel/{job_id}")

    def retry_job(self, endpoint_id: str, job_id: str) -> Json:
        """Queue a FAILED, TIMED_OUT or CANCELLED job again with the same id and input (any other status is a
        409); answers `{id, status}`."""
        return self._object("POST", f"/v1/{endpoint_id}/retry/{job_id}")

    def purge_queue(self, endpoint_id: str) -> Json:
        """Cancel every job still waiting in the endpoint's queue (running ones go on); answers `{removed, status}`,
        `removed` counting them."""
        return self._object("POST", f"/v1/{endpoint_id}/purge-queue")

    def endpoint_health(self, endpoint_id: str) -> Json:
        """`{jobs: {completed, failed, inProgress, inQueue, retried}, workers: {idle, running}}`."""
        return self._object("GET", f"/v1/{endpoint_id}/health")

    def list_jobs(self, endpoint_id: str, *, status: str | None = None, limit: int | None = None) -> list[Json]:
        """The endpoint's jobs, newest first, optionally of one status: status views plus `created_at` and
        `attempts`."""
        params = _given(status=status, limit=limit)
        return cast(list[Json], self._object("GET", f"/gpus/v2/endpoints/{endpoint_id}/jobs", params=params)["data"])

    def wait_for_job(
        self,
        endpoint_id: str,
        job_id: str,
        timeout: float = 600.0,
        *,
        on_change: Callable[[Json], None] | None = None,
        interval: float = 0.25,
        max_interval: float = 2.0,
    ) -> Json:
        """Poll the job until its status is final and return that view; after `timeout` seconds, return the last
        view though it is not final (its `status` says so: a job outliving a wait is no error of the job).
        `on_change` gets the view whenever its status changes. Polling backs off from `interval` to
        `max_interval`, and starts over after each change."""
        deadline = time.monotonic() + timeout
        delay = interval
        seen = None
        while True:
            view = self.job_status(endpoint_id, job_id)
            if view.get("status") != seen:
                seen = view.get("status")
                delay = interval
                if on_change is not None:
                    on_change(view)
            if seen in FINAL_STATUSES or time.monotonic() >= deadline:
                return view
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, max_interval)
