"""Logging: stdlib `logging` everywhere, formatted by structlog's `ProcessorFormatter` as one
JSON object per line or as readable console lines (coloured on a terminal), with the current job
id and request id attached to every record through context variables."""

from __future__ import annotations

import atexit
import io
import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import structlog

job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

LogFormat = Literal["json", "console", "text"]  # "text": the older name of "console"

EventDict = MutableMapping[str, Any]

_DROPPED = frozenset({"color_message"})  # uvicorn's ANSI-coloured copy of msg


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # An explicit `extra={"job_id": …}` wins over the context (the API logs jobs it creates).
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def _timestamp(_: Any, __: str, event: EventDict) -> EventDict:
    """`ts`: when the record was made (not when it is formatted), UTC, to the millisecond."""
    created = event["_record"].created
    event["ts"] = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return event


def _without_empty(_: Any, __: str, event: EventDict) -> EventDict:
    return {k: v for k, v in event.items() if v is not None and k not in _DROPPED}


def _exception_as_exc(_: Any, __: str, event: EventDict) -> EventDict:
    if "exception" in event:
        event["exc"] = event.pop("exception")
    return event


class _Escaped:
    """A console value shown in JSON string syntax (the console renderer reprs what is not a
    str, and shows a str containing no space or quote as it is)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return json.dumps(self.text)


def _terminal_safe(_: Any, __: str, event: EventDict) -> EventDict:
    """Console lines: text that could forge a line, a field or a terminal escape is shown
    escaped (JSON string syntax); the renderer quotes a value with a space, quote or `=`."""
    for key, value in event.items():
        if not isinstance(value, str) or key == "exc_info":
            continue
        if key == "event":
            if not value.isprintable():
                event[key] = json.dumps(value)
        elif not value or not value.isprintable():
            event[key] = _Escaped(value)
    return event


def _traceback(out: TextIO, exc_info: Any) -> None:
    """A plain traceback (never the rich formatter's locals: they can hold keys), its
    non-printable characters but newlines escaped: an exception's text can come from outside."""
    buffer = io.StringIO()
    structlog.dev.plain_traceback(buffer, exc_info)
    out.write(
        "".join(
            c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in buffer.getvalue()
        )
    )


def _in_order(_: Any, __: str, event: EventDict) -> EventDict:
    """JSON lines: `ts`, `level`, `logger` and `msg` first, then the fields as they came."""
    head = {key: event.pop(key) for key in ("ts", "level", "logger") if key in event}
    return {**head, "msg": event.pop("event", ""), **event}


_PRE_CHAIN: tuple[Any, ...] = (
    _timestamp,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.ExtraAdder(),
    _without_empty,
)


def formatter(fmt: LogFormat = "json", *, colors: bool = False) -> logging.Formatter:
    """The formatter for `fmt`: `json` (keys `ts`, `level`, `logger`, `msg`, each extra field,
    `exc` for a traceback) or `console`/`text` (`ts level logger msg key=value…`, then the
    traceback; ANSI colours only when `colors`)."""
    if fmt == "json":
        chain: list[Any] = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _exception_as_exc,
            _in_order,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        chain = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _terminal_safe,
            structlog.dev.ConsoleRenderer(
                colors=colors,
                exception_formatter=_traceback,
                sort_keys=False,
                timestamp_key="ts",
                pad_event_to=0,
            ),
        ]
    if fmt == "json":
        return _JSONLines(processors=chain, foreign_pre_chain=_PRE_CHAIN)
    return structlog.stdlib.ProcessorFormatter(processors=chain, foreign_pre_chain=_PRE_CHAIN)


_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)


class _JSONLines(structlog.stdlib.ProcessorFormatter):
    """The json format: a record with no traceback or stack (nearly all, and every access line)
    is written here directly, the same line the processor chain writes (tests/unit/test_logs.py
    compares them) at a fraction of its cost; the others go through the chain."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        event: EventDict = {
            "event": record.getMessage(),
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for key, value in record.__dict__.items():  # the extra fields, as ExtraAdder adds them
            if key not in _RECORD_KEYS:
                event[key] = value
        return json.dumps(_in_order(None, "", _without_empty(None, "", event)), default=str)


class _Handoff(logging.handlers.QueueHandler):
    """Hands each record to the writer thread as it is (the queue is in-process: no pickling,
    so the traceback stays for the formatter), its message merged with its arguments. The root
    logger's only handler: the record is no one else's, so it is not copied."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        return record


_listener: logging.handlers.QueueListener | None = None


@atexit.register  # what is still queued is written before the process ends
def stop_writer() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure(level: str = "INFO", fmt: LogFormat = "json") -> None:
    """The root logger writes to stderr from a thread of its own: formatting and the write stay
    off the event loop. The context (job and request ids) is read where the record is made."""
    global _listener
    stop_writer()
    # No line shows the caller's file, thread or process: not looked up for every record.
    logging._srcfile = None  # the logging HOWTO's "Optimization" switch
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(formatter(fmt, colors=fmt != "json" and sys.stderr.isatty()))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handoff = _Handoff(records)
    handoff.addFilter(ContextFilter())
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [handoff]
    root.setLevel(level)
    # arq logs every job start/end at INFO with its arguments; ours are only ids, but keep it quiet.
    logging.getLogger("arq").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").setLevel(max(logging.WARNING, root.level))
