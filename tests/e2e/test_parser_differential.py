"""Differential: dockguard's Dockerfile parser against the real engine's builder.

Hypothesis generates Dockerfiles made to confuse a parser — continuations, escaped escapes,
comments and empty lines inside continued instructions, escape and look-alike directives, CRLF,
tabs, form feeds, Unicode and C0 whitespace, and forbidden instructions (remote ADD, ONBUILD,
RUN flags) placed where a misreading would hide them. For every input the submission policy
accepts, the instructions dockguard read (`Instruction.original`) must be exactly the steps the
engine's classic builder runs (its `Step N/M : …` lines), on a base image whose `/bin/sh` does
nothing, so every `RUN` succeeds whatever it says.

The example count is bounded (DOCKGUARD_DIFFERENTIAL_EXAMPLES, default 150) so that `.ci/run`
stays fast; raise it to search harder."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dockguard import dockerfile
from dockguard.errors import SubmissionError
from dockguard.submission_policy import SubmissionPolicy, check

NOOP_IMAGE = "dockguard-test/noop-shell:1"
EXAMPLES = int(os.environ.get("DOCKGUARD_DIFFERENTIAL_EXAMPLES", "150"))
ENGINE = "http://engine/v1.41"
_ANSI = re.compile(r"^(?:\x1b\[[0-9;]*m)+")
_STEP = re.compile(r"^Step \d+/\d+ : ")
_LAYER = re.compile(r"^ ---> ([0-9a-f]{12})$")


@pytest.fixture(scope="module")
def engine() -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds="/var/run/docker.sock")
    with httpx.Client(transport=transport, base_url=ENGINE, timeout=120) as client:
        _build_noop_image(client)
        yield client


def _build_noop_image(client: httpx.Client) -> None:
    """`FROM scratch` with a static `/bin/sh` that exits 0: RUN steps run, and do nothing."""
    if client.get(f"/images/{NOOP_IMAGE}/json").status_code == 200:
        return
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "a C compiler is needed to build the no-op shell (apt-get install gcc)"
    with tempfile.TemporaryDirectory() as work:
        source = Path(work, "noop.c")
        source.write_text("int main(void) { return 0; }\n")
        subprocess.run([compiler, "-static", "-Os", "-o", f"{work}/sh", str(source)], check=True)
        context = _tar({"Dockerfile": b"FROM scratch\nCOPY sh /bin/sh\n"}, Path(work, "sh"))
    _, error = _engine_build(client, context, tag=NOOP_IMAGE)
    assert error is None, error


def _noop_id(client: httpx.Client) -> str:
    return str(client.get(f"/images/{NOOP_IMAGE}/json").json()["Id"])


def _tar(files: dict[str, bytes], executable: Path | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if executable is not None:
            info = tarfile.TarInfo("sh")
            info.size, info.mode = executable.stat().st_size, 0o755
            with executable.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def _engine_build(
    client: httpx.Client, context: bytes, tag: str | None = None
) -> tuple[list[str], str | None]:
    """The engine's steps for a build (the text after `Step N/M : `) and its error, if any.
    An untagged image it built is removed, with the intermediate images under it."""
    params = {"dockerfile": "Dockerfile", "rm": "1", "forcerm": "1", "pull": "0"}
    params |= {"networkmode": "none", **({"t": tag} if tag else {})}
    response = client.post(
        "/build", params=params, content=context, headers={"Content-Type": "application/x-tar"}
    )
    stream, error = "", None
    for line in response.text.splitlines():
        if line.strip():
            message = json.loads(line)
            stream += message.get("stream", "")
            error = error or message.get("error")
    lines = [_ANSI.sub("", line) for line in stream.split("\n")]  # after a coloured warning
    steps = [line.partition(" : ")[2] for line in lines if _STEP.match(line)]
    if not tag:
        _remove_images(client, lines)
    return steps, error


def _remove_images(client: httpx.Client, lines: list[str]) -> None:
    """Every image the build made, of every stage, newest first. (Read from the build's output:
    trusted here, where the input is the test's own and the no-op shell prints nothing.)"""
    noop = _noop_id(client).removeprefix("sha256:")
    made = [match.group(1) for line in lines if (match := _LAYER.match(line))]
    for image in reversed(made):
        if not noop.startswith(image):
            client.delete(f"/images/{image}")  # 409 (still a parent) or 404: left to the next


# Generation ------------------------------------------------------------------------------------

_SMUGGLED = [
    "ADD http://127.0.0.1:9/x /x",
    "ONBUILD RUN echo injected",
    "RUN --mount=type=cache,target=/c true",
    "COPY --from=busybox:latest /bin /b",
    "# syntax=example.invalid/frontend",
]
_TRICKY_CHARS = [
    " ", "  ", "\t", "\\", "\\\\", "`", "#", '"', "'", "-", "--", "=", "$X", "\ufeff", "é", "\\ ",
]  # fmt: skip
# Characters the parser refuses (control characters, a lone CR, non-ASCII space outside quotes):
# rarer, so that most inputs reach the engine.
_HOSTILE_CHARS = [
    "\x1c# hidden",
    "\u00a0",
    "\u2003",
    "\u3000",
    "\x1c",
    "\x1f",
    "\x0b",
    "\x0c",
    "\x85",
    "\r",
]
_WORD = st.text(alphabet="abcxyz019_./:", min_size=1, max_size=6)
_FRAGMENT = st.integers(0, 39).flatmap(
    lambda n: (
        st.sampled_from(_HOSTILE_CHARS)
        if n == 0
        else _WORD
        if n % 2
        else st.sampled_from(_TRICKY_CHARS)
    )
)
_ARGUMENT = st.builds(
    lambda head, rest: head + "".join(rest), _WORD, st.lists(_FRAGMENT, max_size=8)
)
_KEYWORD = st.sampled_from(["RUN", "run", "Run", "CMD", "ENTRYPOINT", "MAINTAINER", "maintainer"])
_GAP = st.sampled_from([" ", "\t", "  ", " \t "])
_CONTINUATION = st.sampled_from(["\\", "`", "\\ ", "\\\t", "`  ", "\\\\", ""])
_INSTRUCTION = st.builds(lambda k, g, a: k + g + a, _KEYWORD, _GAP, _ARGUMENT)
_SMUGGLED_LINE = st.sampled_from(_SMUGGLED)
_FILLER = st.sampled_from(
    ["", " ", "\t", "# a comment", "  # indented comment", "#", "\\", " \\", "#\\"]
)


@st.composite
def _line_group(draw: st.DrawFn) -> list[str]:
    """One instruction, maybe continued over several lines with comments and blanks inside, or
    a line that must stay a line of its own (a comment, a blank, a smuggled instruction)."""
    kind = draw(st.sampled_from(["instruction", "continued"] * 3 + ["filler", "smuggled"]))
    if kind == "instruction":
        return [draw(_INSTRUCTION)]
    if kind == "filler":
        return [draw(_FILLER)]
    if kind == "smuggled":
        return [draw(_SMUGGLED_LINE)]
    lines = [draw(_INSTRUCTION) + draw(_CONTINUATION)]
    for _ in range(draw(st.integers(1, 3))):
        middle = draw(st.one_of(_ARGUMENT, _INSTRUCTION, _FILLER, _ARGUMENT, _SMUGGLED_LINE))
        lines.append(middle + draw(_CONTINUATION))
    lines.append(draw(_ARGUMENT))
    return lines


_DIRECTIVES = st.tuples(
    st.sampled_from(["", "# escape=`", "#escape=\\", " # ESCAPE = ` ", "# escape=`\t"]),
    st.sampled_from(["", "", "# note", "# frob=1", "#  syntax = x"]),
).map(lambda pair: [line for line in pair if line])
_FROM = st.sampled_from([f"FROM {NOOP_IMAGE}", f"from\t{NOOP_IMAGE}", f"  FROM {NOOP_IMAGE}  "])


@st.composite
def dockerfiles(draw: st.DrawFn) -> bytes:
    lines = draw(_DIRECTIVES)
    if draw(st.booleans()):
        lines.append("ARG X=1")
    lines.append(draw(_FROM))
    for group in draw(st.lists(_line_group(), min_size=1, max_size=5)):
        lines.extend(group)
    if draw(st.booleans()):  # a second stage
        lines.append(draw(_FROM))
        lines.extend(draw(_line_group()))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.sampled_from(["", "", "\ufeff"]))
    return (bom + newline.join(lines) + newline).encode("utf-8")


