"""What a job needs of the world, as Protocols: the sandbox (the Docker Engine), the scanner
(Trivy) and the two stores (Redis). `services.py` wires the real ones (`EngineSandbox`,
`TrivyScanner`, `RedisJobStore`, `RedisDockerfileStore`); the unit tests run the pipeline
against in-memory fakes of the same Protocols."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from dockguard.base_images import BaseImage
from dockguard.lines import LineSink
from dockguard.models import (
    BuildLimits,
    DbMetadata,
    Job,
    JobStatus,
    RunLimits,
    ScannerStatus,
    ScanReport,
)
from dockguard.sandbox import BuildOutcome, Prepared, RunOutcome
from dockguard.sandbox.engine import EngineRuntimes
from dockguard.sandbox.watchdog import Watched
from dockguard.store.listing import Page, Position
from dockguard.store.queue import QueueEntry


class Sandbox(Protocol):
    async def ping(self) -> None: ...

    async def runtimes(self) -> EngineRuntimes:
        """The engine's OCI runtimes and its default one (what builds get)."""

    async def check_bases(self, bases: tuple[BaseImage, ...], *, pull_timeout_s: float) -> None:
        """Raise a JobFailure for a base the build may not start from."""

    async def build(
        self, job_id: str, dockerfile: str, limits: BuildLimits, lines: LineSink | None = None
    ) -> BuildOutcome:
        """Raise BuildFailure (with the log tail) when the build fails or times out; each line
        the build prints goes to `lines` too, as it is printed."""

    async def prepare(self, job_id: str, image_id: str) -> Prepared:
        """Resolve the run user and check the image before anything of it runs."""

    async def run(
        self, job_id: str, prepared: Prepared, limits: RunLimits, lines: LineSink | None = None
    ) -> RunOutcome:
        """Each line the container prints goes to `lines` too, as it is printed."""

    async def fetch_result(self, container_id: str, max_bytes: int) -> bytes:
        """The raw bytes of /data/perf.json; raise a JobFailure when there is none to read."""

    async def cleanup(self, job_id: str) -> None:
        """Remove everything of the job; idempotent, never raises."""

    async def sweep(self, older_than_s: float) -> int:
        """Remove what outlived every job; returns how many objects."""

    async def watched(self) -> list[Watched]:
        """Every container dockguard manages in the engine, with its job and deadline labels."""

    async def kill_container(self, container_id: str) -> bool:
        """Kill and remove one container `watched` listed; False when it was not removed (gone
        already, or refused). Never raises for the container's own sake."""


class StageLog(LineSink, Protocol):
    async def aclose(self) -> None:
        """Send what is left; never raises."""


class JobLogs(Protocol):
    """The jobs' live logs (store/logs.py): one writer per stage of a job."""

    def writer(self, job_id: str, stage: Literal["build", "run"]) -> StageLog: ...


class Scanner(Protocol):
    async def scan_dockerfile(self, text: str, job_id: str) -> ScanReport: ...

    async def scan_image(self, image_id: str, job_id: str) -> ScanReport: ...

    async def status(self) -> ScannerStatus: ...

    async def update_db(self) -> DbMetadata: ...


class DockerfileStore(Protocol):
    async def put(self, job_id: str, text: str) -> None: ...

    async def get(self, job_id: str) -> str | None:
        """None once it has expired; raise a JobFailure when it cannot be read back."""

    async def delete(self, job_id: str) -> None: ...

    async def release(self, job_id: str) -> None:
        """The job has ended: let its Dockerfile go (now, or later by policy). Never raises."""


class CallbackQueue(Protocol):
    """The webhooks still to send, by job id and due time (store/callbacks.py)."""

    async def claim(self, *, lease_s: float, limit: int, now: float | None = None) -> list[str]:
        """Ids of the jobs whose attempt is due, each held for `lease_s`."""

    async def retry_at(self, job_id: str, when: float) -> None: ...

    async def done(self, job_id: str) -> None: ...


class JobStore(Protocol):
    async def create(
        self, job: Job, dockerfile: str, *, deadline_s: float, queue: QueueEntry | None = None
    ) -> bool:
        """Store the job (and, with `queue`, queue it at once); False, nothing kept, when the
        queue is full."""

    async def enqueue(self, queue: QueueEntry) -> bool:
        """Queue a stored job; False when the queue is full."""

    async def get(self, job_id: str) -> Job | None: ...

    async def get_json(self, job_id: str) -> bytes | None:
        """The job as stored: its API JSON."""

    async def delete(self, job_id: str) -> None: ...

    async def list_jobs(
        self, *, status: JobStatus | None, limit: int, after: Position | None
    ) -> Page:
        """Up to `limit` jobs (with `status`, if given) created before `after` (None: the
        newest), newest first; `Page.next` is where the next page starts, None at the end."""

    async def claim(self, job_id: str, *, lease_s: float) -> str | None:
        """A new attempt holds the job from now on, and its lease for `lease_s`; returns its
        token, or None while another attempt's lease runs."""

    async def renew(self, job_id: str, attempt: str, lease_s: float) -> bool:
        """Extend `attempt`'s lease to `lease_s` from now (0: end it); False when it is not
        that attempt's any more."""

    async def holds(self, job_id: str, attempt: str) -> bool:
        """Whether `attempt` is still the job's latest attempt."""

    async def update(
        self, job_id: str, change: Callable[[Job], None], *, attempt: str | None = None
    ) -> Job | None:
        """Apply `change` atomically; None when the job has expired; raise StaleUpdate when the
        status would move backwards or out of a terminal status, and (given `attempt`)
        Superseded when a later attempt has claimed the job."""

    async def set_deadline(self, job_id: str, deadline_s: float) -> None: ...

    async def overdue(self, now: float, limit: int = 100) -> list[str]: ...

    async def forget_deadline(self, job_id: str) -> None: ...
