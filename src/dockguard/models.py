"""The pydantic models on the wire (HTTP) and in Redis, and the limits a job runs under (frozen:
built once from the settings, applied by the sandbox and recorded on the job as they are)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dockguard.settings import Settings, Severity


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    QUEUED = "queued"
    SCANNING = "scanning"
    BUILDING = "building"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def rank(self) -> int:
        """Position in the only order a job may move in: queued → … → a terminal status."""
        return min(_ORDER.index(self), len(_ORDER) - len(_TERMINAL))


_ORDER = list(JobStatus)
_TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.CANCELLED}
)


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable snake_case error code.", examples=["run_nonzero_exit"])
    message: str = Field(description="Human-readable explanation.")


class Finding(BaseModel):
    id: str = Field(description="Check id (`DS-0002`) or vulnerability id (`CVE-2024-1234`).")
    severity: Severity
    title: str
    message: str = ""
    line: int | None = Field(None, description="First Dockerfile line the finding is about.")
    package: str | None = Field(None, description="Vulnerable package (image scans).")
    installed_version: str | None = None
    fixed_version: str | None = Field(None, description="First fixed version; null: no fix yet.")
    ignored: bool = Field(False, description="True when the policy says this finding never fails.")


class ScannerInfo(BaseModel):
    name: str = "trivy"
    version: str
    backend: str = Field("local", description="`local` (subprocess) or `container`.")
    image: str | None = Field(None, description="The verified scanner image id (container).")


class DbMetadata(BaseModel):
    """Trivy's vulnerability DB, as its metadata.json describes it."""

    version: int
    updated_at: datetime
    next_update: datetime | None = None
    downloaded_at: datetime | None = None


class ScanPolicy(BaseModel):
    fail_on: list[Severity] = Field(description="Severities that make the scan fail.")
    ignore: list[str] = Field(description="Check or vulnerability ids that never fail a scan.")
    ignore_unfixed: bool = Field(False, description="Vulnerabilities without a fix never fail.")


class ScanReport(BaseModel):
    passed: bool
    summary: dict[Severity, int] = Field(description="Number of findings per severity.")
    findings: list[Finding]
    policy: ScanPolicy
    scanner: ScannerInfo
    db: DbMetadata | None = Field(None, description="The vulnerability DB used (image scans).")
    cached: bool = Field(False, description="True when the findings came from the scan cache.")
    duration_s: float


class ScanResults(BaseModel):
    dockerfile: ScanReport | None = None
    image: ScanReport | None = Field(
        None, description="Vulnerabilities of the built image; null when image scans are off."
    )


class ScannerStatus(BaseModel):
    """What `GET /v1/scanner` answers: the scanner, its DB and whether the DB is usable."""

    scanner: ScannerInfo
    db: DbMetadata | None
    db_age_h: float | None
    db_max_age_h: float
    db_usable: bool
    problem: str | None = Field(None, description="Why image scans would fail now, if they would.")


class BuildInfo(BaseModel):
    image_id: str | None = None
    duration_s: float | None = None
    log_tail: list[str] = Field(default_factory=list)
    limits: BuildLimits | None = None


class BuildLimits(BaseModel):
    """The build's sandbox (`POST /build` parameters), recorded on the job as it was applied."""

    model_config = ConfigDict(frozen=True)

    memory_mb: int
    cpus: float
    pids: int = Field(description="Process limit of the build's containers; 0: none.")
    timeout_s: float
    network: Literal["egress", "none", "bridge"]
    nocache: bool
    file_size_mb: int
    nofile: int

    @classmethod
    def from_settings(cls, s: Settings) -> BuildLimits:
        return cls(
            memory_mb=s.build_memory_mb,
            cpus=s.build_cpus,
            pids=s.build_pids,
            timeout_s=s.build_timeout_s,
            network=s.build_network,
            nocache=s.build_nocache,
            file_size_mb=s.build_file_size_mb,
            nofile=s.build_nofile,
        )


