"""The scan policy: findings against the configured severities, ignore list and unfixed."""

from __future__ import annotations

from dockguard.models import Finding, ScannerInfo, ScanPolicy
from dockguard.scanning.policy import check_key, evaluate
from dockguard.settings import Severity

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
