"""`dockyard jobs ...`, `dockyard endpoints health` and the SDK's job methods against a stand-in for the job routes,
served over a real socket: it answers like the API (`/v1/{endpoint_id}/...` and `/gpus/v2/endpoints/{id}/jobs`),
records what it was sent, and moves each job a step towards the outcome its input asks for on every status
poll."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner, Result

from dockyard.cli import app as cli_app
from dockyard.client import ApiError, Client
from dockyard.errors import error_body
from tests.live import serving

KEY = "dk-test-key"
ENDPOINT = "ep-async"


BLOCKED = {
    "code": "WORKERS_FAILING",
    "message": "2 worker(s) failed before becoming ready; the last: exited with code 3",
    "since": 1767225600,
}


@dataclass
class FakeJobs:
    """The stand-in's state: jobs by id, and every request it got as `(method, path, query, headers, body)`."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        fake = FastAPI()

        def not_found(message: str) -> JSONResponse:
            return JSONResponse(error_body(404, message), status_code=404)

        @fake.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            if request.headers.get("authorization") != f"Bearer {KEY}":
                return JSONResponse(error_body(401, "invalid API key"), status_code=401)
            if request.url.path == "/gpus/v2/endpoints":  # the CLI's lookup of a name or id prefix
                return await call_next(request)
            body = await request.body()
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": dict(request.query_params),
                    "idempotency_key": request.headers.get("idempotency-key"),
                    "body": json.loads(body) if body else None,
                }
            )
            parts = request.url.path.split("/")
            endpoint_id = parts[4] if parts[1] == "gpus" else parts[2]
            if endpoint_id != ENDPOINT:
                return not_found(f"endpoint {endpoint_id} not found")
            return await call_next(request)

        def job(job_id: str) -> dict[str, Any] | None:
            return self.jobs.get(job_id)

        @fake.post("/v1/{endpoint_id}/run")
        async def run(request: Request) -> dict[str, Any]:
            body = await request.json()
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = {"id": job_id, "status": "IN_QUEUE", "delayTime": 0, "executionTime": 0, **body}
            return {"id": job_id, "status": "IN_QUEUE"}

        @fake.post("/v1/{endpoint_id}/runsync")
        async def runsync(request: Request) -> dict[str, Any]:
            body = await request.json()
            return {"id": "job-sync", "status": "COMPLETED", "delayTime": 1, "executionTime": 2, "output": body}

        @fake.get("/v1/{endpoint_id}/status/{job_id}")
        async def status(job_id: str) -> Any:
            if job_id == "no-route":  # a 404 of neither the endpoint nor the job, as from an older server
                return not_found(f"no route GET /v1/{ENDPOINT}/status/{job_id} here")
            found = job(job_id)
            if found is None:
                return not_found(f"job {job_id} not found on endpoint {ENDPOINT}")
            wanted = found["input"].get("outcome", "COMPLETED")
            if found["status"] == "IN_QUEUE" and wanted == "IN_QUEUE":
                found.update(position=3, estimatedStartAt=None, reason=BLOCKED)
            elif found["status"] == "IN_QUEUE":
                found.update(status="IN_PROGRESS", delayTime=1200, workerId="worker-1")
            elif found["status"] == "IN_PROGRESS":
                found.update(status=wanted, executionTime=3400)
                if wanted == "COMPLETED":
                    found["output"] = {"echo": found["input"]}
                else:
                    found["error"] = found["input"].get("error", "handler: out of memory")
            return view(found)

        def view(found: dict[str, Any]) -> dict[str, Any]:
            keys = ["id", "status", "delayTime", "executionTime", "output", "error", "workerId", "position"]
            keys += ["estimatedStartAt", "reason"]
            return {key: found[key] for key in keys if key in found}

        @fake.get("/gpus/v2/endpoints")
        async def endpoints() -> dict[str, Any]:
            listed = [{"id": ENDPOINT, "name": "queue", "type": "async"}]
            return {"data": listed, "next_cursor": "", "has_more": False}

        @fake.get("/v1/{endpoint_id}/stream/{job_id}")
        async def stream(job_id: str) -> dict[str, Any]:
            found = self.jobs[job_id]
            polls = found["stream_polls"] = found.get("stream_polls", 0) + 1
            parts = {1: [], 2: [{"output": "a"}, {"output": {"n": 2}}], 3: [{"output": "c"}]}[polls]
            if polls == 3:  # the job ends with the outcome its input asks for
                found["status"] = found["input"].get("outcome", "COMPLETED")
                if found["status"] != "COMPLETED":
                    found["error"] = "handler: out of memory"
            return {"id": job_id, "status": found["status"] if polls == 3 else "IN_PROGRESS", "stream": parts}

        @fake.post("/v1/{endpoint_id}/cancel/{job_id}")
        async def cancel(job_id: str) -> Any:
            found = job(job_id)
            if found is None:
                return not_found(f"job {job_id} not found on endpoint {ENDPOINT}")
            found["status"] = "CANCELLED"
            return view(found)

        @fake.post("/v1/{endpoint_id}/retry/{job_id}")
        async def retry(job_id: str) -> dict[str, Any]:
            return {"id": job_id, "status": "IN_QUEUE"}

        @fake.post("/v1/{endpoint_id}/purge-queue")
        async def purge() -> dict[str, Any]:
            return {"removed": 2, "status": "completed"}

        @fake.get("/v1/{endpoint_id}/health")
        async def health() -> dict[str, Any]:
            return {
                "jobs": {"completed": 7, "failed": 2, "inProgress": 1, "inQueue": 4, "retried": 3},
                "workers": {"idle": 5, "running": 6},
                "reason": BLOCKED,
            }

        @fake.get("/gpus/v2/endpoints/{endpoint_id}/jobs")
        async def listed(request: Request) -> dict[str, Any]:
            wanted = request.query_params.get("status")
            rows = [
                {**view(found), "created_at": 1767225600, "attempts": 1}
                for found in reversed(self.jobs.values())
                if wanted is None or found["status"] == wanted
            ]
            return {"data": rows[: int(request.query_params.get("limit", 20))]}

        return fake


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, FakeJobs]]:
    fake = FakeJobs()
    with serving(fake.app()) as url:
        yield url, fake


