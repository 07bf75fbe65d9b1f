"""Dockerfiles the submission policy refuses at once (400 `dockerfile_forbidden`, naming the line),
the ones it lets through, and each switch that relaxes it. End to end through the API (the pure
`check` on its own is in tests/unit/test_submission_policy.py)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Dockguard, Instances
from tests.e2e.test_submission import assert_problem

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
