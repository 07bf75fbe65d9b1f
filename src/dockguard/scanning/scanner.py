"""The scanner as the pipeline sees it (`ports.Scanner`): scan a Dockerfile, scan an image, say
which scanner and DB it used, keep the DB fresh. Findings are cached; the policy is applied on
every scan."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiodocker

from dockguard.errors import ErrorCode, JobFailure
from dockguard.models import (
    DbMetadata,
    Finding,
    ScannerInfo,
    ScannerLimits,
    ScannerStatus,
    ScanPolicy,
    ScanReport,
)
from dockguard.sandbox import archive
from dockguard.scanning.backends import TrivyBackend
from dockguard.scanning.policy import evaluate
from dockguard.scanning.report import (
    parse_config_report,
    parse_image_report,
    parse_version,
    scanner_failed,
)
from dockguard.settings import Settings
from dockguard.store.keys import dockerfile_scan_key, image_scan_key
from dockguard.store.scan_cache import ScanCache

log = logging.getLogger(__name__)

_VERSION_TTL_S = 30.0  # how long the scanner version and DB metadata are trusted in memory
_MISSING_TTL_S = 2.0  # how long a DB found missing is (a download may be putting it there)
_OFFLINE = [
    "--skip-db-update", "--skip-java-db-update", "--offline-scan", "--skip-version-check",
    "--disable-telemetry", "--cache-backend", "memory", "--cache-dir", "{cache}",
]  # fmt: skip


class TrivyScanner:
    def __init__(
        self,
        backend: TrivyBackend,
        settings: Settings,
        docker: aiodocker.Docker,
        cache: ScanCache,
        limits: ScannerLimits,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._timeout_s = limits.timeout_s
        self._docker = docker
        self._cache = cache
        self._version: tuple[float, str, DbMetadata | None] | None = None
        self._reading = asyncio.Lock()
        self.policy = ScanPolicy(
            fail_on=sorted(set(settings.scan_fail_on)),
            ignore=sorted(set(settings.scan_ignore)),
            ignore_unfixed=settings.scan_ignore_unfixed,
        )

    async def _read_version(self, *, fresh: bool = False) -> tuple[str, DbMetadata | None]:
        """The scanner's version and its DB's metadata, trusted for `_VERSION_TTL_S`, a DB found
        missing only for `_MISSING_TTL_S` (`scanner update-db`, in another process, may put one
        there at any time: jobs would fail `scanner_db_missing` meanwhile). One read at a time:
        the callers that wait for it take its answer."""
        if not fresh and (known := self._trusted()) is not None:
            return known
        async with self._reading:
            if not fresh and (known := self._trusted()) is not None:
                return known  # read while this call waited
            now = time.monotonic()
            raw = await self._backend.run(
                ["version", "--format", "json", "--cache-dir", "{cache}"],
                timeout_s=self._timeout_s,
            )
            self._version = (now, *parse_version(raw))
            return self._version[1], self._version[2]

    def _trusted(self) -> tuple[str, DbMetadata | None] | None:
        if self._version is None:
            return None
        read_at, version, db = self._version
        ttl_s = _VERSION_TTL_S if db is not None else _MISSING_TTL_S
        return (version, db) if time.monotonic() - read_at <= ttl_s else None

    async def info(self) -> ScannerInfo:
        image = await self._backend.verify()
        version, _ = await self._read_version()
        return ScannerInfo(name="trivy", version=version, backend=self._backend.name, image=image)

    async def status(self) -> ScannerStatus:
        info = await self.info()
        _, db = await self._read_version()
        problem = None
        try:
            self._check_db(db)
        except JobFailure as failure:
            problem = failure.message
        return ScannerStatus(
            scanner=info,
            db=db,
            db_age_h=None if db is None else round(_age_h(db), 2),
            db_max_age_h=self._settings.scanner_db_max_age_h,
            db_usable=problem is None,
            problem=problem,
        )

    def _check_db(self, db: DbMetadata | None) -> DbMetadata:
        """Fail closed: Trivy itself scans silently with any DB it is given, however old."""
        if db is None:
            raise JobFailure(
                ErrorCode.SCANNER_DB_MISSING,
                "there is no vulnerability DB; an operator must run `dockguard scanner update-db`",
            )
        limit = self._settings.scanner_db_max_age_h
        if _age_h(db) > limit and not self._settings.scanner_allow_stale_db:
            raise JobFailure(
                ErrorCode.SCANNER_DB_STALE,
                f"the vulnerability DB is {_age_h(db):.0f} h old, over the {limit:g} h limit; "
                "an operator must refresh it (`dockguard scanner update-db`)",
            )
        return db

    async def scan_dockerfile(self, text: str, job_id: str) -> ScanReport:
        started = time.monotonic()
        info = await self.info()

        async def scan(work: Path) -> list[Finding]:
            (work / "Dockerfile").write_text(text, encoding="utf-8")
            args = ["config", "--quiet", "--skip-check-update", "--disable-telemetry"]
            args += ["--cache-backend", "memory", "--cache-dir", "{tmp}/trivy", "{work}"]
            return parse_config_report(await self._trivy(*args, work=work, job_id=job_id))

        key = dockerfile_scan_key(hashlib.sha256(text.encode()).hexdigest(), info.version)
        findings, cached = await self._cached(key, scan)
        return self._report(findings, info, None, cached, started)

    async def scan_image(self, image_id: str, job_id: str) -> ScanReport:
        started = time.monotonic()
        info = await self.info()
        _, metadata = await self._read_version()
        db = self._check_db(metadata)

        async def scan(work: Path) -> list[Finding]:
            await self._export(image_id, work / "image.tar")
            args = ["image", "--input", "{work}/image.tar", "--quiet", "--scanners", "vuln"]
            return parse_image_report(await self._trivy(*args, *_OFFLINE, work=work, job_id=job_id))

        key = image_scan_key(image_id, info.version, db.updated_at.isoformat())
        findings, cached = await self._cached(key, scan)
        return self._report(findings, info, db, cached, started)

    async def _cached(
        self, key: str, scan: Callable[[Path], Awaitable[list[Finding]]]
    ) -> tuple[list[Finding], bool]:
        """Findings from the cache, or from `scan` (given a fresh work directory), then cached."""
        if (findings := await self._cache.get(key)) is not None:
            return findings, True
        with tempfile.TemporaryDirectory(prefix="dockguard-scan-") as work:
            findings = await scan(Path(work))
        await self._cache.put(key, findings)
        return findings, False

    async def _trivy(self, *args: str, work: Path, job_id: str) -> bytes:
        """A scan's trivy run: JSON written to `{out}`, bounded by the scanner timeout."""
        timeout_s = self._timeout_s
        return await self._backend.run(
            [*args, "--format", "json", "--output", "{out}", "--timeout", f"{int(timeout_s)}s"],
            work=work,
            job_id=job_id,
            timeout_s=timeout_s,
        )

    async def _export(self, image_id: str, target: Path) -> None:
        """`docker save` of the image into `target`, refusing absurd sizes."""
        max_mb = self._settings.scan_image_max_mb
        try:
            async with asyncio.timeout(self._timeout_s):
                await archive.save_image(self._docker, image_id, target, max_mb * 1024 * 1024)
        except archive.FileTooLarge as exc:
            raise scanner_failed(f"the image is larger than the {max_mb} MiB scan limit") from exc
        except TimeoutError as exc:
            raise scanner_failed("exporting the image for its scan timed out") from exc
        except aiodocker.DockerError as exc:
            raise scanner_failed("exporting the image for its scan failed") from exc

    def _report(
        self,
        findings: list[Finding],
        info: ScannerInfo,
        db: DbMetadata | None,
        cached: bool,
        started: float,
    ) -> ScanReport:
        return evaluate(
            findings,
            policy=self.policy,
            scanner=info,
            db=db,
            cached=cached,
            duration_s=time.monotonic() - started,
        )

    async def update_db(self) -> DbMetadata:
        """Download a fresh vulnerability DB into the cache (the only scanner call with network)."""
        if self._backend.name == "local":
            Path(self._settings.scanner_cache_dir).mkdir(parents=True, exist_ok=True)
        common = ["--cache-dir", "{cache}", "--no-progress"]
        if self._settings.scanner_db_repository:
            common += ["--db-repository", self._settings.scanner_db_repository]
        await self._backend.run(
            ["image", "--download-db-only", *common],
            network=True,
            timeout_s=self._timeout_s,
        )
        # Java archives in an image need the Java DB too; without it their scan fails (closed),
        # so a failed Java DB download (e.g. no mirror for it) does not fail the update.
        try:
            await self._backend.run(
                ["image", "--download-java-db-only", "--cache-dir", "{cache}", "--no-progress"],
                network=True,
                timeout_s=self._timeout_s,
            )
        except JobFailure as failure:
            log.warning("Java DB download failed", extra={"why": failure.message})
        _, db = await self._read_version(fresh=True)
        if db is None:
            raise scanner_failed("the DB download finished but no DB is there")
        return db


def _age_h(db: DbMetadata) -> float:
    return (datetime.now(UTC) - db.updated_at).total_seconds() / 3600
