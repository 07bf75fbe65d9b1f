"""Reads a submitted Dockerfile exactly as the engine's builder will, before it becomes a job.

The submission policy is only as good as this reading: where two parsers disagree on where an
instruction starts or ends, an instruction can hide from one of them. So this module is a port of
the parser the engine runs (Docker Engine 20.10's classic builder, which vendors
`moby/buildkit/frontend/dockerfile/parser` at v0.8: `Parse`, `processLine`,
`trimContinuationCharacter`, `possibleParserDirective`, `splitCommand`, `extractBuilderFlags`),
with Go's notions of whitespace, not Python's (`str.strip` and `\\s` also treat U+001C to
U+001F and other characters as space; Go's `unicode.IsSpace`, `strings.TrimSpace` and RE2's
ASCII `\\s` do not). `tests/e2e/test_parser_differential.py` checks that the two agree on generated
input, against the real engine.

On top of the engine's rules, characters whose reading differs between tools are refused
outright: C0 and C1 control characters other than tab, CR and LF (and DEL), a CR that does not
end a line, and non-ASCII whitespace outside quoted strings and comments.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

from dockguard.errors import ErrorCode, SubmissionError

INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
        "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
        "WORKDIR",
    }
)  # fmt: skip

# Go's unicode.IsSpace: what strings.TrimSpace and bytes.TrimLeftFunc(…, unicode.IsSpace) remove.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_NON_ASCII_SPACE = frozenset(
    ch for ch in GO_SPACE if ord(ch) > 0x7F
) | frozenset(  # and what Python alone calls space, for good measure
    chr(code) for code in range(0x80, 0x3001) if chr(code).isspace()
)
_GO_SPACE_BYTES = frozenset(b"\t\n\v\f\r \x85\xa0")  # unicode.IsSpace(rune(aByte))
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")  # the parser's reWhitespace, which splits the keyword
# RE2's `\s` is ASCII [\t\n\f\r ]; the key takes letters and digits only.
_DIRECTIVE = re.compile(
    r"^#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*$"
)
_VALID_DIRECTIVES = frozenset({"escape", "syntax"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LONE_CR = re.compile(r"\r(?!\n)")
_MAX_LINE_BYTES = 65535  # bufio.Scanner's token limit, where the engine's parser stops


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-case, as the engine matches it
    flags: tuple[str, ...]  # the leading `--name[=value]` words, unquoted, with their `--`
    arguments: str  # what follows the flags, trimmed
    original: str  # the logical line as the engine prints it in `Step N/M : …`
    line: int
    end_line: int


@dataclass(frozen=True)
class Dockerfile:
    text: str
    size_bytes: int
    sha256: str
    directives: dict[str, str]
    instructions: tuple[Instruction, ...]
    leading_comments: tuple[tuple[int, str], ...]  # (line, comment) before the first instruction
    directives_end: int  # the line that ended the engine's search for parser directives


def _invalid(message: str) -> SubmissionError:
    return SubmissionError(ErrorCode.DOCKERFILE_INVALID, message)


def decode(body: bytes, max_bytes: int) -> str:
    """The Dockerfile's text, or the submission error that says why there is none."""
    if len(body) > max_bytes:
        raise SubmissionError(
            ErrorCode.DOCKERFILE_TOO_LARGE,
            f"the Dockerfile is larger than the {max_bytes}-byte limit",
            http_status=413,
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmissionError(
            ErrorCode.DOCKERFILE_ENCODING,
            f"the Dockerfile is not valid UTF-8 (byte offset {exc.start})",
        ) from None
    return text.removeprefix("\ufeff")  # as the engine strips a BOM from its first line


def parse(body: bytes, max_bytes: int) -> Dockerfile:
    text = decode(body, max_bytes)
    _check_characters(text)
    if not text.strip(GO_SPACE):
        raise SubmissionError(ErrorCode.DOCKERFILE_EMPTY, "the Dockerfile is empty")
    reader = _Reader(_scan_lines(text))
    reader.read()
    _check_order(reader.instructions)
    return Dockerfile(
        text=text,
        size_bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        directives=reader.directives,
        instructions=tuple(reader.instructions),
        leading_comments=tuple(reader.leading_comments),
        directives_end=reader.directives_end,
    )


def _check_characters(text: str) -> None:
    """Refuse characters that tools read differently: control characters (NUL included) and
    a carriage return anywhere but before a line feed."""
    if match := _CONTROL.search(text):
        char = match.group()
        what = "a NUL byte" if char == "\x00" else f"the control character U+{ord(char):04X}"
        raise SubmissionError(
            ErrorCode.DOCKERFILE_ENCODING,
            f"line {_line_of(text, match.start())}: the Dockerfile contains {what} "
            "(only tab, CR and LF are allowed)",
        )
    if match := _LONE_CR.search(text):
        raise _invalid(
            f"line {_line_of(text, match.start())}: a carriage return must be followed by a "
            "line feed (lines end with LF or CRLF)"
        )


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _scan_lines(text: str) -> list[str]:
    """bufio.ScanLines: split at LF, drop one CR before it, no empty token after a final LF."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if len(line.encode("utf-8")) >= _MAX_LINE_BYTES:
            raise _invalid(f"line {number}: longer than the engine's {_MAX_LINE_BYTES}-byte limit")
    return [line.removesuffix("\r") for line in lines]


def _ltrim(line: str) -> str:
    return line.lstrip(GO_SPACE)


def _is_comment(line: str) -> bool:
    return _ltrim(line).startswith("#")


class _Reader:
    """The engine's `parser.Parse` loop, line for line."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.directives: dict[str, str] = {}
        self.directives_end = 0
        self.escape = "\\"
        self.continuation = _continuation("\\")
        self.instructions: list[Instruction] = []
        self.leading_comments: list[tuple[int, str]] = []

    def read(self) -> None:
        lines, index = self.lines, 0
        while index < len(lines):
            raw = lines[index]
            index += 1
            start = index
            token = _ltrim(raw)
            _check_spaces_only(raw[: len(raw) - len(token)], start)
            self._possible_directive(token, start)
            if token.startswith("#"):
                self._comment(raw, start)
                token = ""  # trimComments
            line, end_of_line = self._trim_continuation(token)
            if end_of_line and not line:
                continue
            while not end_of_line and index < len(lines):
                raw = lines[index]
                index += 1
                if _is_comment(raw):
                    self._comment(raw, index)
                    continue
                if not _ltrim(raw):  # an empty continuation line: skipped, the line goes on
                    _check_spaces_only(raw, index)
                    continue
                more, end_of_line = self._trim_continuation(raw)
                line += more
            if not end_of_line:
                # The engine ends it there; but nothing may follow it (dockguard adds lines).
                raise _invalid(f"line {index}: the Dockerfile ends inside a continued instruction")
            self.instructions.append(self._instruction(line, start, index))

    def _possible_directive(self, token: str, number: int) -> None:
        if self.directives_end:
            return
        match = _DIRECTIVE.match(token)
        key = match.group(1).lower() if match else ""
        if key not in _VALID_DIRECTIVES:
            self.directives_end = number
            return
        if key in self.directives:
            raise _invalid(f"line {number}: only one {key} parser directive can be used")
        assert match is not None
        self.directives[key] = match.group(2)
        if key == "escape":
            self._set_escape(match.group(2), number)

    def _set_escape(self, value: str, number: int) -> None:
        if value not in ("\\", "`"):
            shown = value[:10]
            raise _invalid(f"line {number}: invalid escape directive {shown!r} (expected \\ or `)")
        self.escape = value
        self.continuation = _continuation(value)

    def _comment(self, raw: str, number: int) -> None:
        before, _, comment = raw.partition("#")
        _check_spaces_only(before, number)
        if not self.instructions:
            self.leading_comments.append((number, "#" + comment))

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        if self.continuation.search(line):
            return self.continuation.sub(r"\1", line), False
        return line, True

    def _instruction(self, line: str, start: int, end: int) -> Instruction:
        _check_unquoted_spaces(line, self.escape, start)
        original = line.strip(GO_SPACE)
        parts = _WHITESPACE.split(original, maxsplit=1)
        # ASCII only: Go's strings.ToLower and Python's str.upper map other letters differently
        # (U+0130 becomes `i` for the engine; U+017F becomes `S` for Python).
        keyword = parts[0].upper() if parts[0].isascii() else parts[0]
        if keyword not in INSTRUCTIONS:
            raise _invalid(f"line {start}: unknown instruction {keyword[:40]!r}")
        rest, flags = _extract_builder_flags(parts[1], start) if len(parts) == 2 else ("", [])
        arguments = rest.strip(GO_SPACE)
        if not arguments:
            raise _invalid(f"line {start}: {keyword} requires at least one argument")
        return Instruction(
            keyword=keyword,
            flags=tuple(flags),
            arguments=arguments,
            original=original,
            line=start,
            end_line=end,
        )


def _continuation(escape: str) -> re.Pattern[str]:
    """setEscapeToken's lineContinuationRegex: a final escape not preceded by another one, or
    alone on its line, followed only by spaces and tabs."""
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*$|^{e}[ \t]*$")


def _check_spaces_only(text: str, number: int) -> None:
    if any(ch in _NON_ASCII_SPACE for ch in text):
        raise _invalid(f"line {number}: non-ASCII whitespace is not allowed outside strings")


def _check_unquoted_spaces(line: str, escape: str, number: int) -> None:
    """Non-ASCII whitespace may appear only in a quoted string (or escaped): elsewhere one tool
    splits words on it where another does not."""
    quote = ""
    index = 0
    while index < len(line):
        ch = line[index]
        if ch == escape and quote != "'":
            index += 2  # an escaped character is a literal
            continue
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _NON_ASCII_SPACE:
            raise _invalid(
                f"line {number}: non-ASCII whitespace (U+{ord(ch):04X}) is not allowed outside "
                "quoted strings"
            )
        index += 1


def _extract_builder_flags(line: str, number: int) -> tuple[str, list[str]]:
    """`extractBuilderFlags`, byte for byte as in Go (it reads bytes, not characters): the
    leading `--name[=value]` words without quotes and backslashes, then the rest of the line."""
    scan = _FlagScan(line.encode("utf-8"))
    rest = scan.run()
    return ("" if rest is None else _text(rest, number)), _flags(scan.words)


class _Phase(enum.Enum):
    """extractBuilderFlags' `phase` constants."""

    IN_SPACES = enum.auto()  # looking for the start of a word
    IN_WORD = enum.auto()
    IN_QUOTE = enum.auto()


class _FlagScan:
    """extractBuilderFlags' loop as a state machine. `run` is Go's `for pos` loop with its
    `pos++`; the inWord and inQuote branches are step methods, where a `return` is Go's
    `continue`, and a backslash moves `pos` on once more, as the `pos++` in Go's branch does."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.phase = _Phase.IN_SPACES
        self.words: list[bytes] = []
        self.word = bytearray()
        self.quote = 0
        self.blank_ok = False

    def run(self) -> bytes | None:
        """The rest of the line after the flags, or None when the flags take all of it."""
        end = len(self.data)
        while self.pos <= end:
            ch = self.data[self.pos] if self.pos != end else 0
            if self.phase is _Phase.IN_SPACES:
                if self.pos == end:  # end of input
                    return None
                if ch in _GO_SPACE_BYTES:  # skip spaces
                    self.pos += 1
                    continue
                if not self._at_double_dash():  # only keep going if the next word starts with --
                    return self.data[self.pos :]
                self.phase = _Phase.IN_WORD  # found something with "--", fall through
            if self.pos == end:
                if self.word != b"--" and (self.blank_ok or self.word):
                    self.words.append(bytes(self.word))
                return None
            if self.phase is _Phase.IN_WORD:
                if self._word_step(ch):
                    return self.data[self.pos :]
            else:
                self._quote_step(ch)
            self.pos += 1
        return None  # Go's final `return "", words, nil`: the loop returns at pos == end first

    def _at_double_dash(self) -> bool:
        data, pos = self.data, self.pos
        return data[pos] == 0x2D and pos + 1 != len(data) and data[pos + 1] == 0x2D

    def _word_step(self, ch: int) -> bool:
        """Go's `phase == inWord` branch; True where the flags end: at a lone `--` word."""
        if ch in _GO_SPACE_BYTES:
            self.phase = _Phase.IN_SPACES
            if self.word == b"--":
                return True
            if self.blank_ok or self.word:
                self.words.append(bytes(self.word))
            self.word, self.blank_ok = bytearray(), False
            return False
        if ch in (0x22, 0x27):  # " '
            self.quote, self.blank_ok, self.phase = ch, True, _Phase.IN_QUOTE
            return False
        if ch == 0x5C:  # backslash
            if self.pos + 1 == len(self.data):
                return False  # just skip \ at end
            self.pos += 1
            ch = self.data[self.pos]
        self.word.append(ch)
        return False

    def _quote_step(self, ch: int) -> None:
        """Go's `phase == inQuote` branch."""
        if ch == self.quote:
            self.phase = _Phase.IN_WORD
            return
        if ch == 0x5C:  # backslash
            if self.pos + 1 == len(self.data):
                self.phase = _Phase.IN_WORD
                return  # just skip \ at end
            self.pos += 1
            ch = self.data[self.pos]
        self.word.append(ch)


def _text(data: bytes, number: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(f"line {number}: a flag splits a multi-byte character") from None


def _flags(words: list[bytes]) -> list[str]:
    """Go appends each byte as `string(rune(b))`: a byte over 0x7F becomes that Latin-1 letter."""
    return [word.decode("latin-1") for word in words]


def _check_order(instructions: list[Instruction]) -> None:
    for instruction in instructions:
        if instruction.keyword == "FROM":
            return
        if instruction.keyword != "ARG":
            raise _invalid(
                f"line {instruction.line}: {instruction.keyword} before the first FROM "
                "(only ARG may come before FROM)"
            )
    raise _invalid("no FROM instruction: a Dockerfile must start from a base image")