@pytest.fixture
def fake(fake_server: tuple[str, FakeJobs]) -> FakeJobs:
    state = fake_server[1]
    state.jobs.clear()
    state.requests.clear()
    return state


@pytest.fixture
def cli(fake_server: tuple[str, FakeJobs], fake: FakeJobs, tmp_path: Path) -> Any:
    def invoke(*args: str, stdin: str | None = None) -> Result:
        env = {"XDG_CONFIG_HOME": str(tmp_path), "DOCKYARD_URL": fake_server[0], "DOCKYARD_API_KEY": KEY}
        return CliRunner().invoke(cli_app, list(args), env=env, input=stdin)

    return invoke


@pytest.fixture
def client(fake_server: tuple[str, FakeJobs], fake: FakeJobs) -> Iterator[Client]:
    with Client(fake_server[0], KEY) as made:
        yield made


def test_run_queues_the_input_with_its_options_and_prints_the_id(cli: Any, fake: FakeJobs) -> None:
    result = cli(
        "jobs", "run", ENDPOINT, "--input", '{"prompt": "hi"}', "--webhook", "http://hooks.example/done",
        "--execution-timeout", "60000", "--ttl", "120000", "--idempotency-key", "order-17",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "job-1\n"
    sent = fake.requests[-1]
    assert (sent["method"], sent["path"], sent["idempotency_key"]) == ("POST", f"/v1/{ENDPOINT}/run", "order-17")
    assert sent["body"] == {
        "input": {"prompt": "hi"},
        "webhook": "http://hooks.example/done",
        "policy": {"executionTimeout": 60000, "ttl": 120000},
    }


def test_run_reads_the_input_from_a_file_or_stdin_and_defaults_to_an_empty_object(
    cli: Any, fake: FakeJobs, tmp_path: Path
) -> None:
    source = tmp_path / "input.json"
    source.write_text('{"from": "file"}')
    assert cli("jobs", "run", ENDPOINT, "--input", f"@{source}").exit_code == 0
    assert cli("jobs", "run", ENDPOINT, "--input", "-", stdin='["from", "stdin"]').exit_code == 0
    as_json = cli("jobs", "run", ENDPOINT, "--json")
    assert json.loads(as_json.stdout) == {"id": "job-3", "status": "IN_QUEUE"}
    bodies = [sent["body"] for sent in fake.requests]
    assert bodies == [{"input": {"from": "file"}}, {"input": ["from", "stdin"]}, {"input": {}}]
    assert all(sent["idempotency_key"] is None for sent in fake.requests)


def test_run_refuses_input_that_is_not_json_before_any_request(cli: Any, fake: FakeJobs) -> None:
    result = cli("jobs", "run", ENDPOINT, "--input", "{prompt: hi}")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --input is not JSON")
    assert fake.requests == []


def test_run_wait_shows_the_status_and_prints_the_output(cli: Any) -> None:
    result = cli("jobs", "run", ENDPOINT, "--input", '{"n": 1}', "--wait", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"echo": {"n": 1}}
    assert "COMPLETED" in result.stderr  # the live view's last state
    assert "job-1" in result.stderr


def test_run_wait_json_prints_the_final_view(cli: Any) -> None:
    result = cli("jobs", "run", ENDPOINT, "--wait", "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["status"] == "COMPLETED"
    assert (view["delayTime"], view["executionTime"], view["workerId"]) == (1200, 3400, "worker-1")


@pytest.mark.parametrize("outcome", ["FAILED", "TIMED_OUT", "CANCELLED"])
def test_run_wait_exits_1_with_the_error_unless_completed(cli: Any, outcome: str) -> None:
    result = cli("jobs", "run", ENDPOINT, "--input", json.dumps({"outcome": outcome}), "--wait")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"error: job job-1 is {outcome}: handler: out of memory; " in result.stderr
    assert f"`dockyard jobs status {ENDPOINT} job-1 --json` shows all of it" in result.stderr


def test_run_wait_sums_up_an_sdk_handlers_exception(cli: Any) -> None:
    # How ppio-gpus and runpod report a handler's exception: a JSON text with the traceback in it.
    error = {"error_type": "<class 'RuntimeError'>", "error_message": "out of tokens", "error_traceback": "Tb (...)"}
    result = cli(
        "jobs", "run", ENDPOINT, "--input", json.dumps({"outcome": "FAILED", "error": json.dumps(error)}), "--wait"
    )
    assert result.exit_code == 1
    assert "error: job job-1 is FAILED: out of tokens (RuntimeError); " in result.stderr
    assert "Tb (...)" not in result.stderr


def test_run_wait_gives_up_after_the_timeout_saying_how_to_follow(cli: Any) -> None:
    result = cli("jobs", "run", ENDPOINT, "--input", '{"outcome": "IN_QUEUE"}', "--wait", "--timeout", "0.5")
    assert result.exit_code == 1
    assert "error: gave up after 0.5 s: job job-1 is still IN_QUEUE" in result.stderr
    assert f"`dockyard jobs status {ENDPOINT} job-1`" in result.stderr


def test_status_shows_the_job_and_json_gives_the_view(cli: Any) -> None:
    cli("jobs", "run", ENDPOINT, "--input", '{"outcome": "FAILED"}')
    first = cli("jobs", "status", ENDPOINT, "job-1")
    assert first.exit_code == 0, first.output
    assert "IN_PROGRESS" in first.stdout
    assert "1.2s" in first.stdout  # delayTime, in seconds
    assert "worker-1" in first.stdout
    second = cli("jobs", "status", ENDPOINT, "job-1", "--json")
    assert json.loads(second.stdout) == {
        "id": "job-1",
        "status": "FAILED",
        "delayTime": 1200,
        "executionTime": 3400,
        "error": "handler: out of memory",
        "workerId": "worker-1",
    }
    third = cli("jobs", "status", ENDPOINT, "job-1")
    assert "handler: out of memory" in third.stdout
    assert "3.4s" in third.stdout


def test_stream_prints_each_part_as_it_arrives_and_ends_with_the_jobs_status(cli: Any, fake: FakeJobs) -> None:
    job_id = json.loads(cli("jobs", "run", ENDPOINT, "--json").stdout)["id"]
    streamed = cli("jobs", "stream", ENDPOINT, job_id)
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == 'a\n{"n": 2}\nc\n'
    assert streamed.stderr == f"job {job_id}: COMPLETED\n"
    assert [sent["path"] for sent in fake.requests].count(f"/v1/{ENDPOINT}/stream/{job_id}") == 3


@pytest.mark.parametrize("outcome", ["FAILED", "TIMED_OUT", "CANCELLED"])
def test_stream_exits_1_unless_the_job_completed(cli: Any, outcome: str) -> None:
    job_id = cli("jobs", "run", ENDPOINT, "--input", json.dumps({"outcome": outcome})).stdout.strip()
    streamed = cli("jobs", "stream", ENDPOINT, job_id)
    assert streamed.exit_code == 1
    assert streamed.stdout == 'a\n{"n": 2}\nc\n'
    assert f"error: job {job_id} is {outcome}: handler: out of memory; " in streamed.stderr
    assert f"`dockyard jobs status {ENDPOINT} {job_id} --json`" in streamed.stderr


def test_status_of_a_queued_job_shows_its_place_and_why_it_waits(cli: Any) -> None:
    cli("jobs", "run", ENDPOINT, "--input", '{"outcome": "IN_QUEUE"}')
    shown = cli("jobs", "status", ENDPOINT, "job-1")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert any(line.split() == ["position", "3"] for line in lines)
    assert "WORKERS_FAILING since 2026-01-01T00:00:00Z" in shown.stdout
    assert "the last: exited with code 3" in shown.stdout
    assert "starts about" not in shown.stdout  # no estimate: none is shown


def test_cancel_prints_the_new_status(cli: Any, fake: FakeJobs) -> None:
    cli("jobs", "run", ENDPOINT)
    result = cli("jobs", "cancel", ENDPOINT, "job-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "job-1: CANCELLED\n"
    assert fake.requests[-1]["path"] == f"/v1/{ENDPOINT}/cancel/job-1"
    assert json.loads(cli("jobs", "cancel", ENDPOINT, "job-1", "--json").stdout)["status"] == "CANCELLED"


def test_list_shows_jobs_newest_first_filtered_by_status(cli: Any, fake: FakeJobs) -> None:
    assert "No jobs" in cli("jobs", "list", ENDPOINT).stderr
    for _ in range(3):
        cli("jobs", "run", ENDPOINT)
    cli("jobs", "cancel", ENDPOINT, "job-2")
    listed = cli("jobs", "list", ENDPOINT)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "ATTEMPTS"]
    assert [line.split()[0] for line in lines[1:]] == ["job-3", "job-2", "job-1"]
    assert "2026-01-01T00:00:00Z" in lines[1]
    only = cli("jobs", "list", ENDPOINT, "--status", "cancelled", "--limit", "10", "--json")
    assert [job["id"] for job in json.loads(only.stdout)["data"]] == ["job-2"]
    assert fake.requests[-1]["query"] == {"status": "CANCELLED", "limit": "10"}


def test_endpoints_health_counts_jobs_and_workers(cli: Any, fake: FakeJobs) -> None:
    result = cli("endpoints", "health", ENDPOINT)
    assert result.exit_code == 0, result.output
    header, row, *why = result.stdout.splitlines()
    assert header.split()[:2] == ["IN", "QUEUE"]
    assert row.split() == ["4", "1", "7", "2", "3", "5", "6"]
    assert "WORKERS_FAILING" in "\n".join(why)  # why its queue does not move
    assert fake.requests[-1]["path"] == f"/v1/{ENDPOINT}/health"
    as_json = json.loads(cli("endpoints", "health", ENDPOINT, "--json").stdout)
    assert as_json["workers"] == {"idle": 5, "running": 6}
    assert as_json["reason"] == BLOCKED


UNKNOWN = "0b7e7c1e-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "run", UNKNOWN),
        ("jobs", "status", UNKNOWN, "job-1"),
        ("jobs", "cancel", UNKNOWN, "job-1"),
        ("jobs", "list", UNKNOWN),
        ("jobs", "stream", UNKNOWN, "job-1"),
        ("endpoints", "health", UNKNOWN),
    ],
)
def test_an_unknown_endpoint_says_so_and_where_to_look(cli: Any, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: endpoint {UNKNOWN} not found among your async endpoints; "
        "`dockyard endpoints list` shows yours and their types\n"
    )
    assert "Traceback" not in result.output


