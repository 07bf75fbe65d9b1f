"""The Dockerfile parser: instructions, continuations, directives and every refusal."""

from __future__ import annotations

import pytest

from dockguard import dockerfile
from dockguard.errors import ErrorCode, SubmissionError


def parse(text: str) -> dockerfile.Dockerfile:
    return dockerfile.parse(text.encode(), 65536)


def test_parser_follows_continuations_comments_and_directives() -> None:
    parsed = parse(
        "# escape=`\n\nARG BASE=busybox\nFROM $BASE\nRUN echo a `\n# inside\n  && echo b\nUSER 1\n"
    )
    assert parsed.directives == {"escape": "`"}
    assert [(i.keyword, i.line) for i in parsed.instructions] == [
        ("ARG", 3), ("FROM", 4), ("RUN", 5), ("USER", 8),
    ]  # fmt: skip
    assert " ".join(parsed.instructions[2].arguments.split()) == "echo a && echo b"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("RUN echo\nFROM busybox\n", "line 1: RUN before the first FROM"),
        ("FROM busybox\nFROBNICATE x\n", "line 2: unknown instruction 'FROBNICATE'"),
        ("FROM busybox\nRUN\n", "line 2: RUN requires at least one argument"),
        ("ARG X=1\n", "no FROM instruction"),
        ("# escape=x\nFROM busybox\n", "invalid escape directive"),
    ],
)
def test_parser_errors_name_the_line(text: str, fragment: str) -> None:
    with pytest.raises(SubmissionError) as caught:
        parse(text)
    assert caught.value.code == ErrorCode.DOCKERFILE_INVALID
    assert fragment in caught.value.message


def test_parser_accepts_a_bom_and_counts_bytes() -> None:
    parsed = dockerfile.parse("\ufeffFROM busybox\n".encode(), 100)
    assert parsed.instructions[0].keyword == "FROM"
    assert parsed.size_bytes == len("\ufeffFROM busybox\n".encode())


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        ("FROM busybox\nRUN a\x7f\n", "dockerfile_encoding", "line 2: the Dockerfile contains the"),
        ("FROM busybox\nRUN a\x9b\n", "dockerfile_encoding", "control character U+009B"),
        ("FROM busybox\nRUN a\x0c b\n", "dockerfile_encoding", "control character U+000C"),
        ("FROM busybox\rRUN a\n", "dockerfile_invalid", "line 1: a carriage return must"),
        ("FROM busybox\nRUN a\u2003b\n", "dockerfile_invalid", "non-ASCII whitespace (U+2003)"),
        ("\u00a0FROM busybox\n", "dockerfile_invalid", "line 1: non-ASCII whitespace"),
        ("FROM busybox\nRUN " + "a" * 65535 + "\n", "dockerfile_invalid", "line 2: longer than"),
        ("FROM busybox\nRUN a \\\n", "dockerfile_invalid", "ends inside a continued instruction"),
        ("# escape=`\n# escape=`\nFROM busybox\n", "dockerfile_invalid", "only one escape"),
        ("FROM busybox\nRUİN a\n", "dockerfile_invalid", "unknown instruction"),
    ],
)  # fmt: skip
def test_parser_refuses_what_tools_read_differently(text: str, code: str, fragment: str) -> None:
    with pytest.raises(SubmissionError) as caught:
        dockerfile.parse(text.encode(), 1 << 20)
    assert caught.value.code == code
    assert fragment in caught.value.message


def test_parser_allows_non_ascii_space_in_strings_and_comments() -> None:
    parsed = parse("FROM busybox\n# a comment\u00a0here\nRUN echo \"a\u00a0b\" 'c\u3000d'\n")
    assert [i.original for i in parsed.instructions] == [
        "FROM busybox", "RUN echo \"a\u00a0b\" 'c\u3000d'",
    ]  # fmt: skip
