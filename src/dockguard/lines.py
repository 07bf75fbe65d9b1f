"""Lines of output from hostile programs (a build, a container), made safe to store and show:
pure functions, shared by the sandbox (log tails) and the live log (store/logs.py)."""

from __future__ import annotations

import re
from typing import Protocol

DEFAULT_LINE_MAX_CHARS = 1000
_ELLIPSIS = "…"


class LineSink(Protocol):
    """Where a stage's output lines go as they are printed (the job's live log)."""

    def write(self, line: str | bytes) -> None:
        """Queue one line (without its newline); never blocks, never raises."""


# ECMA-48: CSI (ESC [ or the C1 byte 0x9b) … final byte; OSC/DCS/SOS/PM/APC strings ended by
# BEL or ST; any other two-byte escape. Then every remaining control character but tab; every
# Unicode format character (category Cf: bidi controls, zero-width marks, the soft hyphen, tag
# characters that smuggle invisible text; tests/unit/test_lines.py checks the list against
# `unicodedata`); the separators some viewers break lines at (U+2028/U+2029); and lone
# surrogates, which a JSON-decoded build line can hold and no UTF-8 encoder accepts.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
_CONTROLS = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    "\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


def clean_line(text: str | bytes, max_chars: int = DEFAULT_LINE_MAX_CHARS) -> str:
    """One line as a terminal-free reader should see it: invalid UTF-8 replaced (U+FFFD), escape
    sequences and control characters (but tab) removed, what a carriage return overwrote dropped
    (progress bars), and at most `max_chars` characters (then ending in "…")."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.rstrip("\r\n").rsplit("\r", 1)[-1] if "\r" in text else text.rstrip("\n")
    text = _CONTROLS.sub("", _ESCAPES.sub("", text))
    if len(text) > max_chars:
        text = text[: max(max_chars - 1, 0)] + _ELLIPSIS
    return text


def split_lines(buffer: str) -> tuple[list[str], str]:
    """The complete lines of `buffer` and the rest (an unfinished line)."""
    *lines, rest = buffer.split("\n")
    return lines, rest