def test_an_endpoint_is_named_by_its_name_or_id_prefix(cli: Any, fake: FakeJobs) -> None:
    for given in ("queue", "ep-a"):
        assert cli("jobs", "list", given).exit_code == 0
        assert fake.requests[-1]["path"] == f"/gpus/v2/endpoints/{ENDPOINT}/jobs"
    unknown = cli("jobs", "list", "ep-nope")
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        "error: no endpoint has the id, name or id prefix 'ep-nope'; `dockyard endpoints list` lists yours\n"
    )


def test_an_unknown_job_says_so(cli: Any) -> None:
    for command in ("status", "cancel"):
        result = cli("jobs", command, ENDPOINT, "job-404")
        assert result.exit_code == 1
        assert result.stderr == (
            f"error: job job-404 not found on endpoint {ENDPOINT} (finished jobs are kept only for their ttl); "
            f"`dockyard jobs list {ENDPOINT}` shows its jobs\n"
        )


def test_another_404_is_the_servers_error_as_it_is(cli: Any) -> None:
    result = cli("jobs", "status", ENDPOINT, "no-route", "--json")
    assert result.exit_code == 1
    assert result.stderr == f"error: no route GET /v1/{ENDPOINT}/status/no-route here\n"


def test_a_wrong_key_is_the_servers_error(cli: Any, fake_server: tuple[str, FakeJobs], tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "DOCKYARD_URL": fake_server[0], "DOCKYARD_API_KEY": "wrong"}
    result = CliRunner().invoke(cli_app, ["jobs", "status", ENDPOINT, "job-1"], env=env)
    assert result.exit_code == 1
    assert result.stderr == "error: invalid API key\n"


