"""Both log formats carry every field a record has; the console format escapes hostile text so it
cannot forge a line, a field or a terminal escape, and the JSON format keeps its keys."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from dockguard.logs import (
    _RECORD_KEYS,
    ContextFilter,
    LogFormat,
    formatter,
    job_id_var,
    request_id_var,
)

HOSTILE = 'x\n2026-01-01 00:00:00,000 INFO forged ok=1\r\x1b[2J" job_id=forged'


def record(msg: str = "it broke", **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("dockguard.x", logging.ERROR, "f.py", 1, msg, None, None)
    entry.__dict__.update(extra)
    return entry


def failed_record() -> logging.LogRecord:
    try:
        raise ValueError("inner \x1b[31m")
    except ValueError:
        entry = record("failed", why="because")
        entry.exc_info = sys.exc_info()
    return entry


def test_json_lines_start_with_ts_level_logger_msg_then_the_fields() -> None:
    line = formatter("json").format(record(why="the engine refused", job_id="abc", tries=2))
    entry = json.loads(line)
    assert list(entry)[:4] == ["ts", "level", "logger", "msg"]
    assert entry["level"] == "error" and entry["logger"] == "dockguard.x"
    assert entry["msg"] == "it broke"
    assert entry["ts"].endswith("+00:00")
    assert {k: entry[k] for k in ("why", "job_id", "tries")} == {
        "why": "the engine refused",
        "job_id": "abc",
        "tries": 2,
    }


def test_json_lines_leave_out_empty_fields_and_uvicorns_coloured_copy() -> None:
    entry = json.loads(formatter("json").format(record(none=None, color_message="\x1b[1mx")))
    assert "none" not in entry and "color_message" not in entry


def test_the_timestamp_is_when_the_record_was_made() -> None:
    entry = record()
    entry.created = 0.25
    assert json.loads(formatter("json").format(entry))["ts"] == "1970-01-01T00:00:00.250+00:00"


def test_a_json_traceback_is_in_exc_on_the_same_line() -> None:
    line = formatter("json").format(failed_record())
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["why"] == "because" and entry["exc"].endswith("ValueError: inner \x1b[31m")


def test_json_lines_escape_hostile_text() -> None:
    line = formatter("json").format(record(HOSTILE, why=HOSTILE))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    entry = json.loads(line)
    assert entry["msg"] == HOSTILE and entry["why"] == HOSTILE


def test_console_lines_end_with_the_extra_fields() -> None:
    line = formatter("console").format(record(why="the engine refused", job_id="abc", tries=2))
    assert " it broke [dockguard.x] " in line
    assert line.endswith(" why='the engine refused' job_id=abc tries=2")


@pytest.mark.parametrize("fmt", ["console", "text"])
def test_hostile_console_text_stays_on_one_line_and_in_one_field(fmt: LogFormat) -> None:
    escape_alone = "\x1b[2J"  # no space or quote: the renderer alone would show it as it is
    line = formatter(fmt).format(record(HOSTILE, why=HOSTILE, esc=escape_alone, empty=""))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert json.dumps(HOSTILE) in line  # the message, escaped
    value = line.split(" why=", 1)[1].rsplit(" esc=", 1)[0]
    assert json.loads(value) == HOSTILE
    assert f" esc={json.dumps(escape_alone)} " in line
    assert line.endswith(' empty=""')


def test_a_console_traceback_follows_the_fields_with_escapes_escaped() -> None:
    first, *rest = formatter("console").format(failed_record()).splitlines()
    assert first.endswith("failed [dockguard.x] why=because")
    assert rest[-1] == "ValueError: inner \\u001b[31m"


def test_colours_only_when_asked() -> None:
    assert "\x1b[" not in formatter("console").format(record(why="w"))
    assert "\x1b[" in formatter("console", colors=True).format(record(why="w"))


def test_the_context_filter_adds_the_job_and_request_ids() -> None:
    job_token, request_token = job_id_var.set("job-1"), request_id_var.set("req-1")
    try:
        entry = record()
        ContextFilter().filter(entry)
        explicit = record(job_id="other")
        ContextFilter().filter(explicit)
    finally:
        job_id_var.reset(job_token)
        request_id_var.reset(request_token)
    line = json.loads(formatter("json").format(entry))
    assert (line["job_id"], line["request_id"]) == ("job-1", "req-1")
    assert json.loads(formatter("json").format(explicit))["job_id"] == "other"


# Field names an `extra` may use (the stdlib refuses `message`, `asctime` and the record's own),
# including the ones the line itself writes, and values of every kind a field can hold.
_NAMES = st.sampled_from(["ts", "level", "logger", "event", "color_message", "why", "job_id"])
_VALUES = st.one_of(
    st.none(), st.text(), st.integers(), st.floats(), st.booleans(), st.lists(st.text())
)


@given(
    msg=st.text(),
    level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, 60]),
    extra=st.dictionaries(st.one_of(_NAMES, st.text(min_size=1)), _VALUES, max_size=6),
)
def test_the_direct_json_line_is_the_processor_chains_line(
    msg: str, level: int, extra: dict[str, object]
) -> None:
    """Differential: the json format writes most records itself, skipping structlog's chain; for
    any message, level and extra fields both must write the same line."""
    extra = {k: v for k, v in extra.items() if k not in _RECORD_KEYS}
    entry = logging.LogRecord("dockguard.x", level, "f.py", 1, msg, None, None)
    entry.__dict__.update(extra)
    fmt = formatter("json")
    assert isinstance(fmt, structlog.stdlib.ProcessorFormatter)
    chain_line = structlog.stdlib.ProcessorFormatter.format(fmt, logging.makeLogRecord(vars(entry)))
    assert fmt.format(entry) == chain_line


def test_a_record_with_a_traceback_goes_through_the_chain() -> None:
    entry = json.loads(formatter("json").format(failed_record()))
    assert "ValueError" in entry["exc"]
