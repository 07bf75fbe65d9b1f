"""One job, start to end: scan the Dockerfile → build → prepare → run → collect → clean up.

Every status change of a job happens in this module, through `JobStore.update` (the reaper's
`fail_lost` and the API's `cancel` included). The pipeline is
safe to run twice for the same job (arq retries jobs whose worker stopped): it starts by removing
whatever an earlier attempt left in the engine, and a job that already ended is left alone. A
delivery of a job whose attempt still runs elsewhere (that attempt renews its lease,
`ATTEMPT_LEASE_S`) starts nothing: it waits until that attempt ends the job, or its lease lapses
(its worker died). A step that fails because the engine's connection failed fails the job
`engine_unavailable`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import aiodocker
import aiohttp
from opentelemetry.trace import SpanKind
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dockguard import base_images, metrics, tracing
from dockguard.dockerfile import parse as parse_dockerfile
from dockguard.errors import ErrorCode, JobFailure, JobFinished, JobNotFound, SubmissionError
from dockguard.lines import LineSink
from dockguard.logs import job_id_var, request_id_var
from dockguard.models import (
    BuildInfo,
    ErrorInfo,
    Finding,
    Job,
    JobResult,
    JobStatus,
    Limits,
    RequestedLimits,
    RunInfo,
    ScanReport,
    utcnow,
)
from dockguard.sandbox import BuildFailure, Prepared, outcome_failure, parse_result
from dockguard.services import Services
from dockguard.settings import Settings
from dockguard.store import StaleUpdate, Superseded

log = logging.getLogger(__name__)

# What the steps' own timeouts leave out: preparing the image, reading the result, cleanup and
# the Redis writes, each bounded by a short timeout of its own.
STEP_SLACK_S = 300
ARQ_MARGIN_S = 60  # arq's own job timeout, past ours: a backstop behind the pipeline's
_READ_BACK_TIMEOUT_S = 5
RUNNING_MARGIN_S = 120  # the reaper's, past the job timeout: arq's timeout and cleanup first
# A job's record writes ride out a Redis outage: this many tries, 0.5 s apart at first, doubling
# up to 8 s (about 75 s in all), then the job fails on an internal error.
_REDIS_TRIES = 12
_REDIS_RETRY_FIRST_S = 0.5
_REDIS_RETRY_MAX_S = 8.0
# An attempt's lease on its job: as long as arq's lease on the delivery (jobs/worker.LEASE_S),
# renewed as often. A delivery of a job whose attempt is alive (arq redelivered it: its lease
# was lost, not its worker) waits for that attempt instead of starting the job over; once a
# dead attempt's lease lapses, the job is taken over.
ATTEMPT_LEASE_S = 20.0
_LEASE_RENEW_S = 5.0
_LEASE_POLL_S = 1.0


def step_timeouts_s(limits: Limits) -> dict[str, float]:
    """The longest each step of `_Pipeline.steps` that has a timeout of its own may take."""
    scan_s, build_s = limits.scanner.timeout_s, limits.build.timeout_s
    return {
        "dockerfile scan": scan_s,
        "base image pulls": build_s,
        "build": build_s,
        "image export": scan_s,
        "image scan": scan_s,
        "run": limits.run.timeout_s,
    }


def job_timeout_s(settings: Settings, limits: Limits | None = None) -> float:
    """The longest a job may take: DOCKGUARD_JOB_TIMEOUT_S, or by default longer than all of its
    steps' timeouts together, so that a step's own timeout fires first."""
    if settings.job_timeout_s:
        return settings.job_timeout_s
    limits = limits or Limits.from_settings(settings)
    return sum(step_timeouts_s(limits).values()) + STEP_SLACK_S


def running_deadline_s(settings: Settings) -> float:
    """How long after a worker takes a job it must have ended, or the reaper fails it."""
    return job_timeout_s(settings) + RUNNING_MARGIN_S


def queued_deadline_s(settings: Settings) -> float:
    """How long after its submission a job must have ended: it waits at most the queue timeout."""
    return settings.queue_timeout_s + running_deadline_s(settings)


def _internal() -> JobFailure:
    return JobFailure(ErrorCode.INTERNAL_ERROR, "an internal error stopped the job; see the logs")


# aiodocker's status for a request that never reached the engine (its connection failed).
_ENGINE_UNREACHABLE_STATUS = 900


def engine_unreachable(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, says the engine's
    connection failed: it could not be opened (aiodocker's status 900), broke or timed out
    under a request, or ended in the middle of a response body."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            return True
        if (
            isinstance(current, aiodocker.DockerError)
            and current.status == _ENGINE_UNREACHABLE_STATUS
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _engine_unavailable(exc: BaseException) -> JobFailure:
    log.warning("the docker engine could not be reached", extra={"why": repr(exc)[:300]})
    return JobFailure(
        ErrorCode.ENGINE_UNAVAILABLE,
        "the Docker Engine could not be reached or stopped answering during the job; "
        "submit it again",
    )


def _failure_of(exc: JobFailure) -> JobFailure:
    """A step's failure, unless the engine's connection caused it: then that is the failure
    (a verdict, `rejected`, stands whatever happened after it)."""
    if not exc.rejected and engine_unreachable(exc):
        return _engine_unavailable(exc)
    return exc


async def run_job(services: Services, job_id: str, trace_parent: str | None = None) -> str:
    """Process one job; returns its final status. Never raises for a job's own failure.
    `trace_parent`: the submitting request's span (`traceparent` syntax), when traced."""
    token = job_id_var.set(job_id)
    metrics.JOBS_IN_PROGRESS.inc()
    parent = tracing.context_from({"traceparent": trace_parent}) if trace_parent else None
    try:
        attributes = {"dockguard.job_id": job_id}
        with tracing.span(
            "job", parent=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            status = await _run(services, job_id)
            if span is not None:
                span.set_attribute("dockguard.status", status)
            return status
    finally:
        metrics.JOBS_IN_PROGRESS.dec()
        job_id_var.reset(token)


async def _run(services: Services, job_id: str) -> str:
    job = await services.store.get(job_id)
    if job is None:
        log.warning("job expired before it ran")
        return "expired"
    if job.status.terminal:
        return job.status.value
    # In every log line and Docker label of the job from here on: arq runs each job in a task of
    # its own, so this context is the job's alone.
    request_id_var.set(job.request_id)
    queue_timeout_s = services.settings.queue_timeout_s
    if job.status is JobStatus.QUEUED and _age_s(job) > queue_timeout_s:
        why = f"no worker took the job within DOCKGUARD_QUEUE_TIMEOUT_S ({queue_timeout_s} s)"
        return await give_up(services, job_id, why)
    attempt = await _take(services, job_id)  # from here on, a later attempt fences this one
    if attempt is None:
        ended = await _status_now(services, job_id)
        return "expired" if ended is None else ended.value
    keeper = asyncio.create_task(_keep_lease(services, job_id, attempt))
    try:
        return await _attempt(services, job, attempt)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await services.shielded(_end_lease(services, job_id, attempt))


def _age_s(job: Job) -> float:
    return (utcnow() - job.created_at).total_seconds()


async def _take(services: Services, job_id: str) -> str | None:
    """Claim the job for this attempt; returns its token. While another attempt's lease runs
    (a duplicate delivery of a job that is alive elsewhere), this delivery waits for it: None
    when that attempt ended the job, the token once its lease lapsed (its worker died). The
    wait is bounded by arq's timeout of this delivery."""
    waiting = False
    while True:
        attempt = await services.store.claim(job_id, lease_s=ATTEMPT_LEASE_S)
        job = await services.store.get(job_id)
        if job is None or job.status.terminal:
            if attempt is not None:
                await _end_lease(services, job_id, attempt)
            return None
        if attempt is not None:
            return attempt
        if not waiting:
            log.info("another attempt runs the job; this delivery waits for it to end or lapse")
            waiting = True
        await asyncio.sleep(_LEASE_POLL_S)


async def _keep_lease(services: Services, job_id: str, attempt: str) -> None:
    """Renew the attempt's lease until cancelled. A renewal that fails (Redis away) is tried
    again at the next; one refused means a later attempt took the job: fencing stops this one."""
    while True:
        await asyncio.sleep(_LEASE_RENEW_S)
        try:
            if not await services.store.renew(job_id, attempt, ATTEMPT_LEASE_S):
                return
        except (RedisError, OSError) as exc:
            log.warning("the job's lease could not be renewed", extra={"why": repr(exc)[:200]})


async def _end_lease(services: Services, job_id: str, attempt: str) -> None:
    """The attempt is over: a delivery of the job (arq's retry after a stop) may start at once.
    Best effort: a lease left behind lapses by itself."""
    try:
        async with asyncio.timeout(_READ_BACK_TIMEOUT_S):
            await services.store.renew(job_id, attempt, 0)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("the job's lease could not be ended", extra={"why": repr(exc)[:200]})


async def _attempt(services: Services, job: Job, attempt: str) -> str:
    """One attempt at the job, holding its lease: to its verdict, unless superseded."""
    job_id = job.id
    await services.store.set_deadline(job_id, running_deadline_s(services.settings))
    pipeline = _Pipeline(services, job_id, job.requested_limits, attempt)
    result: JobResult | None = None
    failure: JobFailure | None = None
    timeout_s = job_timeout_s(services.settings, pipeline.limits)
    budget = asyncio.timeout(timeout_s)  # arq's own timeout is only a backstop behind it
    try:
        async with budget:
            await services.sandbox.cleanup(job_id)  # leftovers of an interrupted attempt
            result = await pipeline.steps()
    except JobFailure as exc:
        failure = _failure_of(exc)
    except Superseded:
        pipeline.superseded = True
    except StaleUpdate:
        log.info("job ended elsewhere; stopping")
        ended = await _status_now(services, job_id)
        return "expired" if ended is None else ended.value
    except TimeoutError as exc:
        if budget.expired():
            failure = JobFailure(
                ErrorCode.JOB_TIMEOUT, f"the job did not finish within {timeout_s:g} s"
            )
        elif engine_unreachable(exc):  # an engine call's own timeout (aiohttp's)
            failure = _engine_unavailable(exc)
        else:  # not the job's timeout: a call that had none of its own
            log.exception("job failed on an internal error")
            failure = _internal()
    except Exception as exc:
        if engine_unreachable(exc):
            failure = _engine_unavailable(exc)
        else:
            log.exception("job failed on an internal error")
            failure = _internal()
    finally:
        # Shielded, and awaited by a stopping worker: it must not leave this job's objects
        # behind. Fenced: a later attempt's objects (same names) are not this one's to remove.
        with metrics.stage("cleanup"):
            await services.shielded(pipeline.cleanup())
    if pipeline.superseded:
        return await _superseded(services, job_id)
    # The verdict is written only once nothing of the job is left in the engine.
    status = await services.shielded(pipeline.conclude(result, failure))
    if pipeline.superseded:
        return await _superseded(services, job_id)
    await services.dockerfiles.release(job_id)
    log.info("job finished", extra={"status": status.value})
    return status.value


async def _superseded(services: Services, job_id: str) -> str:
    """This attempt lost the job to a later one (its lease ran out while it was paused or cut
    off): it stops without a verdict, and leaves the Dockerfile and objects to that attempt."""
    log.warning("a later attempt took the job over; this attempt stops")
    ended = await _status_now(services, job_id)
    return "superseded" if ended is None else ended.value


_LOST = "no worker finished the job by its deadline (a worker stopped or was lost)"


async def fail_lost(services: Services, job_id: str, why: str = _LOST) -> bool:
    """Fail a job no worker could finish (`worker_lost`): past its deadline (the sweeper's
    reaper), or interrupted too often (the worker). Returns whether this call ended it."""
    lost = ErrorInfo(code=ErrorCode.WORKER_LOST.value, message=why)

    def change(job: Job) -> None:
        if not job.status.terminal:
            job.status, job.error = JobStatus.FAILED, lost

    try:
        job = await services.store.update(job_id, change)
    except StaleUpdate:
        return False
    ended = job is not None and job.error == lost
    if ended:
        metrics.job_ended(JobStatus.FAILED.value, lost.code)
    return ended


async def give_up(services: Services, job_id: str, why: str) -> str:
    """A delivery past the tries: the job is failed `worker_lost`, once no other attempt runs
    it (one whose lease is alive is waited for, as any delivery waits: it may still end the
    job), its objects removed first and its Dockerfile released."""
    attempt = await _take(services, job_id)
    if attempt is None:  # the attempt that ran it ended it, or the record is gone
        ended = await _status_now(services, job_id)
        return "expired" if ended is None else ended.value
    try:
        await services.shielded(services.sandbox.cleanup(job_id))
        if await fail_lost(services, job_id, why):
            await services.dockerfiles.release(job_id)
        return "failed"
    finally:
        await services.shielded(_end_lease(services, job_id, attempt))


async def cancel(services: Services, job_id: str) -> Job:
    """End a job at a client's request (`cancelled`, `job_cancelled`) and let its Dockerfile go.
    Raises JobNotFound, or JobFinished when it had already ended. A worker running it stops at
    its next step (its status writes fail) or at once when arq aborts its task (the API asks
    arq to); its `finally` removes what it created."""
    cancelled = ErrorInfo(code=ErrorCode.JOB_CANCELLED.value, message="a client cancelled the job")

    def change(job: Job) -> None:
        if job.status.terminal:
            raise JobFinished(job.id, job.status.value)
        job.status, job.error = JobStatus.CANCELLED, cancelled

    job = await services.store.update(job_id, change)
    if job is None:
        raise JobNotFound(job_id)
    metrics.job_ended(JobStatus.CANCELLED.value, cancelled.code)
    await services.dockerfiles.release(job_id)
    log.info("job cancelled", extra={"job_id": job_id})
    return job


async def _status_now(services: Services, job_id: str) -> JobStatus | None:
    """The status another writer gave the job, for the logs and arq's record only: None when the
    job has expired or cannot be read back right now."""
    try:
        async with asyncio.timeout(_READ_BACK_TIMEOUT_S):
            job = await services.store.get(job_id)
    except (RedisError, TimeoutError):
        return None
    return None if job is None else job.status


class _Pipeline:
    def __init__(
        self,
        services: Services,
        job_id: str,
        requested: RequestedLimits | None = None,
        attempt: str | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.job_id = job_id
        self.limits = Limits.from_settings(services.settings, requested)
        self.attempt = attempt
        self.superseded = False  # a later attempt claimed the job: this one must stop

    async def cleanup(self) -> None:
        """Remove the job's objects, unless a later attempt holds the job (they are its own)."""
        if self.attempt is not None and not await self._holds():
            self.superseded = True
            return
        await self.services.sandbox.cleanup(self.job_id)

    async def _holds(self) -> bool:
        """Whether this attempt still holds the job; True when Redis cannot say (cleaning up a
        successor's objects fails that attempt, but leaking this one's is worse)."""
        assert self.attempt is not None
        try:
            async with asyncio.timeout(_READ_BACK_TIMEOUT_S):
                return await self.services.store.holds(self.job_id, self.attempt)
        except (RedisError, TimeoutError):
            return True

    @asynccontextmanager
    async def stage_log(self, stage: Literal["build", "run"]) -> AsyncIterator[LineSink | None]:
        """The stage's live log, all sent by the end of the block (before the next status)."""
        if self.services.logs is None:
            yield None
            return
        writer = self.services.logs.writer(self.job_id, stage)
        try:
            yield writer
        finally:
            await asyncio.shield(writer.aclose())

    async def update(self, change: Callable[[Job], None]) -> None:
        """Write to the job's record, fenced by this attempt; a Redis outage is waited out (a
        bounded number of tries, backing off), so the job survives a Redis restart."""
        delay_s = _REDIS_RETRY_FIRST_S
        for _ in range(_REDIS_TRIES - 1):
            try:
                await self._update_once(change)
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning(
                    "redis unavailable; the job's write is tried again",
                    extra={"why": type(exc).__name__, "retry_in_s": delay_s},
                )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _REDIS_RETRY_MAX_S)
        await self._update_once(change)

    async def _update_once(self, change: Callable[[Job], None]) -> None:
        job = await self.services.store.update(self.job_id, change, attempt=self.attempt)
        if job is None:
            raise StaleUpdate(f"job {self.job_id} expired while it ran")

    async def conclude(self, result: JobResult | None, failure: JobFailure | None) -> JobStatus:
        """Write the job's terminal status: succeeded with its result, or the failure."""
        if failure is not None:
            status = JobStatus.REJECTED if failure.rejected else JobStatus.FAILED
            error = ErrorInfo(code=failure.code.value, message=failure.message)
        else:
            status, error = JobStatus.SUCCEEDED, None

        def change(job: Job) -> None:
            job.status, job.error, job.result = status, error, result

        try:
            await self.update(change)
        except Superseded:
            self.superseded = True
            return status
        except StaleUpdate:
            log.info("job ended elsewhere before it could be marked %s", status.value)
            return await _status_now(self.services, self.job_id) or status
        except (ValueError, TypeError) as exc:  # the result cannot be serialised as stored JSON
            log.warning("result could not be stored", extra={"why": str(exc)[:300]})
            invalid = JobFailure(ErrorCode.RESULT_INVALID, "/data/perf.json cannot be stored")
            return await self.conclude(None, invalid)
        metrics.job_ended(status.value, None if error is None else error.code)
        return status

    async def steps(self) -> JobResult:
        dockerfile = await self.services.dockerfiles.get(self.job_id)
        if dockerfile is None:
            raise JobFailure(ErrorCode.INTERNAL_ERROR, "the job's Dockerfile is no longer stored")
        await self.scan(dockerfile)
        prepared = await self.build(dockerfile)
        return await self.run(prepared)

    async def scan(self, dockerfile: str) -> None:
        await self.update(lambda job: _advance(job, JobStatus.SCANNING))
        with metrics.stage("scan"):
            report = await self.services.scanner.scan_dockerfile(dockerfile, self.job_id)
        if report.cached:
            metrics.SCAN_CACHE_HITS.labels("dockerfile").inc()

        def record(job: Job) -> None:
            job.scan.dockerfile = report

        await self.update(record)
        if not report.passed:
            raise JobFailure(
                ErrorCode.DOCKERFILE_REJECTED, _rejection("Dockerfile", report), rejected=True
            )

    async def scan_image(self, image_id: str) -> None:
        """The built image's vulnerabilities, before anything of it runs."""
        if not self.settings.scan_image:
            return
        with metrics.stage("image_scan"):
            report = await self.services.scanner.scan_image(image_id, self.job_id)
        if report.cached:
            metrics.SCAN_CACHE_HITS.labels("image").inc()

        def record(job: Job) -> None:
            job.scan.image = report

        await self.update(record)
        if not report.passed:
            raise JobFailure(ErrorCode.IMAGE_REJECTED, _rejection("image", report), rejected=True)

    async def build(self, dockerfile: str) -> Prepared:
        await self.update(lambda job: _advance(job, JobStatus.BUILDING))
        await self.check_bases(dockerfile)
        limits = self.limits.build
        try:
            async with self.stage_log("build") as lines:
                with metrics.stage("build"):
                    outcome = await self.services.sandbox.build(
                        self.job_id, dockerfile, limits, lines
                    )
        except BuildFailure as failure:
            failed = BuildInfo(log_tail=failure.log_tail, limits=limits)
            await self.update(lambda job: setattr(job, "build", failed))
            raise

        def record(job: Job) -> None:
            job.build = BuildInfo(
                image_id=outcome.image_id,
                duration_s=outcome.duration_s,
                log_tail=outcome.log_tail,
                limits=limits,
            )

        await self.update(record)
        await self.scan_image(outcome.image_id)
        try:
            with metrics.stage("prepare"):
                return await self.services.sandbox.prepare(self.job_id, outcome.image_id)
        except BuildFailure as failure:
            tail = outcome.log_tail + failure.log_tail
            await self.update(lambda job: setattr(job.build, "log_tail", tail))
            raise

    async def check_bases(self, dockerfile: str) -> None:
        """The images the build starts from, read from the Dockerfile, checked in the engine."""
        try:
            parsed = parse_dockerfile(dockerfile.encode("utf-8"), max_bytes=1 << 30)
            bases = base_images.resolve(parsed)
        except SubmissionError as exc:  # accepted under an older policy: refused now
            raise JobFailure(exc.code, exc.message, rejected=True) from exc
        await self.services.sandbox.check_bases(bases, pull_timeout_s=self.limits.build.timeout_s)

    async def run(self, prepared: Prepared) -> JobResult:
        limits = self.limits.run.model_copy(update={"user": prepared.user})

        def start(job: Job) -> None:
            _advance(job, JobStatus.RUNNING)
            job.run = RunInfo(limits=limits)

        await self.update(start)
        sandbox = self.services.sandbox
        async with self.stage_log("run") as lines:
            with metrics.stage("run"):
                outcome = await sandbox.run(self.job_id, prepared, limits, lines)
        if outcome.timed_out or outcome.oom_killed:
            metrics.SANDBOX_KILLS.labels("timeout" if outcome.timed_out else "oom").inc()

        def record(job: Job) -> None:
            job.run = RunInfo(
                exit_code=outcome.exit_code,
                duration_s=outcome.duration_s,
                oom_killed=outcome.oom_killed,
                timed_out=outcome.timed_out,
                log_tail=outcome.log_tail,
                limits=limits,
            )

        await self.update(record)
        if failure := outcome_failure(outcome, limits.timeout_s, limits.memory_mb):
            raise failure
        with metrics.stage("collect"):
            raw = await sandbox.fetch_result(outcome.container_id, self.settings.result_max_bytes)
            return parse_result(raw)


def _advance(job: Job, status: JobStatus) -> None:
    """Move to `status` unless a retried attempt's job has been there or further already."""
    if status.rank > job.status.rank:
        job.status = status


def _rejection(target: str, report: ScanReport) -> str:
    failing = [f for f in report.findings if f.severity in report.policy.fail_on and not f.ignored]
    shown = ", ".join(_describe(f) for f in failing[:5])
    more = f" and {len(failing) - 5} more" if len(failing) > 5 else ""
    return f"the {target} scan failed the policy: {shown}{more}"


def _describe(finding: Finding) -> str:
    where = f", line {finding.line}" if finding.line else ""
    if finding.package:
        fix = f"fixed in {finding.fixed_version}" if finding.fixed_version else "no fix yet"
        where = f", {finding.package} {finding.installed_version}, {fix}"
    return f"{finding.id} ({finding.severity.value}{where}): {finding.title}"
