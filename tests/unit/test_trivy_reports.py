"""Trivy's JSON output: image and config reports and `trivy version`, and malformed ones."""

from __future__ import annotations

import json

import pytest

from dockguard.errors import ErrorCode, JobFailure
from dockguard.scanning.report import parse_config_report, parse_image_report, parse_version
from dockguard.settings import Severity


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