def test_the_sdk_streams_parts_until_the_job_is_final(client: Client, fake: FakeJobs) -> None:
    job_id = client.run_job(ENDPOINT, {"parts": 3})["id"]
    assert list(client.stream_job(ENDPOINT, job_id, interval=0.01)) == ["a", {"n": 2}, "c"]
    assert [sent["path"] for sent in fake.requests].count(f"/v1/{ENDPOINT}/stream/{job_id}") == 3


def test_the_sdk_runs_sync_retries_and_purges(client: Client, fake: FakeJobs) -> None:
    answer = client.run_job_sync(ENDPOINT, {"x": 1}, webhook="http://hooks.example/done", ttl_ms=5000, wait_ms=2000)
    assert answer["output"] == {"input": {"x": 1}, "webhook": "http://hooks.example/done", "policy": {"ttl": 5000}}
    assert fake.requests[0]["query"] == {"wait": "2000"}
    assert client.retry_job(ENDPOINT, "job-9") == {"id": "job-9", "status": "IN_QUEUE"}
    assert client.purge_queue(ENDPOINT)["removed"] == 2
    assert [(sent["method"], sent["path"]) for sent in fake.requests[1:]] == [
        ("POST", f"/v1/{ENDPOINT}/retry/job-9"),
        ("POST", f"/v1/{ENDPOINT}/purge-queue"),
    ]


def test_the_sdk_wait_reports_each_change_and_returns_a_late_job_unfinished(client: Client) -> None:
    seen: list[str] = []
    done = client.run_job(ENDPOINT, {})["id"]
    final = client.wait_for_job(ENDPOINT, done, 30, on_change=lambda view: seen.append(view["status"]), interval=0.01)
    assert final["status"] == "COMPLETED"
    assert seen == ["IN_PROGRESS", "COMPLETED"]
    late = client.run_job(ENDPOINT, {"outcome": "IN_QUEUE"})["id"]
    assert client.wait_for_job(ENDPOINT, late, 0.2, interval=0.01)["status"] == "IN_QUEUE"


def test_the_sdk_raises_the_servers_404(client: Client) -> None:
    with pytest.raises(ApiError) as raised:
        client.endpoint_health("ep-nope")
    assert (raised.value.code, raised.value.message) == (404, "endpoint ep-nope not found")
