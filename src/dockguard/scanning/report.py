"""Trivy's JSON output → dockguard's findings and DB metadata. Pure functions; anything that
does not have the expected shape is a `scanner_failed` error, never an empty (passing) report."""

from __future__ import annotations

import json
from typing import Any

from dockguard.errors import ErrorCode, JobFailure
from dockguard.models import DbMetadata, Finding
from dockguard.settings import Severity

_PARSE_ERRORS = (ValueError, TypeError, AttributeError, KeyError)


def scanner_failed(message: str) -> JobFailure:
    return JobFailure(ErrorCode.SCANNER_FAILED, message)


def _severity(value: object) -> Severity:
    name = str(value).upper()
    return Severity(name) if name in Severity.__members__ else Severity.UNKNOWN


def _results(report: Any) -> list[dict[str, Any]]:
    if not isinstance(report, dict) or "SchemaVersion" not in report:
        raise TypeError("not a Trivy report")
    results = report.get("Results") or []
    if not isinstance(results, list):
        raise TypeError("Results is not a list")
    return results


def parse_config_report(raw: bytes) -> list[Finding]:
    """`trivy config --format json` → failed misconfiguration checks."""
    try:
        return [
            _misconfiguration(item)
            for result in _results(json.loads(raw))
            for item in (result.get("Misconfigurations") or [])
            if item.get("Status", "FAIL") == "FAIL"
        ]
    except _PARSE_ERRORS as exc:
        raise scanner_failed("reading the Dockerfile scan report: unexpected format") from exc


def _misconfiguration(item: dict[str, Any]) -> Finding:
    line = (item.get("CauseMetadata") or {}).get("StartLine") or None
    return Finding(
        id=str(item["ID"]),
        severity=_severity(item["Severity"]),
        title=str(item.get("Title", "")),
        message=str(item.get("Message", "")),
        line=int(line) if line else None,
    )


def parse_image_report(raw: bytes) -> list[Finding]:
    """`trivy image --format json` → vulnerabilities, one finding per (id, package)."""
    try:
        findings = {
            (vuln["VulnerabilityID"], vuln["PkgName"]): _vulnerability(vuln)
            for result in _results(json.loads(raw))
            for vuln in (result.get("Vulnerabilities") or [])
        }
    except _PARSE_ERRORS as exc:
        raise scanner_failed("reading the image scan report: unexpected format") from exc
    return list(findings.values())


def _vulnerability(item: dict[str, Any]) -> Finding:
    return Finding(
        id=str(item["VulnerabilityID"]),
        severity=_severity(item.get("Severity", "UNKNOWN")),
        title=str(item.get("Title") or item["VulnerabilityID"])[:300],
        message=str(item.get("Description") or "")[:1000],
        package=str(item["PkgName"]),
        installed_version=str(item.get("InstalledVersion") or "") or None,
        fixed_version=str(item.get("FixedVersion") or "") or None,
    )


def parse_version(raw: bytes) -> tuple[str, DbMetadata | None]:
    """`trivy version --format json [--cache-dir D]` → (version, the DB's metadata or None)."""
    try:
        data = json.loads(raw)
        version = str(data["Version"])
        db = data.get("VulnerabilityDB")
        metadata = (
            DbMetadata(
                version=int(db["Version"]),
                updated_at=db["UpdatedAt"],
                next_update=db.get("NextUpdate"),
                downloaded_at=db.get("DownloadedAt"),
            )
            if db
            else None
        )
    except (*_PARSE_ERRORS, ValueError) as exc:
        raise scanner_failed("reading the scanner version: unexpected format") from exc
    return version, metadata