class RunLimits(BaseModel):
    """The run container's sandbox, recorded on the job as it was applied (with the user the
    image resolved to, once known)."""

    model_config = ConfigDict(frozen=True)

    memory_mb: int
    cpus: float
    pids: int
    timeout_s: float
    network: Literal["none"] = "none"
    user: str | None = Field(None, description="uid:gid the run ran as; null until resolved.")
    tmpfs_mb: int
    file_size_mb: int
    nofile: int
    data_mb: int = Field(description="The most the run can write to /data, in all.")
    runtime: str | None = Field(None, description="OCI runtime; null: the engine's default.")

    @classmethod
    def from_settings(cls, s: Settings) -> RunLimits:
        return cls(
            memory_mb=s.run_memory_mb,
            cpus=s.run_cpus,
            pids=s.run_pids,
            timeout_s=s.run_timeout_s,
            tmpfs_mb=s.run_tmpfs_mb,
            file_size_mb=s.run_file_size_mb,
            nofile=s.run_nofile,
            data_mb=s.run_data_mb,
            runtime=s.runtime,
        )


class ScannerLimits(BaseModel):
    """Trivy's sandbox: its timeout (both backends) and, for the container backend, the
    container's limits."""

    model_config = ConfigDict(frozen=True)

    timeout_s: float
    memory_mb: int
    pids: int = 256
    # A DB download writes trivy.db (about 1 GB, and growing) and the Java DB in one go.
    file_size_mb: int = 16 * 1024
    nofile: int = 4096
    tmpfs_mb: int = Field(512, description="Scratch space at /tmp (Trivy unpacks layers there).")

    @classmethod
    def from_settings(cls, s: Settings) -> ScannerLimits:
        return cls(timeout_s=s.scanner_timeout_s, memory_mb=s.scanner_memory_mb)


class RequestedLimits(BaseModel):
    """The run limits a submission asks for, each lower than (or equal to) the operator's
    setting of the same name; an absent one is the setting. Checked at submission
    (`api/submissions.check_limits`), applied by `Limits.from_settings`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_timeout_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Seconds the run may take."
    )
    run_memory_mb: int | None = Field(None, gt=0, description="The run's memory, in MiB.")
    run_cpus: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="CPUs the run may use."
    )

    def applied_to(self, run: RunLimits) -> RunLimits:
        """`run` (the settings') lowered to what was asked for. Never raised above it: a job
        queued before the operator lowered a setting runs under the new one."""
        asked = {
            "timeout_s": self.run_timeout_s,
            "memory_mb": self.run_memory_mb,
            "cpus": self.run_cpus,
        }
        update = {k: min(v, getattr(run, k)) for k, v in asked.items() if v is not None}
        return run.model_copy(update=update)


@dataclass(frozen=True)
class Limits:
    """Every set of limits a job runs under, built from the settings (and the job's requested
    run limits, already checked against them) here and nowhere else."""

    build: BuildLimits
    run: RunLimits
    scanner: ScannerLimits

    @classmethod
    def from_settings(cls, settings: Settings, requested: RequestedLimits | None = None) -> Limits:
        run = RunLimits.from_settings(settings)
        return cls(
            build=BuildLimits.from_settings(settings),
            run=run if requested is None else requested.applied_to(run),
            scanner=ScannerLimits.from_settings(settings),
        )


class RunInfo(BaseModel):
    exit_code: int | None = None
    duration_s: float | None = None
    oom_killed: bool = False
    timed_out: bool = False
    log_tail: list[str] = Field(default_factory=list)
    limits: RunLimits | None = None


class JobResult(BaseModel):
    perf: float | None = Field(description="The `perf` member of perf.json, when a finite number.")
    data: dict[str, Any] = Field(description="The whole perf.json object.")


class CallbackAttempt(BaseModel):
    """One POST of the final job to its `callback_url`."""

    at: datetime
    status_code: int | None = Field(None, description="The receiver's HTTP status, if it answered.")
    error: (
        Literal["connection_failed", "timeout", "http_status", "address_not_allowed", "job_expired"]
        | None
    ) = Field(None, description="Why the attempt failed; null: delivered (2xx).")
    duration_s: float


class CallbackInfo(BaseModel):
    """The job's webhook: where its final state goes, and what happened each time it was sent."""

    url: str
    delivered: bool = Field(False, description="True once the receiver answered 2xx.")
    attempts: list[CallbackAttempt] = Field(default_factory=list)


class StatusEvent(BaseModel):
    """One step of the job's timeline: a status it moved to, when, and how long it stayed."""

    status: JobStatus
    at: datetime
    duration_s: float | None = Field(
        None, description="Seconds until the next status; null for the current one."
    )


class Job(BaseModel):
    """A submitted Dockerfile and everything that happened to it."""

    model_config = ConfigDict(use_enum_values=False)

    def model_post_init(self, context: Any, /) -> None:
        if not self.events:  # a new job: its timeline starts with its status
            self.events.append(StatusEvent(status=self.status, at=self.created_at))

    id: str
    status: JobStatus = JobStatus.QUEUED
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    error: ErrorInfo | None = None
    dockerfile_sha256: str
    dockerfile_bytes: int
    request_id: str | None = Field(
        None,
        description=(
            "The id of the request that submitted the job (its `X-Request-ID`), in the worker's "
            "log lines and the labels of the job's Docker objects (`dockguard.request-id`)."
        ),
    )
    requested_limits: RequestedLimits | None = Field(
        None,
        description=(
            "The run limits the submission asked for (null: none); `run.limits` holds the ones "
            "applied."
        ),
    )
    events: list[StatusEvent] = Field(
        default_factory=list,
        description="The timeline: each status the job moved to, when, and for how long.",
    )
    callback: CallbackInfo | None = Field(
        None, description="The webhook the submission asked for (null: none), and its attempts."
    )
    scan: ScanResults = Field(default_factory=ScanResults)
    build: BuildInfo | None = None
    run: RunInfo | None = None
    result: JobResult | None = None


class JobList(BaseModel):
    """What `GET /v1/jobs` answers: a page of jobs, newest first."""

    jobs: list[Job]
    next_cursor: str | None = Field(
        description=(
            "Pass as `cursor` to read the next page; null: there is none. A page can hold fewer "
            "jobs than `limit` (with a status filter, even none) and still have a next one."
        )
    )


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dockerfile: str = Field(description="The Dockerfile's text.")
    limits: RequestedLimits | None = Field(
        None,
        description=(
            "Run limits up to the service's (each optional; above one: 400 `limits_exceed_policy`)."
        ),
    )
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description=(
            "Webhook: the final job is POSTed here, signed (`X-Dockguard-Signature`). Only to "
            "hosts the service allows (else 400 `callback_not_allowed`)."
        ),
    )


