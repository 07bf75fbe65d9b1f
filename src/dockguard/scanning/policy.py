"""Findings + policy → verdict. Pure logic, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable

from dockguard.models import DbMetadata, Finding, ScannerInfo, ScanPolicy, ScanReport
from dockguard.settings import Severity

_CHECK_ID = re.compile(r"^([A-Z]+)-?0*(\d+)\Z")
_SEVERITY_ORDER = list(Severity)


def check_key(check_id: str) -> str:
    """One spelling per check: Trivy has written `DS002` and `DS-0002` for the same check.
    Vulnerability ids (`CVE-2024-1234`) are only upper-cased."""
    match = _CHECK_ID.match(check_id.strip().upper())
    return f"{match.group(1)}-{int(match.group(2)):04d}" if match else check_id.strip().upper()


def _ignored(finding: Finding, policy: ScanPolicy, ignore: set[str]) -> bool:
    if check_key(finding.id) in ignore:
        return True
    unfixed = finding.package is not None and not finding.fixed_version
    return policy.ignore_unfixed and unfixed


def evaluate(
    findings: Iterable[Finding],
    *,
    policy: ScanPolicy,
    scanner: ScannerInfo,
    db: DbMetadata | None = None,
    cached: bool = False,
    duration_s: float,
) -> ScanReport:
    ignore = {check_key(i) for i in policy.ignore}
    marked = [f.model_copy(update={"ignored": _ignored(f, policy, ignore)}) for f in findings]
    marked.sort(key=lambda f: (_SEVERITY_ORDER.index(f.severity), f.line or 0, f.id))
    summary = {severity: 0 for severity in Severity}
    for finding in marked:
        summary[finding.severity] += 1
    passed = not any(f.severity in policy.fail_on and not f.ignored for f in marked)
    return ScanReport(
        passed=passed,
        summary=summary,
        findings=marked,
        policy=policy,
        scanner=scanner,
        db=db,
        cached=cached,
        duration_s=round(duration_s, 3),
    )
