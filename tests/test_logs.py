"""The log (logs.py): tracebacks rendered plainly without locals in both formats, for the standard library's
records (uvicorn's "Exception in ASGI application" included) and structlog's; rendering done by the writer
thread, not the one that logs; secrets masked; records bounded; a flood dropped and counted, never blocking."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from logging.handlers import QueueHandler
from pathlib import Path

import httpx
import pytest
import structlog
from starlette.types import Receive, Scope, Send

from dockyard import logs
from dockyard.config import Settings
from tests.live import serving

ADMIN = "planted-admin-token-0123"
KEY = "dy_" + "K" * 32
LOCAL = "planted-local-value"


class Captured:
    """The log of the process while the test runs, as the writer thread wrote it."""

    def __init__(self, stream: io.StringIO, format: str) -> None:
        self.stream = stream
        self.format = format

    def text(self) -> str:
        logs.flush_logs()
        return self.stream.getvalue()


@pytest.fixture(params=["console", "json"])
def captured(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    """`configure_logging` as the server runs it, writing to a buffer; pytest's own handlers are given back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure_logging(Settings(data_dir=tmp_path, admin_token=ADMIN, log_format=request.param))
    try:
        yield Captured(stream, request.param)
    finally:
        logs.flush_logs()
        root.handlers[:], root.level = handlers, level


def fail_holding_a_key() -> None:
    authorization = f"Bearer {KEY}"  # noqa: F841 - a local a traceback with locals would show
    planted = LOCAL  # noqa: F841
    raise RuntimeError("the planted failure")


def test_a_traceback_is_plain_without_locals_and_masks_what_its_message_holds(captured: Captured) -> None:
    try:
        fail_holding_a_key()
    except RuntimeError:
        logging.getLogger("dockyard.test").exception("unhandled error on GET /x with %s", ADMIN)
    text = captured.text()
    assert "the planted failure" in text
    assert "fail_holding_a_key" in text  # the frames are there
    assert LOCAL not in text
    assert KEY not in text
    assert ADMIN not in text
    assert "Bearer ******" not in text  # masked or not, the local is not rendered at all
    assert "unhandled error on GET /x with ******" in text


def test_structlog_events_are_rendered_the_same_way(captured: Captured) -> None:
    log = structlog.get_logger("dockyard.test")
    try:
        fail_holding_a_key()
    except RuntimeError:
        log.exception("failed", key=KEY)
    text = captured.text()
    assert "the planted failure" in text
    assert "fail_holding_a_key" in text
    assert LOCAL not in text
    assert KEY not in text
    assert "dy_******" in text


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])  # noqa: F841 - the request's Authorization, as a local
    fail_holding_a_key()


def test_uvicorns_exception_in_asgi_application_has_no_locals(captured: Captured) -> None:
    with serving(failing_app) as url:
        answer = httpx.get(f"{url}/x", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 500
    text = captured.text()
    assert "Exception in ASGI application" in text
    assert "the planted failure" in text
    assert LOCAL not in text
    assert KEY not in text


def test_the_traceback_is_rendered_by_the_writer_thread(captured: Captured) -> None:
    rendered_in: list[str] = []

    class Traced(Exception):
        def __str__(self) -> str:
            rendered_in.append(threading.current_thread().name)
            return "traced"

    root = logging.getLogger()
    root.handlers[:] = [handler for handler in root.handlers if isinstance(handler, QueueHandler)]  # not pytest's
    try:
        raise Traced
    except Traced:
        logging.getLogger("dockyard.test").exception("failed")
    assert "traced" in captured.text()
    assert rendered_in
    assert threading.current_thread().name not in rendered_in


def test_each_format_renders_its_lines(captured: Captured) -> None:
    logging.getLogger("dockyard.test").warning("plain %s", "event")
    lines = [line for line in captured.text().splitlines() if line.strip()]
    if captured.format == "json":
        assert json.loads(lines[-1])["event"] == "plain event"
        assert json.loads(lines[-1])["level"] == "warning"
    else:
        assert "[warning  ] plain event" in lines[-1]


def test_a_huge_record_is_cut_in_the_middle(captured: Captured) -> None:
    logging.getLogger("dockyard.test").warning("start %s end", "x" * (3 * logs.MAX_RECORD_CHARS))
    text = captured.text()
    assert len(text) < logs.MAX_RECORD_CHARS + 200
    assert "start" in text
    assert "end" in text
    assert "characters cut" in text


@pytest.mark.parametrize("offset", range(-40, 41, 4))
def test_a_secret_the_cut_goes_through_is_never_shown_in_part(offset: int) -> None:
    keep = logs.MAX_RECORD_CHARS // 2
    for at in (keep + offset, 3 * logs.MAX_RECORD_CHARS - keep + offset):  # across the head's cut, the tail's
        text = "x " * (at // 2) + KEY + " y" * (2 * logs.MAX_RECORD_CHARS)
        text = text[: 3 * logs.MAX_RECORD_CHARS]
        shown = logs.redact(text)
        assert len(shown) < logs.MAX_RECORD_CHARS + 100
        assert not any(KEY[:n] in shown or KEY[-n:] in shown for n in range(8, len(KEY) + 1)), at


def test_a_flood_is_dropped_and_counted_instead_of_blocking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer is stuck (a stderr that does not take writes); logging still returns at once, and once the
    writer moves again the log says how many records it lost."""
    stuck = threading.Event()

    class Stuck(io.StringIO):
        def write(self, text: str) -> int:
            stuck.wait(30)
            return super().write(text)

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = Stuck()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logs, "QUEUE_RECORDS", 10)
    logs.configure_logging(Settings(data_dir=tmp_path))
    try:
        log = logging.getLogger("dockyard.test")
        for n in range(100):
            log.warning("record %d", n)
        stuck.set()
        waiting = root.handlers[0]
        assert isinstance(waiting, QueueHandler)
        while not waiting.queue.empty():  # type: ignore[attr-defined]
            time.sleep(0.01)
        log.warning("after")
        logs.flush_logs()
        text = stream.getvalue()
    finally:
        stuck.set()
        logs.flush_logs()
        root.handlers[:], root.level = handlers, level
    assert "log records dropped" in text
    assert "after" in text
    assert text.count("record ") < 100
