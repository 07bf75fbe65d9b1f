"""Pure logic: the Dockerfile parser, the result parser and the scan policy."""

from __future__ import annotations

import json

import pytest

from dockguard import dockerfile
from dockguard.errors import ErrorCode, JobFailure, SubmissionError
from dockguard.models import Finding, ScannerInfo, ScanPolicy
from dockguard.sandbox import parse_result
from dockguard.scanning.policy import check_key, evaluate
from dockguard.scanning.report import parse_config_report, parse_image_report, parse_version
from dockguard.settings import Severity


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
    ("raw", "perf"),
    [(b'{"perf": 1}', 1.0), (b'{"perf": -0.5, "x": [1, {"y": null}]}', -0.5), (b"{}", None)],
)
def test_result_accepts_strict_objects(raw: bytes, perf: float | None) -> None:
    result = parse_result(raw)
    assert result.perf == perf
    assert result.data == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"perf": NaN}',
        b'{"perf": Infinity}',
        b'{"perf": 1e999}',
        b'{"perf": "0.9"}',
        b'{"perf": true}',
        b'{"perf": ' + b"9" * 400 + b"}",  # an integer too large for a float
        b'{"n": ' + b"1" * 100_000 + b"}",  # beyond Python's int digit limit
        b"[1, 2]",
        b"0.9",
        b"\xff\xfe{}",
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
        b'{"a": ' * 40 + b"1" + b"}" * 40,  # deeper than MAX_DEPTH
        b'{"perf": 1',
    ],
)
def test_result_rejects_everything_else(raw: bytes) -> None:
    with pytest.raises(JobFailure) as caught:
        parse_result(raw)
    assert caught.value.code == ErrorCode.RESULT_INVALID


SCANNER = ScannerInfo(name="trivy", version="0.76.0")


def finding(check: str, severity: Severity, line: int | None = None) -> Finding:
    return Finding(id=check, severity=severity, title="t", message="m", line=line)


def policy(*fail_on: Severity, ignore: tuple[str, ...] = (), unfixed: bool = False) -> ScanPolicy:
    return ScanPolicy(fail_on=list(fail_on), ignore=list(ignore), ignore_unfixed=unfixed)


def test_policy_fails_on_configured_severities_only() -> None:
    findings = [finding("DS-0001", Severity.MEDIUM, 1), finding("DS-0002", Severity.HIGH, 2)]
    strict = evaluate(findings, policy=policy(Severity.HIGH), scanner=SCANNER, duration_s=1)
    assert strict.passed is False
    assert strict.summary[Severity.HIGH] == 1 and strict.summary[Severity.MEDIUM] == 1
    assert [f.id for f in strict.findings] == ["DS-0002", "DS-0001"]  # most severe first
    lenient = evaluate(findings, policy=policy(Severity.CRITICAL), scanner=SCANNER, duration_s=1)
    assert lenient.passed is True


def test_policy_ignore_list_accepts_both_id_spellings() -> None:
    assert check_key("DS002") == check_key("ds-0002") == "DS-0002"
    assert check_key("cve-2024-1234") == "CVE-2024-1234"
    report = evaluate(
        [finding("DS-0002", Severity.HIGH)],
        policy=policy(Severity.HIGH, ignore=("DS002",)),
        scanner=SCANNER,
        duration_s=1,
    )
    assert report.passed is True and report.findings[0].ignored is True


def test_policy_ignore_unfixed_applies_to_vulnerabilities_without_a_fix() -> None:
    unfixed = Finding(id="CVE-1", severity=Severity.HIGH, title="t", package="p")
    fixed = Finding(id="CVE-2", severity=Severity.LOW, title="t", package="p", fixed_version="2")
    report = evaluate(
        [unfixed, fixed], policy=policy(Severity.HIGH, unfixed=True), scanner=SCANNER, duration_s=1
    )
    assert report.passed is True
    assert [(f.id, f.ignored) for f in report.findings] == [("CVE-1", True), ("CVE-2", False)]


def test_image_report_parsing() -> None:
    vuln = {"VulnerabilityID": "CVE-1", "PkgName": "p", "InstalledVersion": "1",
            "FixedVersion": "2", "Severity": "CRITICAL", "Title": "t"}  # fmt: skip
    raw = json.dumps({"SchemaVersion": 2, "Results": [{"Vulnerabilities": [vuln, vuln]}]})
    [found] = parse_image_report(raw.encode())  # duplicates are one finding
    assert (found.id, found.package, found.installed_version, found.fixed_version) == (
        "CVE-1", "p", "1", "2",
    )  # fmt: skip
    assert parse_image_report(b'{"SchemaVersion": 2}') == []  # an image with no OS
    with pytest.raises(JobFailure):
        parse_image_report(b'{"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{}]}]}')


def test_version_parsing() -> None:
    assert parse_version(b'{"Version": "0.76.0"}') == ("0.76.0", None)
    version, db = parse_version(
        b'{"Version": "0.76.0", "VulnerabilityDB": {"Version": 2, '
        b'"UpdatedAt": "2025-01-02T03:04:05Z", "NextUpdate": "2025-01-03T03:04:05Z"}}'
    )
    assert version == "0.76.0" and db is not None and db.updated_at.year == 2025


def test_trivy_report_parsing() -> None:
    report = {
        "SchemaVersion": 2,
        "Results": [
            {
                "Misconfigurations": [
                    {"ID": "DS-0002", "Severity": "HIGH", "Title": "root", "Message": "m",
                     "Status": "FAIL", "CauseMetadata": {"StartLine": 2}},
                    {"ID": "DS-0026", "Severity": "LOW", "Title": "hc", "Message": "m",
                     "Status": "FAIL", "CauseMetadata": {}},
                    {"ID": "DS-0001", "Severity": "MEDIUM", "Title": "ok", "Status": "PASS"},
                ]
            }
        ]
    }  # fmt: skip
    findings = parse_config_report(json.dumps(report).encode())
    assert [(f.id, f.severity, f.line) for f in findings] == [
        ("DS-0002", Severity.HIGH, 2), ("DS-0026", Severity.LOW, None),
    ]  # fmt: skip


@pytest.mark.parametrize("raw", [b"not json", b'{"Results": [{"Misconfigurations": [{}]}]}', b"[]"])
def test_trivy_report_in_an_unexpected_shape_fails_the_scan(raw: bytes) -> None:
    with pytest.raises(JobFailure) as caught:
        parse_config_report(raw)
    assert caught.value.code == ErrorCode.SCANNER_FAILED


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
