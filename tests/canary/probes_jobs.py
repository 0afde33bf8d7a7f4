"""The canary's probes of async jobs: the worker webhooks called with wrong and other workers' keys, bad and deep
bodies, progress updates and a result posted by the wrong worker; and job webhooks with credentials in their
URLs, refused as SSRF (at `run` or at delivery), or delivered to receivers that answer 500 or hang."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import docker
import httpx

from dockyard.services.worker_runspec import WEBHOOK_PREFIX
from tests.canary.harness import RECEIVER_HOST, Canary, probe
from tests.servers import wait_for


def worker_keys(canary: Canary) -> dict[str, str]:
    """Worker id -> its webhook key, read from the environment the engine gave the jobs endpoint's workers."""
    engine = docker.DockerClient(base_url=canary.engine_url)
    try:
        found = {}
        label = f"dockyard.endpoint={canary.jobs_endpoint_id}"
        for container in engine.containers.list(all=True, filters={"label": label}):
            env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
            found[env["DOCKYARD_WORKER_ID"]] = env["RUNPOD_AI_API_KEY"]
        return found
    finally:
        engine.close()


class Worker:
    """One worker's side of the webhooks, called as the SDKs call them, through the canary's checked client."""

    def __init__(self, canary: Canary, client: httpx.Client, worker_id: str, key: str) -> None:
        self.base = f"{WEBHOOK_PREFIX}/{canary.jobs_endpoint_id}"
        self.client = client
        self.id = worker_id
        self.key = key

    def take(self, key: str | None = None, worker_id: str | None = None, base: str | None = None) -> httpx.Response:
        path = f"{base or self.base}/job-take/{worker_id or self.id}?sdk=runpod&job_in_progress=0"
        return self.client.get(path, headers={"Authorization": key if key is not None else self.key})

    def done(self, job_id: str, body: bytes | str | dict[str, Any]) -> httpx.Response:
        content = body if isinstance(body, bytes | str) else httpx.Request("POST", "/", json=body).content
        return self.client.post(
            f"{self.base}/job-done/{self.id}/{job_id}?sdk=runpod",
            content=content,
            headers={"Authorization": self.key, "Content-Type": "application/x-www-form-urlencoded"},
        )

    def stream(self, job_id: str, body: bytes | str) -> httpx.Response:
        return self.client.post(
            f"{self.base}/job-stream/{self.id}/{job_id}?sdk=ppio", content=body, headers={"Authorization": self.key}
        )

    def ping(self, *job_ids: str) -> httpx.Response:
        return self.client.get(
            f"{self.base}/ping/{self.id}?sdk=ppio",
            params={"job_id": ",".join(job_ids)},
            headers={"Authorization": f"Bearer {self.key}"},
        )


@probe
def worker_webhooks(canary: Canary) -> None:
    """Two workers of the jobs endpoint: wrong, other and missing keys; one takes a job, the other posts its
    result (409); bad, deep and huge bodies; a progress update; then the real result."""
    keys = wait_for(
        "both workers of the jobs endpoint created", lambda: (k := worker_keys(canary)) and len(k) == 2 and k
    )
    (id_a, key_a), (id_b, key_b) = sorted(keys.items())
    canary.plant("worker key a", key_a)
    canary.plant("worker key b", key_b)
    with canary.client() as client:
        a, b = Worker(canary, client, id_a, key_a), Worker(canary, client, id_b, key_b)
        for key in ("", f"dyw_{secrets.token_urlsafe(24)}", "Bearer nonsense", canary.secrets["user key"]):
            assert a.take(key=key).status_code == 401
        assert a.take(key=key_b).status_code == 404  # b's key on a's path
        assert a.take(base=f"{WEBHOOK_PREFIX}/{canary.endpoint_id}").status_code == 404  # another endpoint's path
        assert (
            client.get(f"{a.base}/job-take/{id_a}?job_in_progress=7", headers={"Authorization": key_a}).status_code
            == 422
        )

        job = canary.user.post(f"/v2/{canary.jobs_endpoint_id}/run", json={"input": {"n": 1}})
        assert job.status_code == 200, job.text
        job_id = job.json()["id"]
        taken = a.take()
        assert taken.status_code == 200, taken.text
        assert taken.json()["id"] == job_id

        assert b.done(job_id, {"output": "not mine"}).status_code == 409
        assert b.done(job_id, {"status": "IN_PROGRESS", "output": "not mine either"}).status_code == 409
        assert b.stream(job_id, '{"output": "part"}').status_code == 409
        deep = '{"output":' * 1000 + "1" + "}" * 1000
        for body, code in (
            ("not json", 400),
            ("[1]", 400),
            (deep, 400),
            (b"\xff\xfe", 400),
            ('{"output": "' + "x" * 70_000 + '"}', 413),
        ):
            assert a.done(job_id, body).status_code == code
            assert a.stream(job_id, body).status_code == code
        assert a.stream(job_id, '{"nothing": 1}').status_code == 400

        assert a.done(job_id, {"status": "IN_PROGRESS", "output": "step 1 of 2"}).status_code == 200
        status = canary.user.get(f"/v2/{canary.jobs_endpoint_id}/status/{job_id}").json()
        assert (status["status"], status["output"]) == ("IN_PROGRESS", "step 1 of 2")
        assert a.ping(job_id).status_code == 200
        assert a.stream(job_id, '{"output": "part 1"}').status_code == 200
        assert a.done(job_id, {"output": {"answer": 42}}).status_code == 200
        assert canary.user.get(f"/v2/{canary.jobs_endpoint_id}/status/{job_id}").json()["status"] == "COMPLETED"
        assert b.done(job_id, {"output": "late"}).status_code == 409
        assert a.done("no-such-job", {"output": 1}).status_code == 404
        assert canary.other.get(f"/v2/{canary.jobs_endpoint_id}/status/{job_id}").status_code == 404


