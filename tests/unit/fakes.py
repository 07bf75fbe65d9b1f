"""In-memory fakes of the Protocols in `dockguard.ports`, for the pipeline's unit tests. They
keep the contracts the real ones keep (a status only moves forward; cleanup is idempotent), and
record what was asked of them so a test can say what the pipeline did."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from arq.connections import ArqRedis

from dockguard.base_images import BaseImage
from dockguard.errors import JobFailure
from dockguard.lines import LineSink
from dockguard.models import (
    BuildLimits,
    DbMetadata,
    Finding,
    Job,
    JobStatus,
    RunLimits,
    ScannerInfo,
    ScannerStatus,
    ScanPolicy,
    ScanReport,
    utcnow,
)
from dockguard.sandbox import BuildOutcome, Prepared, RunOutcome
from dockguard.sandbox.engine import EngineRuntimes
from dockguard.sandbox.watchdog import Watched
from dockguard.scanning import evaluate
from dockguard.services import Services
from dockguard.settings import Settings, Severity
from dockguard.store.jobs import Superseded, changed
from dockguard.store.listing import Page, Position, position
from dockguard.store.queue import QueueEntry

SCANNER = ScannerInfo(name="trivy", version="0.0-fake", backend="fake")
POLICY = ScanPolicy(fail_on=[Severity.HIGH, Severity.CRITICAL], ignore=[])


def report(*severities: Severity) -> ScanReport:
    """A scan report with one finding per severity, judged by the default policy."""
    findings = [
        Finding(id=f"DS-{n:04d}", severity=severity, title=f"finding {n}")
        for n, severity in enumerate(severities, start=1)
    ]
    return evaluate(findings, policy=POLICY, scanner=SCANNER, duration_s=0.0)


class FakeDockerfileStore:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.released: list[str] = []

    async def put(self, job_id: str, text: str) -> None:
        self.texts[job_id] = text

    async def get(self, job_id: str) -> str | None:
        return self.texts.get(job_id)

    async def delete(self, job_id: str) -> None:
        self.texts.pop(job_id, None)

    async def release(self, job_id: str) -> None:
        self.released.append(job_id)
        self.texts.pop(job_id, None)


class FakeJobStore:
    def __init__(self, dockerfiles: FakeDockerfileStore) -> None:
        self.records: dict[str, str] = {}  # JSON, as in Redis: nothing shared with the caller
        self.deadlines: dict[str, float] = {}
        self.queued: list[str] = []  # the ids `create`/`enqueue` queued
        self.attempts: dict[str, str] = {}
        self.leases: dict[str, str] = {}  # job id → the attempt whose lease runs
        self._dockerfiles = dockerfiles

    async def create(
        self, job: Job, dockerfile: str, *, deadline_s: float, queue: QueueEntry | None = None
    ) -> bool:
        if queue is not None and not await self.enqueue(queue):
            return False
        await self._dockerfiles.put(job.id, dockerfile)
        self.records[job.id] = job.model_dump_json()
        self.deadlines[job.id] = deadline_s
        return True

    async def enqueue(self, queue: QueueEntry) -> bool:
        if len(self.queued) >= queue.max_queued:
            return False
        self.queued.append(queue.job_id)
        return True

    async def get(self, job_id: str) -> Job | None:
        raw = self.records.get(job_id)
        return None if raw is None else Job.model_validate_json(raw)

    async def get_json(self, job_id: str) -> bytes | None:
        raw = self.records.get(job_id)
        return None if raw is None else raw.encode()

    async def delete(self, job_id: str) -> None:
        self.records.pop(job_id, None)
        self.deadlines.pop(job_id, None)
        await self._dockerfiles.delete(job_id)

    async def claim(self, job_id: str, *, lease_s: float) -> str | None:
        if job_id in self.leases:  # leases never lapse here: a test ends one with `renew`
            return None
        self.attempts[job_id] = self.leases[job_id] = token = uuid.uuid4().hex
        return token

    async def renew(self, job_id: str, attempt: str, lease_s: float) -> bool:
        if self.leases.get(job_id) != attempt:
            return False
        if not lease_s:
            del self.leases[job_id]
        return True

    async def holds(self, job_id: str, attempt: str) -> bool:
        return self.attempts.get(job_id, attempt) == attempt

    async def update(
        self, job_id: str, change: Callable[[Job], None], *, attempt: str | None = None
    ) -> Job | None:
        if attempt is not None and not await self.holds(job_id, attempt):
            raise Superseded(f"a later attempt holds job {job_id}")
        before = await self.get(job_id)
        if before is None:
            return None
        job = changed(before, change)
        self.records[job_id] = job.model_dump_json()
        if job.status.terminal:
            self.deadlines.pop(job_id, None)
        return job

    async def set_deadline(self, job_id: str, deadline_s: float) -> None:
        if job_id in self.deadlines:
            self.deadlines[job_id] = deadline_s

    async def overdue(self, now: float, limit: int = 100) -> list[str]:
        late = sorted((at, job_id) for job_id, at in self.deadlines.items() if at <= now)
        return [job_id for _, job_id in late[:limit]]

    async def forget_deadline(self, job_id: str) -> None:
        self.deadlines.pop(job_id, None)

    async def list_jobs(
        self, *, status: JobStatus | None, limit: int, after: Position | None
    ) -> Page:
        jobs = sorted(
            (Job.model_validate_json(raw) for raw in self.records.values()),
            key=position,
            reverse=True,
        )
        later = [j for j in jobs if after is None or position(j) < after]
        picked = [j for j in later if status is None or j.status == status][:limit]
        more = bool(picked) and any(position(j) < position(picked[-1]) for j in later)
        return Page(picked, position(picked[-1]) if more and len(picked) == limit else None)


@dataclass
class FakeScanner:
    dockerfile_report: ScanReport = field(default_factory=report)
    image_report: ScanReport = field(default_factory=report)
    failure: JobFailure | None = None  # raised by every scan
    scanned: list[str] = field(default_factory=list)

    async def scan_dockerfile(self, text: str, job_id: str) -> ScanReport:
        self.scanned.append("dockerfile")
        if self.failure:
            raise self.failure
        return self.dockerfile_report

    async def scan_image(self, image_id: str, job_id: str) -> ScanReport:
        self.scanned.append(f"image {image_id}")
        if self.failure:
            raise self.failure
        return self.image_report

    async def status(self) -> ScannerStatus:
        return ScannerStatus(
            scanner=SCANNER, db=None, db_age_h=None, db_max_age_h=48, db_usable=True
        )

    async def update_db(self) -> DbMetadata:
        return DbMetadata(version=2, updated_at=utcnow())


@dataclass
class FakeSandbox:
    """Every step succeeds with a perf.json of `{"perf": 0.5}` unless a test says otherwise:
    `fail` maps a step name to the exception it raises; `hang` names a step that never ends."""

    run_outcome: RunOutcome = field(
        default_factory=lambda: RunOutcome(
            container_id="c" * 64,
            exit_code=0,
            oom_killed=False,
            timed_out=False,
            duration_s=0.1,
            log_tail=["ran"],
            data_mb=64,
        )
    )
    result: bytes = b'{"perf": 0.5}'
    fail: dict[str, BaseException] = field(default_factory=dict)
    hang: str | None = None
    hanging: asyncio.Event = field(default_factory=asyncio.Event)  # set once `hang` is reached
    calls: list[str] = field(default_factory=list)
    build_limits: list[BuildLimits] = field(default_factory=list)
    run_limits: list[RunLimits] = field(default_factory=list)
    containers: list[Watched] = field(default_factory=list)  # what `watched` lists

    async def _step(self, name: str) -> None:
        self.calls.append(name)
        if name == self.hang:
            self.hanging.set()
            await asyncio.Event().wait()
        if name in self.fail:
            raise self.fail[name]

    async def ping(self) -> None:
        await self._step("ping")

    async def runtimes(self) -> EngineRuntimes:
        await self._step("ping")
        return EngineRuntimes(names=("runc",), default="runc")

    async def check_bases(self, bases: tuple[BaseImage, ...], *, pull_timeout_s: float) -> None:
        await self._step("check_bases")

    async def build(
        self, job_id: str, dockerfile: str, limits: BuildLimits, lines: LineSink | None = None
    ) -> BuildOutcome:
        self.build_limits.append(limits)
        if lines is not None:
            lines.write("Step 1/1 : FROM busybox")
        await self._step("build")
        return BuildOutcome(image_id="sha256:" + "b" * 64, duration_s=0.2, log_tail=["built"])

    async def prepare(self, job_id: str, image_id: str) -> Prepared:
        await self._step("prepare")
        return Prepared(image_id=image_id, user="1000:1000")

    async def run(
        self, job_id: str, prepared: Prepared, limits: RunLimits, lines: LineSink | None = None
    ) -> RunOutcome:
        self.run_limits.append(limits)
        if lines is not None:
            lines.write(b"ran \xff")
        await self._step("run")
        return self.run_outcome

    async def fetch_result(self, container_id: str, max_bytes: int) -> bytes:
        await self._step("fetch_result")
        return self.result

    async def cleanup(self, job_id: str) -> None:
        self.calls.append("cleanup")

    async def sweep(self, older_than_s: float) -> int:
        self.calls.append("sweep")
        return 0

    async def watched(self) -> list[Watched]:
        self.calls.append("watched")
        return list(self.containers)

    async def kill_container(self, container_id: str) -> bool:
        self.calls.append(f"kill {container_id}")
        found = [c for c in self.containers if c.id == container_id]
        self.containers = [c for c in self.containers if c.id != container_id]
        return bool(found)


@dataclass
class FakeStageLog:
    """One stage's live log: its lines as written, and whether it was closed (sent)."""

    stage: str
    lines: list[str | bytes] = field(default_factory=list)
    closed: bool = False

    def write(self, line: str | bytes) -> None:
        assert not self.closed, "a line written after the stage's log was closed"
        self.lines.append(line)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeJobLogs:
    """Every stage log the pipeline opened, in order, with the job's status when it opened."""

    store: FakeJobStore
    opened: list[tuple[str, str, FakeStageLog]] = field(default_factory=list)

    def writer(self, job_id: str, stage: Literal["build", "run"]) -> FakeStageLog:
        log = FakeStageLog(stage)
        self.opened.append((job_id, stage, log))
        return log


@dataclass
class Fakes:
    services: Services
    store: FakeJobStore
    dockerfiles: FakeDockerfileStore
    scanner: FakeScanner
    sandbox: FakeSandbox
    logs: FakeJobLogs


def fakes(settings: Settings | None = None) -> Fakes:
    dockerfiles = FakeDockerfileStore()
    store = FakeJobStore(dockerfiles)
    scanner = FakeScanner()
    fake_sandbox = FakeSandbox()
    logs = FakeJobLogs(store)
    services = Services(
        settings=settings or Settings(_env_file=None),
        redis=cast(ArqRedis, None),  # the pipeline never touches the queue
        store=store,
        dockerfiles=dockerfiles,
        scanner=scanner,
        sandbox=fake_sandbox,
        logs=logs,
    )
    return Fakes(services, store, dockerfiles, scanner, fake_sandbox, logs)
