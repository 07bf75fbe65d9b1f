"""Checks a submitted Dockerfile before it becomes a job: size, encoding, and a parse that follows
the engine's own rules (parser directives, escape character, line continuations, comments)."""

from __future__ import annotations

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
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass(frozen=True)
class Dockerfile:
    text: str
    size_bytes: int
    sha256: str
    directives: dict[str, str]
    instructions: tuple[Instruction, ...]


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
    return text.removeprefix("\ufeff")


def parse(body: bytes, max_bytes: int) -> Dockerfile:
    text = decode(body, max_bytes)
    if "\x00" in text:
        raise SubmissionError(ErrorCode.DOCKERFILE_ENCODING, "the Dockerfile contains a NUL byte")
    if not text.strip():
        raise SubmissionError(ErrorCode.DOCKERFILE_EMPTY, "the Dockerfile is empty")
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # the engine splits on \n only
    directives, first_line = _read_directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise _invalid(f"line 1: invalid escape directive {escape!r} (expected \\ or `)")
    instructions = _read_instructions(lines, first_line, escape)
    _check_order(instructions)
    return Dockerfile(
        text=text,
        size_bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        directives=directives,
        instructions=tuple(instructions),
    )


def _read_directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """Parser directives are `# key=value` comments before anything else; the first other line
    (blank, comment or instruction) ends them, as in the engine."""
    directives: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = _DIRECTIVE.match(line.strip())
        if not match:
            return directives, index
        directives[match.group(1).lower()] = match.group(2)
    return directives, len(lines)


def _read_instructions(lines: list[str], start: int, escape: str) -> list[Instruction]:
    """Logical instructions. A line continues only when it ends with an escape character that
    is not itself escaped, followed by nothing but spaces and tabs: where the engine's parsers
    have differed (an escaped escape at the end of a line), this reading exposes more
    instructions to the submission policy, never fewer."""
    continuation = re.compile(rf"(^|[^{re.escape(escape)}]){re.escape(escape)}[ \t]*$")
    instructions: list[Instruction] = []
    pending: list[str] = []
    pending_line = 0
    for number, raw in enumerate(lines[start:], start=start + 1):
        stripped = raw.strip()
        if not pending and not stripped:
            continue
        if stripped.startswith("#"):
            continue  # comments may appear inside a continued instruction too
        if not pending:
            pending_line = number
        if match := continuation.search(raw):
            pending.append(raw[: match.end(1)].strip())
            continue
        pending.append(stripped)
        instructions.append(_instruction(" ".join(pending), pending_line))
        pending = []
    if pending:
        instructions.append(_instruction(" ".join(pending), pending_line))
    return instructions


def _instruction(logical_line: str, line: int) -> Instruction:
    keyword, _, arguments = logical_line.strip().replace("\t", " ").partition(" ")
    keyword = keyword.upper()
    if keyword not in INSTRUCTIONS:
        shown = keyword[:40]
        raise _invalid(f"line {line}: unknown instruction {shown!r}")
    if not arguments.strip():
        raise _invalid(f"line {line}: {keyword} requires at least one argument")
    return Instruction(keyword=keyword, arguments=arguments.strip(), line=line)


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