def webhook_url(canary: Canary, host: str, path: str) -> str:
    """A webhook URL to `host` with a planted password in its userinfo and a planted token in its query. The
    password is planted as the Basic credentials a client makes of the userinfo too, which a receiver may quote."""
    password = canary.fresh(f"webhook password for {host}{path}")
    token = canary.fresh(f"webhook token for {host}{path}")
    basic = base64.b64encode(f"hook:{password}".encode()).decode()
    canary.plant(f"webhook Basic credentials for {host}{path}", basic)
    return f"http://hook:{password}@{host}{path}?token={token}&job=canary"


@probe
def ssrf_webhooks_refused_at_run(canary: Canary) -> None:
    """Webhooks to loopback in every spelling, the metadata service, private addresses and the server's own admin
    API (with the admin token in the URL): 422 naming `webhook`, without the URL's credentials."""
    admin_token = canary.secrets["admin token"]
    admin_api = f"http://operator:{admin_token}@127.0.0.1:{canary.port}/admin/v1/organizations?token={admin_token}"
    urls = [
        webhook_url(canary, host, "/done")
        for host in ("127.1", "2130706433", "0x7f.1", "169.254.169.254", "[::ffff:127.0.0.1]", "10.0.0.1", "[::1]:80")
    ]
    for url in (*urls, admin_api):
        for path in (
            f"/v2/{canary.endpoint_id}/run",
            f"/v1/{canary.endpoint_id}/run",
            f"/v2/{canary.endpoint_id}/runsync",
        ):
            answer = canary.user.post(path, json={"input": {"n": 1}, "webhook": url})
            assert answer.status_code == 422, answer.text
            assert answer.json()["details"][0]["field"] == "webhook", answer.text
    for policy in ({"ttl": 1000}, {"executionTimeout": 10}):
        webhook = webhook_url(canary, f"{RECEIVER_HOST}:{canary.receiver.port}", "/fail")
        answer = canary.user.post(
            f"/v2/{canary.endpoint_id}/run", json={"input": {}, "webhook": webhook, "policy": policy}
        )
        assert answer.status_code == 422, answer.text


@probe
def webhooks_that_fail_at_delivery(canary: Canary) -> None:
    """Jobs whose webhooks go to a name resolving to loopback (refused at connect), to an allowed receiver that
    answers 500 quoting the credentials it got, and to one that hangs past the timeout; each job is cancelled, so
    its webhook is delivered, retried and given up, in the log."""
    receiver = canary.receiver
    urls = {
        "refused": webhook_url(canary, f"localhost:{receiver.port}", "/refused"),
        "500": webhook_url(canary, f"{RECEIVER_HOST}:{receiver.port}", "/fail"),
        "hang": webhook_url(canary, f"{RECEIVER_HOST}:{receiver.port}", "/hang"),
    }
    jobs = {}
    for what, url in urls.items():
        run = canary.user.post(f"/v2/{canary.endpoint_id}/run", json={"input": {"n": 1}, "webhook": url})
        assert run.status_code == 200, run.text
        jobs[what] = run.json()["id"]
        cancelled = canary.user.post(f"/v2/{canary.endpoint_id}/cancel/{jobs[what]}")
        assert cancelled.json()["status"] == "CANCELLED", cancelled.text

    def given_up(what: str, why: str) -> bool:
        return any(f"job {jobs[what]}: webhook to" in line and why in line for line in canary.log().splitlines())

    canary.eventually("the loopback webhook refused", lambda: given_up("refused", "refused: localhost resolves to"))
    canary.eventually("the 500 webhook given up", lambda: given_up("500", "answered 500"))
    canary.eventually("the hanging webhook given up", lambda: given_up("hang", "no answer within"))
    canary.eventually("both receivers tried twice", lambda: receiver.hits["/fail"] >= 2 and receiver.hits["/hang"] >= 2)
