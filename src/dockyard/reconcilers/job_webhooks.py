"""Job webhook deliveries: a finished job's status view POSTed to the `webhook` its submitter gave, by a pool of
its own, so that no receiver, however slow, holds up the job reaper (reconcilers/jobs.py) or another
organization's deliveries.

Each pass (every `job_reap_interval`, and at once when a job with a webhook finishes or a delivery ends) fills
the pool's free slots and returns without waiting on any delivery:
1. At most `webhook_concurrency` deliveries are in flight, at most `webhook_concurrency_per_org` of them of one
   organization: the free slots are dealt one at a time round-robin over the organizations with deliveries due,
   from the one after the organization served last (fair queuing, as Kubernetes' API priority and fairness deals
   its seats), so one tenant's hanging receivers hold only its own slots.
2. A due job (`webhook_state` PENDING, `webhook_next_at` passed) is claimed with a guarded write that counts the
   attempt and moves `webhook_next_at` past the latest moment its delivery can end: no other pass, nor another
   server after a change of leader, takes it meanwhile, and a delivery that died with its server is taken again
   once the claim has run out. A claim found with no attempt left (the last one died so) is FAILED instead.
3. Each delivery POSTs through the SSRF-guarded client (outbound.py), `webhook_connect_timeout` to connect and
   `webhook_timeout` in all, then records the outcome with a guarded write on the version it claimed: a 2xx is
   DELIVERED; a destination the policy refuses is FAILED at once with the reason, since a refusal cannot change
   while the server runs (the allow-list is read at start, and a name that resolves into the server's network is
   an attack or a mistake, not a passing fault); anything else is retried after 1 s, 2 s, 4 s ... until
   `webhook_max_attempts`, then FAILED with the last error. A job changed meanwhile (a client's `retry`) keeps
   its new state.

A webhook URL appears in words (a log line, `webhook_error`) only as `outbound.redact_url` writes it, and an
error's text only as `outbound.redact` leaves it: neither holds the URL's userinfo or query values.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import defer

from dockyard import outbound
from dockyard.context import ServerContext
from dockyard.core.loops import LoopName
from dockyard.core.status import WebhookState
from dockyard.db.base import guarded_update, utcnow
from dockyard.db.models import JobModel
from dockyard.schemas.jobs import JobViewBody
from dockyard.services.jobs import job_view

log = logging.getLogger(__name__)

# How long past `webhook_timeout` a claim holds: the outcome's write may wait behind a busy database, and a claim
# that ran out before it would let another pass deliver the job a second time.
_CLAIM_MARGIN = 30.0
_ERROR_BODY_BYTES = 1024  # of a receiver's error answer, read to quote it
_ERROR_BODY_CHARS = 200


@dataclass(frozen=True)
class _Delivery:
    """A claimed job's webhook: what to POST where, and the row's version after the claim (the outcome's guard)."""

    job_id: str
    org_id: str
    version: int
    url: str = field(repr=False)  # its userinfo and query may hold the receiver's credentials
    attempt: int
    view: JobViewBody


def _due(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return JobModel.webhook_state == WebhookState.PENDING, JobModel.webhook_next_at <= now


class WebhookDeliveries:
    """The delivery pool (see the module docstring); `deliveries` holds the tasks in flight and their
    organizations."""

    name = LoopName.JOB_WEBHOOKS

    def __init__(
        self, context: ServerContext, interval: float | None = None, http: httpx.AsyncClient | None = None
    ) -> None:
        settings = context.settings
        self.context = context
        self.interval = interval if interval is not None else settings.job_reap_interval
        self._http = http or outbound.webhook_client(
            outbound.host_policy(settings.webhook_allowed_hosts),
            connect_timeout=settings.webhook_connect_timeout,
            timeout=settings.webhook_timeout,
            max_connections=settings.webhook_concurrency,
        )
        self.deliveries: dict[asyncio.Task[None], str] = {}
        self._served_last = ""  # the organization the last slot went to

    async def close(self) -> None:
        """Stop the deliveries in flight (their claims run out and they are delivered again) and the client."""
        tasks = list(self.deliveries)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    async def reconcile_once(self) -> None:
        settings = self.context.settings
        free = settings.webhook_concurrency - len(self.deliveries)
        if free <= 0:
            return
        now = utcnow()
        async with self.context.db.read() as session:
            by_org = select(JobModel.org_id, func.count()).where(*_due(now)).group_by(JobModel.org_id)
            due = {org_id: count for org_id, count in await session.execute(by_org)}
        shares = self._deal(due, free)
        if shares:
            for delivery in await self._claim(shares, now):
                task = asyncio.create_task(self._deliver(delivery), name=f"webhook of job {delivery.job_id}")
                self.deliveries[task] = delivery.org_id
                task.add_done_callback(self._ended)

    def _deal(self, due: dict[str, int], free: int) -> dict[str, int]:
        """How many of the `free` slots each organization with deliveries `due` gets (step 1)."""
        per_org = self.context.settings.webhook_concurrency_per_org
        busy = Counter(self.deliveries.values())
        orgs = sorted(due)
        start = bisect_right(orgs, self._served_last)
        orgs = orgs[start:] + orgs[:start]
        room = {org: min(due[org], per_org - busy[org]) for org in orgs}
        shares: Counter[str] = Counter()
        while free > 0 and any(room[org] > 0 for org in orgs):
            for org in orgs:
                if free > 0 and room[org] > 0:
                    shares[org] += 1
                    room[org] -= 1
                    free -= 1
                    self._served_last = org
        return dict(shares)

    async def _claim(self, shares: dict[str, int], now: datetime) -> list[_Delivery]:
        """Claim the oldest due jobs of each organization, as many as its share (step 2)."""
        settings = self.context.settings
        loaded: list[tuple[str, int, int, _Delivery]] = []  # id, version, attempts so far, the delivery
        async with self.context.db.read() as session:
            for org_id, count in shares.items():
                jobs = await session.scalars(
                    select(JobModel)
                    .options(defer(JobModel.input))
                    .where(JobModel.org_id == org_id, *_due(now))
                    .order_by(JobModel.webhook_next_at)
                    .limit(count)
                )
                for job in jobs:
                    attempt = job.webhook_attempts + 1
                    delivery = _Delivery(job.id, org_id, job.version + 1, job.webhook, attempt, job_view(job))
                    loaded.append((job.id, job.version, job.webhook_attempts, delivery))
        held_until = now + timedelta(seconds=settings.webhook_timeout + _CLAIM_MARGIN)
        claimed: list[_Delivery] = []
        async with self.context.db.write() as session:
            for job_id, version, attempts, delivery in loaded:
                if attempts >= settings.webhook_max_attempts:
                    error = f"given up after {attempts} attempts; the last one ended with the server that made it"
                    values: dict[str, Any] = {"webhook_state": WebhookState.FAILED, "webhook_next_at": None}
                    if await guarded_update(session, JobModel, job_id, version, **values, webhook_error=error):
                        log.warning("job %s: webhook to %s %s", job_id, outbound.redact_url(delivery.url), error)
                elif await guarded_update(
                    session, JobModel, job_id, version, webhook_attempts=delivery.attempt, webhook_next_at=held_until
                ):
                    claimed.append(delivery)
        return claimed

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.deliveries.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Its claim runs out and the delivery is made again.
            log.error("a webhook delivery failed to record its outcome: %s: %s", type(exc).__name__, exc)
        self.context.wake(self.name)  # a slot is free

    async def _deliver(self, delivery: _Delivery) -> None:
        """POST and record the outcome (step 3)."""
        error, final = await self._post(delivery.url, delivery.view)
        max_attempts = self.context.settings.webhook_max_attempts
        values: dict[str, Any] = {"webhook_error": error}
        if not error:
            values.update(webhook_state=WebhookState.DELIVERED, webhook_next_at=None)
        elif final or delivery.attempt >= max_attempts:
            values.update(webhook_state=WebhookState.FAILED, webhook_next_at=None)
        else:
            values["webhook_next_at"] = utcnow() + timedelta(seconds=2 ** (delivery.attempt - 1))
        async with self.context.db.write() as session:
            written = await guarded_update(session, JobModel, delivery.job_id, delivery.version, **values)
        if written and values.get("webhook_state") == WebhookState.FAILED:
            where, attempt = outbound.redact_url(delivery.url), delivery.attempt
            log.warning("job %s: webhook to %s given up after attempt %d: %s", delivery.job_id, where, attempt, error)

    async def _post(self, url: str, view: JobViewBody) -> tuple[str, bool]:
        """POST `view` to `url`: "" when it answered 2xx, else the error in words; and whether that error is final
        (the destination is refused, or the URL is none)."""
        timeout = self.context.settings.webhook_timeout
        where = outbound.redact_url(url)
        try:
            async with asyncio.timeout(timeout):
                # `identity`: an error answer is quoted from its first bytes, which a compressed one would not give.
                async with self._http.stream("POST", url, json=view, headers={"Accept-Encoding": "identity"}) as answer:
                    if answer.is_success:
                        return "", False
                    head = await _head(answer)
        except outbound.Refused as refused:
            return f"refused: {refused}", True
        except TimeoutError:
            return f"POST {where} failed: no answer within {timeout:g} s", False
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return f"refused: {where} is not a URL webhooks can reach: {outbound.redact(str(exc), url)}", True
        except httpx.HTTPError as exc:
            return f"POST {where} failed: {type(exc).__name__}: {outbound.redact(str(exc), url)}", False
        return f"POST {where} answered {answer.status_code}: {outbound.redact(head, url)}", False


async def _head(answer: httpx.Response) -> str:
    """The start of an answer's body as one line of text, read no further than `_ERROR_BODY_BYTES`."""
    read = bytearray()
    async for chunk in answer.aiter_raw():
        read += chunk
        if len(read) >= _ERROR_BODY_BYTES:
            break
    text = bytes(read[:_ERROR_BODY_BYTES]).decode("utf-8", errors="replace")
    return " ".join(text.split())[:_ERROR_BODY_CHARS]