ScannerDbCheck = Literal["ok", "stale", "missing", "not_checked"]


# Checks a caller may leave out of the verdict (`GET /readyz?exclude=…`).
ReadinessExclusion = Literal["docker", "workers"]


class ReadinessChecks(BaseModel):
    redis: Literal["ok", "failed"]
    docker: Literal["ok", "failed", "not_checked"] = Field(
        description="`not_checked` when excluded (`?exclude=docker`)."
    )
    workers: int = Field(description="Workers seen in the last 30 s.")
    scanner_db: ScannerDbCheck


class RuntimeReport(BaseModel):
    """Which OCI runtime dockguard's containers get."""

    run: str | None = Field(
        description="The runs' and scans' runtime: DOCKGUARD_RUNTIME, else the engine's default "
        "(null: the engine was not asked)."
    )
    build: str | None = Field(
        description="The builds' runtime: always the engine's default, since the builder takes "
        "none per build (null: the engine was not asked)."
    )


class Readiness(BaseModel):
    """What `GET /readyz` answers: every check by name (503: the `detail` names what failed)."""

    status: Literal["ready", "not_ready"]
    checks: ReadinessChecks
    runtime: RuntimeReport = Field(default_factory=lambda: RuntimeReport(run=None, build=None))
    excluded: list[ReadinessExclusion] = Field(
        default_factory=list, description="The checks left out of `status` (`?exclude=`)."
    )
    code: str | None = Field(None, description="`service_unavailable` when not ready.")
    detail: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem document, plus dockguard's stable error `code`."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = Field(
        None, description="The request's id (its `X-Request-ID`): quote it when reporting."
    )
