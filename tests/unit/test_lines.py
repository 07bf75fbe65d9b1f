"""Hostile output made safe to store and show (dockguard.lines), and cut into lines as the
build stream and the container's output arrive (sandbox/build.py, sandbox/run.py)."""

from __future__ import annotations

import unicodedata
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockguard.lines import clean_line
from dockguard.sandbox import run
from dockguard.sandbox.build import _Progress


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text\twith tab", "plain text\twith tab"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;window title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x9b2Jc1 csi", "c1 csi"),
        ("\x1bPdevice control\x1b\\kept", "kept"),
        ("10%\r50%\r100%", "100%"),
        ("done\r\n", "done"),
        ("nul\x00bell\x07del\x7f", "nulbelldel"),
        ("bidi \u202eevil\u202c zero\u200bwidth", "bidi evil zerowidth"),
        (b"bad \xff\xfe utf8", "bad \ufffd\ufffd utf8"),
    ],
)
def test_clean_line(raw: str | bytes, clean: str) -> None:
    assert clean_line(raw) == clean


def test_long_lines_are_capped_with_an_ellipsis() -> None:
    assert clean_line("y" * 50, max_chars=10) == "y" * 9 + "…"
    assert clean_line("y" * 10, max_chars=10) == "y" * 10


@given(st.text() | st.binary())
def test_a_clean_line_has_no_control_characters(raw: str | bytes) -> None:
    line = clean_line(raw, max_chars=200)
    assert len(line) <= 200
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in line)
    assert "\x1b" not in line and "\u2028" not in line and "\u202e" not in line


class Sink:
    def __init__(self) -> None:
        self.lines: list[str | bytes] = []

    def write(self, line: str | bytes) -> None:
        self.lines.append(line)


def test_container_output_is_cut_at_newlines_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "_FOLLOW_LINE_BYTES", 8)
    sink = Sink()
    buffer = run._LineBuffer(sink)
    for chunk in (b"ab", b"c\nde", b"f\n", b"0123456789abcdef", b"gh\nlast"):
        buffer.feed(chunk)
    buffer.close()
    # A line over the cap is cut once; its rest, up to the newline, is dropped.
    assert sink.lines == [b"abc", b"def", b"01234567", b"last"]


def test_build_output_split_mid_line_is_one_line() -> None:
    sink = Sink()
    progress = _Progress(tail=deque(maxlen=10), sink=sink)
    for chunk in ("Step 1/2 : RUN echo hi\n", "h", "i\n", "no newline at the end"):
        progress.feed({"stream": chunk})
    progress.finish()
    assert sink.lines == ["Step 1/2 : RUN echo hi", "hi", "no newline at the end"]
    assert list(progress.tail) == sink.lines


def test_every_unicode_format_character_is_removed() -> None:
    """Category Cf (soft hyphen, bidi controls, tag characters…) hides or reorders text; the
    list in lines.py must cover every one this Python's Unicode database knows."""
    format_chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    kept = [f"U+{ord(c):04X}" for c in format_chars if clean_line(f"a{c}b") != "ab"]
    assert not kept
    assert clean_line("shy\xadhyphen \U000e0041\U000e007fhidden") == "shyhyphen hidden"


def test_lone_surrogates_are_removed_so_the_line_encodes() -> None:
    line = clean_line("half \ud83d pair \udc00 end")
    assert line == "half  pair  end"
    line.encode("utf-8")  # no UnicodeEncodeError