# The property ------------------------------------------------------------------------------------


def _accepted(body: bytes) -> dockerfile.Dockerfile | None:
    try:
        parsed = dockerfile.parse(body, 65536)
        check(parsed, SubmissionPolicy())
    except SubmissionError:
        return None
    return parsed


def test_the_differential_harness_sees_what_the_engine_runs(engine: httpx.Client) -> None:
    """The check itself can fail: the engine reports each instruction it runs, continuations
    joined the engine's way."""
    body = f"FROM {NOOP_IMAGE}\nRUN echo a \\\n  # c\n\n  b\nUSER 1\n".encode()
    steps, error = _engine_build(engine, _tar({"Dockerfile": body}))
    assert error is None
    assert steps == [f"FROM {NOOP_IMAGE}", "RUN echo a   b", "USER 1"]
    parsed = _accepted(body)
    assert parsed is not None
    assert [i.original for i in parsed.instructions] == steps


def test_parser_agrees_with_the_engine(engine: httpx.Client) -> None:
    built: list[bytes] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=dockerfiles())
    @example(body=f"FROM {NOOP_IMAGE}\nRUN a \\\\\nUSER 1\n".encode())
    @example(body=f"# escape=`\nFROM {NOOP_IMAGE}\nRUN a \\\nUSER 1 `\n\n  # c\n  2\n".encode())
    @example(body=f"FROM {NOOP_IMAGE}\nRUN a \\ \t\n\\\nUSER 1\n".encode())
    @example(body=f'\ufeff  FROM {NOOP_IMAGE}\r\nRUN "a \\\r\n b" \' \\\r\nUSER 1\r\n'.encode())
    @example(body=f"# note\n# escape=`\nFROM {NOOP_IMAGE}\nRUN a `\nUSER 1\n".encode())
    def agrees(body: bytes) -> None:
        parsed = _accepted(body)
        if parsed is None:
            return  # refused: nothing of it ever reaches the engine
        steps, error = _engine_build(engine, _tar({"Dockerfile": body}))
        ours = [instruction.original for instruction in parsed.instructions]
        assert steps == ours, f"engine ran {steps!r}, dockguard read {ours!r} (error: {error})"
        assert error is None, error
        built.append(body)

    agrees()
    # The property is only as strong as the inputs that reached the engine.
    assert len(built) >= min(EXAMPLES // 10, 10), f"only {len(built)} inputs were built"
