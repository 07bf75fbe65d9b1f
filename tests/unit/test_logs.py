"""The text log format carries every field a record has, quoted so hostile text cannot forge a
line or a field."""

from __future__ import annotations

import json
import logging
import sys

from dockguard.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("dockguard.x", logging.ERROR, "f.py", 1, "it broke", None, None)
    entry.__dict__.update(extra)
    return entry


def test_text_lines_end_with_the_extra_fields() -> None:
    line = TextFormatter().format(record(why="the engine refused", job_id="abc", tries=2))
    assert line.endswith(
        ' ERROR   dockguard.x it broke why="the engine refused" job_id=abc tries=2'
    )


def test_hostile_field_values_stay_on_one_line_and_in_one_field() -> None:
    why = 'x\n2026-01-01 00:00:00,000 INFO forged ok=1\r\x1b[2J" job_id=forged'
    line = TextFormatter().format(record(why=why, empty=""))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    value = line.split(" why=", 1)[1].rsplit(" empty=", 1)[0]
    assert json.loads(value) == why
    assert line.endswith(' empty=""')


def test_a_traceback_follows_the_fields() -> None:
    try:
        raise ValueError("inner")
    except ValueError:
        entry = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, None)
        entry.exc_info = sys.exc_info()
    entry.why = "because"
    first, *rest = TextFormatter().format(entry).splitlines()
    assert first.endswith("failed why=because")
    assert rest[-1] == "ValueError: inner"


def test_json_lines_do_not_carry_the_text_formats_timestamp() -> None:
    entry = record(why="w")
    TextFormatter().format(entry)  # sets entry.asctime
    assert "asctime" not in json.loads(JsonFormatter().format(entry))
