"""Findings + policy → verdict. Pure logic, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable

from dockguard.models import Finding, ScannerInfo, ScanPolicy, ScanReport
from dockguard.settings import Severity

_CHECK_ID = re.compile(r"^([A-Z]+)-?0*(\d+)$")


def check_key(check_id: str) -> str:
    """One spelling per check: Trivy has written `DS002` and `DS-0002` for the same check."""
    match = _CHECK_ID.match(check_id.strip().upper())
    return f"{match.group(1)}-{int(match.group(2)):04d}" if match else check_id.strip().upper()


def evaluate(
    findings: Iterable[Finding],
    *,
    fail_on: Iterable[Severity],
    ignore: Iterable[str],
    scanner: ScannerInfo,
    duration_s: float,
) -> ScanReport:
    policy = ScanPolicy(fail_on=sorted(set(fail_on)), ignore=sorted({check_key(i) for i in ignore}))
    ignored = set(policy.ignore)
    marked = [
        finding.model_copy(update={"ignored": check_key(finding.id) in ignored})
        for finding in findings
    ]
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
        duration_s=round(duration_s, 3),
    )


_SEVERITY_ORDER = list(Severity)
