"""The submission policy's pure `check`: what it refuses (naming the line), what it lets
through, and each switch that relaxes it. (tests/e2e/test_forbidden.py drives the same
policy through the API.)"""

from __future__ import annotations

from typing import Any

import pytest

from dockguard import dockerfile
from dockguard.errors import ErrorCode, SubmissionError
from dockguard.settings import Settings
from dockguard.submission_policy import SubmissionPolicy, check

DIGEST = "sha256:" + "a" * 64


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


# Inputs that beat the parser dockguard had before it followed the engine line for line (found
# against the real engine by tests/e2e/test_parser_differential.py): each was accepted while the
# engine ran a forbidden instruction the policy never saw.
SMUGGLING = [
    b"FROM %s\nRUN echo \\\n\x1c# hidden\nADD http://127.0.0.1:9/x /x\n",
    b"FROM %s\nRUN echo \\\n\x1f\nONBUILD RUN echo injected\n",
    b"FROM %s\nRUN echo \\\n\xc2\xa0\nONBUILD RUN echo injected\n",
    b"# frob=1\n# escape=`\nFROM %s\nRUN echo `\nADD http://127.0.0.1:9/x /x\n",
]


@pytest.mark.parametrize("template", SMUGGLING)
def test_smuggling_inputs_are_refused(template: bytes) -> None:
    body = template.replace(b"%s", b"dockguard-test/noop-shell:1")
    with pytest.raises(SubmissionError):  # by the parser or by the policy: never accepted
        check(dockerfile.parse(body, 65536), SubmissionPolicy())
