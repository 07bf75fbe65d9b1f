"""Dockerfiles the submission policy refuses at once (400 `dockerfile_forbidden`, naming the line),
the ones it lets through, and each switch that relaxes it. End to end through the API, then the
pure `check` on its own."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dockguard import dockerfile
from dockguard.errors import ErrorCode, SubmissionError
from dockguard.settings import Settings
from dockguard.submission_policy import SubmissionPolicy, check
from tests.conftest import Dockguard, Instances
from tests.test_submission import assert_problem

DIGEST = "sha256:" + "a" * 64
PERMISSIVE = {
    "allow_parser_directives": True,
    "allow_remote_add": True,
    "allow_run_flags": True,
    "allow_onbuild": True,
}
# `USER root` fails the Dockerfile scan (DS-0002): a job that gets past submission is then
# rejected at once, before any build could fetch, pull or mount anything.
SCAN_REJECTS = 'USER root\nCMD ["true"]\n'


async def assert_forbidden(instance: Dockguard, text: str, line: int, fragment: str) -> None:
    problem = assert_problem(await instance.submit(text), 400, "dockerfile_forbidden")
    detail = str(problem["detail"])
    assert detail.startswith(f"line {line}: "), detail
    assert fragment in detail, detail


async def assert_accepted_then_rejected_by_scan(instance: Dockguard, text: str) -> None:
    response = await instance.submit(text)
    assert response.status_code == 202, response.text
    job = await instance.wait(response.json()["id"])
    assert job["status"] == "rejected", job
    assert job["error"]["code"] == "dockerfile_rejected"
    assert job["build"] is None


FORBIDDEN_BY_DEFAULT = [
    ("# syntax=docker/dockerfile:1\nFROM busybox:latest\n", 1, "'# syntax=' parser directive"),
    ("# check=skip=all\nFROM busybox:latest\n", 1, "'# check=' parser directive"),
    (
        "FROM busybox:latest\nUSER 1000\nADD http://example.invalid/x /x\n",
        3,
        "ADD from a URL is not allowed (the build must not fetch remote content; "
        "COPY local files or RUN a download instead)",
    ),
    (
        f"FROM busybox:latest\nADD --checksum={DIGEST} https://example.invalid/x.tgz /x\n",
        2,
        "ADD from a URL",
    ),
    ("FROM busybox:latest\nADD git@example.invalid:a/b.git /src\n", 2, "ADD from a git repo"),
    (
        "FROM busybox:latest\nRUN --mount=type=secret,id=x cat /run/secrets/x\n",
        2,
        "RUN --mount is not allowed",
    ),
    ("FROM busybox:latest\nRUN --network=host true\n", 2, "RUN --network is not allowed"),
    ("FROM busybox:latest\nRUN --security=insecure true\n", 2, "RUN --security is not allowed"),
    ("FROM busybox:latest\nONBUILD RUN true\n", 2, "ONBUILD is not allowed"),
    ("FROM --platform=linux/arm64 busybox\n", 1, "FROM --platform is not allowed"),
    ("FROM busybox:latest\nCOPY --from=otherimage /x /x\n", 2, "COPY --from='otherimage'"),
    ("FROM busybox:latest AS s0\n" + "FROM s0\n" * 8, 9, "more than 8 stages"),
    ("FROM busybox:latest\n" + "RUN true\n" * 200, 201, "more than 200 instructions"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), FORBIDDEN_BY_DEFAULT)
async def test_forbidden_by_default(
    dockguard: Dockguard, text: str, line: int, fragment: str
) -> None:
    await assert_forbidden(dockguard, text, line, fragment)


async def test_base_image_allowlist(instances: Instances) -> None:
    strict = await instances.get(allowed_base_images=["busybox:*"])
    await assert_forbidden(
        strict, "FROM debian:bookworm-slim\n", 1, "base image 'debian:bookworm-slim' is not allowed"
    )
    await assert_forbidden(
        strict, "ARG BASE=busybox:latest\nFROM $BASE\n", 2, "a build argument cannot be checked"
    )
    await assert_forbidden(
        strict, "FROM busybox:latest\nCOPY --from=debian:bookworm-slim / /d\n", 2, "allowed base"
    )
    allowed = "FROM busybox:latest\nCOPY --from=busybox:latest /bin/true /t\nFROM scratch\n"
    await assert_accepted_then_rejected_by_scan(strict, allowed + SCAN_REJECTS)


async def test_digest_required(instances: Instances) -> None:
    pinned = await instances.get(require_base_digest=True)
    await assert_forbidden(pinned, "FROM busybox:latest\n", 1, "must be pinned by digest")
    await assert_accepted_then_rejected_by_scan(pinned, f"FROM busybox@{DIGEST}\n{SCAN_REJECTS}")


async def test_stages_and_scratch_are_allowed(dockguard: Dockguard) -> None:
    # Each half of the result comes through one form of COPY --from: a stage name, an index.
    command = json.dumps(["sh", "-c", "cat /head /tail > /data/perf.json"])
    job = await dockguard.run(
        "FROM busybox:latest AS b\n"
        """RUN printf '{"perf": ' > /head && printf '1}' > /tail\n"""
        "FROM b\n"
        "COPY --from=b /head /head\n"
        "COPY --from=0 /tail /tail\n"
        "USER 1000\n"
        f"CMD {command}\n"
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["result"] == {"perf": 1.0, "data": {"perf": 1}}
    await assert_accepted_then_rejected_by_scan(dockguard, "FROM scratch\n" + SCAN_REJECTS)


@pytest.mark.parametrize(
    "text",
    [
        "# syntax=docker/dockerfile:1\n# check=skip=all\nFROM busybox:latest\n",
        "FROM busybox:latest\nADD http://example.invalid/x git@example.invalid:a/b.git /x/\n",
        "FROM busybox:latest\nRUN --mount=type=secret,id=x --network=none true\n",
        "FROM busybox:latest\nONBUILD RUN true\n",
    ],
)
async def test_switches_let_their_construct_through(instances: Instances, text: str) -> None:
    permissive = await instances.get(**PERMISSIVE)
    await assert_accepted_then_rejected_by_scan(permissive, text + SCAN_REJECTS)


# The pure check, no I/O.


def run_check(text: str, **policy: Any) -> None:
    check(dockerfile.parse(text.encode(), 65536), SubmissionPolicy(**policy))


def refusal(text: str, **policy: Any) -> str:
    with pytest.raises(SubmissionError) as caught:
        run_check(text, **policy)
    assert caught.value.code == ErrorCode.DOCKERFILE_FORBIDDEN
    assert caught.value.http_status == 400
    return caught.value.message


ALLOWLIST = {"allowed_base_images": ("busybox:*", "registry.example.invalid/team/*")}


@pytest.mark.parametrize(
    ("text", "policy", "expected"),
    [
        # BuildKit reads `# syntax=` after a shebang, where the engine's parser stops reading.
        ("#!/usr/bin/env docker\n# syntax=x/y\nFROM a\n", {}, "line 2: the '# syntax=' parser"),
        ("#  SYNTAX = x/y\nFROM a\n", {}, "line 1: the '# syntax=' parser"),
        ("# escape=`\n# frob=1\nFROM a\n", {}, "line 2: the '# frob=' parser directive"),
        ("FROM a\nADD HTTPS://example.invalid/x /x\n", {}, "line 2: ADD from a URL"),
        ('FROM a\nADD "ht"tp://example.invalid/x /x\n', {}, "line 2: ADD from a URL"),
        ('FROM a\nADD ["http://example.invalid/x", "/x"]\n', {}, "line 2: ADD from a URL"),
        ("FROM a\nADD ftp://example.invalid/x /x\n", {}, "line 2: ADD from a URL"),
        ("FROM a\nADD local.txt https://example.invalid/x /d/\n", {}, "line 2: ADD from a URL"),
        ("FROM a\nADD git://example.invalid/r /r\n", {}, "ADD from a git repository"),
        ("FROM a\nADD ssh://example.invalid/r /r\n", {}, "ADD from a git repository"),
        ("FROM a\nADD deploy@example.invalid:r.git /r\n", {}, "ADD from a git repository"),
        (
            "FROM a\nADD --keep-git-dir=true https://example.invalid/r.git#main /r\n",
            {},
            "ADD from a git repository",
        ),
        ("FROM a\nARG U=http://example.invalid\nADD ${U}/x /x\n", {}, "line 3: ADD with a build"),
        ("FROM a\nRUN --mo\\unt=type=cache,target=/c true\n", {}, "RUN --mount is not allowed"),
        ('FROM a\nRUN "--network"=host true\n', {}, None),  # quoted: a command, as in BuildKit
        ("FROM a\nRUN --network=none true\n", {}, "RUN --network is not allowed"),
        ("FROM a\nRUN \\\n  --mount=type=ssh true\n", {}, "line 2: RUN --mount"),
        ("FROM a\nONBUILD ADD . /src\n", {}, "line 2: ONBUILD"),
        ("FROM a\nCOPY --from=later /x /x\nFROM a AS later\n", {}, "COPY --from='later'"),
        ("FROM a AS self\nCOPY --from=self /x /x\n", {}, "COPY --from='self'"),
        ("FROM a\nCOPY --from=0 /x /x\n", {}, "COPY --from='0'"),
        ("FROM a\nCOPY --from otherimage /x /x\n", {}, "COPY --from='otherimage'"),
        ("FROM a\nCOPY --from=$IMG /x /x\n", {}, "a build argument cannot be checked"),
        ("FROM debian\n", ALLOWLIST, "line 1: base image 'debian' is not allowed"),
        ("FROM busybox\n", ALLOWLIST, "the allowed base images are: busybox:*, registry"),
        # `*` stays within one path part: this is the registry at host `busybox`, port 5000.
        ("FROM busybox:5000/evil\n", ALLOWLIST, "base image 'busybox:5000/evil'"),
        ("FROM busybox:5000\\/evil\n", ALLOWLIST, "quotes, escapes and other characters"),
        ('FROM "busybox:1"\n', ALLOWLIST, "quotes, escapes and other characters"),
        ("FROM ${BASE}\n", ALLOWLIST, "a build argument cannot be checked against the allowed"),
        ("FROM $BASE\n", {"require_base_digest": True}, "checked against a pinned digest"),
        ("FROM busybox:1\n", {"require_base_digest": True}, "must be pinned by digest"),
        (f"FROM busybox@sha256:{'A' * 64}\n", {"require_base_digest": True}, "pinned by digest"),
        (
            "FROM busybox:1\n",
            {**ALLOWLIST, "require_base_digest": True},
            "must be pinned by digest",
        ),
        ("FROM busybox:1\nCOPY --from=debian /x /x\n", ALLOWLIST, "as an image, the allowed"),
        ("FROM a\nFROM b\nFROM c\n", {"max_stages": 2}, "line 3: more than 2 stages"),
        ("FROM a\nRUN a\n\nRUN b\n", {"max_instructions": 2}, "line 4: more than 2 instr"),
        # The first violation in file order is the one reported.
        ("FROM a\nONBUILD RUN x\nRUN --network=host x\n", {}, "line 2: ONBUILD"),
    ],
)
def test_check_refuses(text: str, policy: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        run_check(text, **policy)
    else:
        assert expected in refusal(text, **policy)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("# escape=`\nFROM a\nRUN echo `\n  hi\n", {}),
        ("# a comment\n\n# note=not a directive\nFROM a\n", {}),
        ("FROM a\nADD --chown=1000:1000 --chmod=644 app.tar.gz $HOME/\n", {}),
        ("FROM a\nRUN echo --mount=x http://example.invalid\nCOPY a.txt /x\n", {}),
        ("FROM a\nRUN -- --mount=x\n", {}),  # `--` ends the flags, as in BuildKit
        ("ARG BASE=busybox\nFROM $BASE\n", {}),
        ("FROM busybox AS Build\nFROM build\nCOPY --from=BUILD /x /x\nCOPY --from=0 /x /y\n", {}),
        ("FROM scratch\n", {**ALLOWLIST, "require_base_digest": True}),
        ("FROM busybox:1 AS b\nFROM b\n", ALLOWLIST),
        ("FROM busybox:1\nCOPY --from=busybox:2 /x /x\n", ALLOWLIST),
        ("FROM registry.example.invalid/team/img:3\n", ALLOWLIST),
        (f"FROM busybox:1@{DIGEST}\n", {**ALLOWLIST, "require_base_digest": True}),
        ("FROM a\n" * 8 + "RUN x\n" * 192, {}),
    ],
)
def test_check_accepts(text: str, policy: dict[str, Any]) -> None:
    run_check(text, **policy)


SWITCHED = {
    "allow_parser_directives": "# syntax=x/y\nFROM a\n",
    "allow_remote_add": "FROM a\nADD https://example.invalid/x /x\n",
    "allow_run_flags": "FROM a\nRUN --mount=type=cache,target=/c true\n",
    "allow_onbuild": "FROM a\nONBUILD RUN true\n",
}


@pytest.mark.parametrize("switch", sorted(SWITCHED))
def test_each_switch_lets_only_its_construct_through(switch: str) -> None:
    for construct, text in SWITCHED.items():
        if construct == switch:
            run_check(text, **{switch: True})
        else:
            refusal(text, **{switch: True})


def test_policy_from_settings() -> None:
    assert SubmissionPolicy.from_settings(Settings(_env_file=None)) == SubmissionPolicy()
    settings = Settings(
        _env_file=None,
        allowed_base_images=" busybox:*, Registry.Example.invalid/Img@sha256:* ,",
        require_base_digest="true",
        max_stages="2",
        allow_onbuild="1",
    )
    policy = SubmissionPolicy.from_settings(settings)
    assert policy.allowed_base_images == ("busybox:*", "Registry.Example.invalid/Img@sha256:*")
    assert policy.require_base_digest and policy.allow_onbuild and policy.max_stages == 2


# Where the parser in dockerfile.py and the engine's disagree on where an instruction ends, the
# policy checks instructions the engine never sees. These document the known cases.
def test_escaped_escape_does_not_hide_the_next_instruction() -> None:
    refusal("FROM a\nRUN echo \\\\\nADD http://example.invalid/x /x\n")


def test_non_ascii_space_does_not_make_a_continuation() -> None:
    refusal("FROM a\nRUN true \\\u00a0\nONBUILD RUN true\n")
