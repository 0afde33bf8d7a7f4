"""Structured logs: structlog renders both its own events and the standard library's (uvicorn, alembic), in a
thread of their own, plainly, bounded, and with secrets masked.

- A traceback is rendered as the standard library renders it, never with local variables: structlog's console
  renderer otherwise uses rich's pretty tracebacks where rich is installed, which print every frame's locals,
  and a request's locals hold its API key (one such traceback was 3 MB of log).
- The thread that logs only puts the record on a bounded queue (`QueueHandler`); a `QueueListener` thread renders
  and writes it. A traceback's rendering or a slow stderr never holds the event loop, and a flood that outruns the
  writer drops records (counted, and said in the log) rather than growing without bound.
- Each rendered record passes `Redactor` (redaction.py), which masks the configured secrets and anything shaped
  like a credential, and is cut to `MAX_RECORD_CHARS`.
"""

from __future__ import annotations

import atexit
import copy
import logging
import queue
import sys
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any

import structlog

from dockyard.config import Settings
from dockyard.redaction import Redactor

# One record's rendering at most. A plain traceback through the whole ASGI stack, chained exceptions included, is
# a few tens of KiB; what is cut is the middle, so the event and the exception that ended the traceback stay.
MAX_RECORD_CHARS = 64 * 1024
QUEUE_RECORDS = 10_000  # records waiting for the writer thread; beyond, new ones are dropped and counted
_MARGIN = 4096  # longer than any secret `Redactor` masks (a key, a token, a JWT in an Authorization header)

_redactor = Redactor()
_listener: QueueListener | None = None


def add_secrets(*values: str) -> None:
    """Mask these values wherever they appear in a log line from now on (empty or short ones are ignored)."""
    _redactor.add(*values)


def redact(text: str, limit: int = MAX_RECORD_CHARS) -> str:
    """`text` as a log line shows it: secrets masked and, over `limit` characters, only its head and tail kept
    with the cut said. Only what is kept is searched for secrets, with `_MARGIN` characters more on the side of
    the cut, dropped after: a search of megabytes would hold the interpreter lock, and so the event loop, for a
    tenth of a second a megabyte, and a secret the cut goes through is masked or dropped, never shown in part."""
    if len(text) <= limit:
        return _redactor.redact(text)
    keep = limit // 2
    head = _redactor.redact(text[: keep + _MARGIN])[:-_MARGIN]
    tail = _redactor.redact(text[-keep - _MARGIN :])[_MARGIN:]
    return f"{head}\n[... {len(text) - 2 * keep} characters cut ...]\n{tail}"


def _timestamp(_: Any, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """When the record was made (not when the writer thread got to it)."""
    record = event.get("_record")
    created = record.created if isinstance(record, logging.LogRecord) else None
    moment = datetime.fromtimestamp(created, UTC) if created is not None else datetime.now(UTC)
    event["timestamp"] = moment.isoformat().replace("+00:00", "Z")
    return event


def _capture_exc_info(_: Any, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """`exc_info=True` means the exception being handled now, in this thread: resolved before the record leaves it."""
    if event.get("exc_info") is True:
        event["exc_info"] = sys.exc_info()
    return event


class _SafeFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with each rendering passed through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _report_handler_error(record: logging.LogRecord) -> None:
    """What `Handler.handleError` would print, less the record's message and arguments, which may hold secrets."""
    error = sys.exc_info()[1]
    sys.stderr.write(f"a log record of {record.name} could not be written: {type(error).__name__}\n")


class _Writer(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes rendered records to stderr, in the listener's thread."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        _report_handler_error(record)


class _Handoff(QueueHandler):
    """Puts records on the queue without rendering them: the standard `prepare` formats the message and the
    traceback in the calling thread, which is the work this handler exists to move off it. Only the message's
    arguments are merged here (they may change once the call returns); the exception is rendered by the writer."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        if not isinstance(record.msg, dict):  # a dict is structlog's event, rendered by the writer
            try:
                record.msg = record.getMessage()
            except Exception:
                record.msg = f"{record.msg} [its arguments did not fit its format]"
            record.args = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                self.queue.put_nowait(self._dropped_notice())
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _dropped_notice(self) -> logging.LogRecord:
        message = f"{self.dropped} log records dropped: they came faster than the log could be written"
        return logging.LogRecord(__name__, logging.WARNING, __file__, 0, message, None, None)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        _report_handler_error(record)


class _Listener(QueueListener):
    def __init__(self, records: queue.Queue[logging.LogRecord], writer: logging.Handler) -> None:
        super().__init__(records, writer)
        self.records = records

    def enqueue_sentinel(self) -> None:
        # Blocking: the queue may be full at exit, and the writer is draining it. The sentinel is None.
        self.records.put(None)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._thread is not None:  # stopped already (flushed, then exiting)
            super().stop()


def configure_logging(settings: Settings) -> None:
    """Route every log record of the process through the writer thread, rendered in `settings.log_format`, at
    `settings.log_level` and above, with the settings' secrets masked (and those `add_secrets` adds). Called
    again, it replaces the previous configuration (its writer finishes what it holds first)."""
    global _listener
    add_secrets(*settings.log_secrets())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _timestamp,
            _capture_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: list[structlog.types.Processor] = (
        # format_exc_info renders the traceback as the standard library does: no locals.
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if settings.log_format == "json"
        else [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
    )
    formatter = _SafeFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, _timestamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    writer = _Writer(sys.stderr)
    writer.setFormatter(formatter)
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_RECORDS)
    root = logging.getLogger()
    previous, _listener = _listener, _Listener(records, writer)
    root.handlers[:] = [_Handoff(records)]
    if previous is not None:
        previous.stop()
    else:
        atexit.register(flush_logs)
    _listener.start()
    root.setLevel(settings.log_level.upper())
    # httpx logs every request at INFO: one line per health probe of every worker.
    for noisy in ("docker", "urllib3", "aiosqlite", "asyncio", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush_logs() -> None:
    """Write every record queued so far, and stop the writer: records logged afterwards wait in the queue until
    `configure_logging` starts another. Run at exit, so a process ends with its log written."""
    if _listener is not None:
        _listener.stop()
