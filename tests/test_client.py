"""The SDK's error decoding and its wait loop, against scripted answers (httpx's mock transport)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from dockyard.client import GONE, ApiError, Client, ContainerFailed, DockyardError, ServerUnreachable, WaitTimeout

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> Client:
    return Client("http://dockyard.test", "key-1", transport=httpx.MockTransport(handler))


def _container(status: str, reason: str = "", name: str = "web") -> dict[str, str]:
    return {"id": "c1", "name": name, "status": status, "reason": reason}


def _replay(answers: list[httpx.Response]) -> tuple[Handler, list[httpx.Request]]:
    """A handler giving `answers` in turn (the last one forever), and the requests it saw."""
    seen: list[httpx.Request] = []
    pending: Iterator[httpx.Response] = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(pending, answers[-1])

    return handler, seen


def test_error_body_becomes_api_error_with_every_field() -> None:
    body = {
        "code": 422,
        "reason": "INVALID_ARGUMENT",
        "message": "product: no such product; list them with GET /api/v1/containers/products",
        "details": [{"field": "product", "message": "no such product"}],
    }
    with _client(lambda _: httpx.Response(422, json=body)) as client, pytest.raises(ApiError) as raised:
        client.get_container("c1")
    assert raised.value.code == 422
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert raised.value.message == body["message"]
    assert raised.value.details == body["details"]


def test_an_answer_that_is_not_ours_still_gives_a_usable_error() -> None:
    with (
        _client(lambda _: httpx.Response(502, text="<html>Bad Gateway</html>")) as client,
        pytest.raises(ApiError) as raised,
    ):
        client.list_templates()
    assert raised.value.code == 502
    assert raised.value.reason == "HTTP_502"
    assert "Bad Gateway" in raised.value.message


def test_a_success_that_is_not_json_says_to_check_the_url() -> None:
    with (
        _client(lambda _: httpx.Response(200, text="<html>welcome</html>")) as client,
        pytest.raises(DockyardError, match="check that the URL points at a Dockyard server"),
    ):
        client.list_idcs()


def test_refused_connection_is_server_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(refuse) as client, pytest.raises(ServerUnreachable) as raised:
        client.list_idcs()
    assert raised.value.message == (
        "cannot reach the Dockyard server at http://dockyard.test; is `dockyard server` running?"
    )


def test_requests_carry_the_key_and_the_query() -> None:
    handler, seen = _replay([httpx.Response(200, json={"items": [], "total": 0, "page": 2, "pageSize": 5})])
    with _client(handler) as client:
        client.list_containers(page=2, page_size=5, status="running")
    assert seen[0].headers["Authorization"] == "Bearer key-1"
    assert dict(seen[0].url.params) == {"page": "2", "pageSize": "5", "status": "running"}


def test_wait_stops_at_the_first_error_with_its_reason() -> None:
    handler, seen = _replay(
        [
            httpx.Response(200, json=_container("creating")),
            httpx.Response(200, json=_container("error", "image localhost/x not found")),
            httpx.Response(200, json=_container("running")),
        ]
    )
    changes: list[str] = []
    with _client(handler) as client, pytest.raises(ContainerFailed) as raised:
        client.wait_for_containers(
            ["c1"], interval=0.001, on_change=lambda states: changes.append(str((states["c1"] or {})["status"]))
        )
    assert raised.value.message == "container web (c1) failed: image localhost/x not found"
    assert changes == ["creating", "error"]
    assert len(seen) == 2


def test_wait_returns_once_every_container_is_running() -> None:
    handler, _ = _replay(
        [httpx.Response(200, json=_container("creating")), httpx.Response(200, json=_container("running"))]
    )
    with _client(handler) as client:
        states = client.wait_for_containers(["c1"], interval=0.001)
    assert states == {"c1": _container("running")}


def test_a_404_counts_as_gone_which_ends_a_delete_wait() -> None:
    not_found = {"code": 404, "reason": "NOT_FOUND", "message": "no container c1", "details": []}
    handler, _ = _replay([httpx.Response(200, json=_container("terminating")), httpx.Response(404, json=not_found)])
    with _client(handler) as client:
        states = client.wait_for_containers(["c1"], until={GONE}, interval=0.001)
    assert states == {"c1": None}


def test_wait_gives_up_after_its_timeout_naming_what_is_late() -> None:
    handler, _ = _replay([httpx.Response(200, json=_container("creating", "pulling image"))])
    with _client(handler) as client, pytest.raises(WaitTimeout) as raised:
        client.wait_for_containers(["c1"], timeout=0.01, interval=0.001)
    assert "web is creating" in raised.value.message
    assert raised.value.containers == {"c1": _container("creating", "pulling image")}


def test_follow_logs_yields_the_streamed_text() -> None:
    handler, seen = _replay([httpx.Response(200, text="line 1\nline 2\n")])
    with _client(handler) as client:
        text = "".join(client.follow_container_logs("c1", tail=5))
    assert text == "line 1\nline 2\n"
    assert dict(seen[0].url.params) == {"tail": "5", "follow": "true"}
