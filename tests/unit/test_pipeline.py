"""The pipeline's branches, against the in-memory fakes of tests/unit/fakes.py: which status and
error code each outcome of each step leads to, what is recorded on the job, and that the job's
objects are cleaned up and its Dockerfile released whatever happens. (The same paths run for
real, through HTTP, in tests/e2e.)"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from dockguard.errors import ErrorCode, JobFailure, JobFinished, JobNotFound
from dockguard.jobs.pipeline import (
    STEP_SLACK_S,
    cancel,
    fail_lost,
    job_timeout_s,
    queued_deadline_s,
    run_job,
    running_deadline_s,
    step_timeouts_s,
)
from dockguard.jobs.sweeper import reap
from dockguard.lines import LineSink
from dockguard.models import Job, JobStatus, Limits, RunLimits
from dockguard.sandbox import BuildFailure, Prepared, RunOutcome
from dockguard.settings import Settings, Severity
from tests.unit.fakes import Fakes, fakes, report

DOCKERFILE = 'FROM busybox:latest\nCMD ["true"]\n'


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


async def submitted(f: Fakes, dockerfile: str = DOCKERFILE) -> str:
    job = Job(id=uuid.uuid4().hex, dockerfile_sha256="0" * 64, dockerfile_bytes=len(dockerfile))
    await f.store.create(job, dockerfile, deadline_s=time.time() + 3600)
    return job.id


async def finished(f: Fakes, job_id: str) -> Job:
    """Run the job as a worker would; returns the stored job, which must have ended cleanly."""
    status = await run_job(f.services, job_id)
    job = await f.store.get(job_id)
    assert job is not None
    assert job.status.value == status
    assert job.status.terminal and job.finished_at is not None
    assert f.sandbox.calls[0] == "cleanup" and f.sandbox.calls[-1] == "cleanup"
    assert job_id in f.dockerfiles.released and job_id not in f.dockerfiles.texts
    assert job_id not in f.store.deadlines
    return job


def assert_ended(job: Job, status: JobStatus, code: ErrorCode) -> None:
    assert job.status == status, job
    assert job.error is not None and job.error.code == code.value, job.error


async def test_a_job_that_passes_every_step_succeeds_with_its_result_and_its_limits() -> None:
    f = fakes()
    job = await finished(f, await submitted(f))
    assert job.status == JobStatus.SUCCEEDED and job.error is None
    assert job.result is not None and job.result.perf == 0.5
    assert f.scanner.scanned == ["dockerfile", "image sha256:" + "b" * 64]
    steps = [c for c in f.sandbox.calls if c != "cleanup"]
    assert steps == ["check_bases", "build", "prepare", "run", "fetch_result"]
    limits = Limits.from_settings(f.services.settings)
    assert job.build is not None and job.build.limits == limits.build == f.sandbox.build_limits[0]
    assert job.run is not None and job.run.limits is not None
    assert job.run.limits == limits.run.model_copy(update={"user": "1000:1000"})
    assert f.sandbox.run_limits == [job.run.limits]  # what ran is what is recorded
    assert job.run.exit_code == 0 and job.run.log_tail == ["ran"]


async def test_the_job_carries_its_timeline() -> None:
    f = fakes()
    job = await finished(f, await submitted(f))
    statuses = [event.status.value for event in job.events]
    assert statuses == ["queued", "scanning", "building", "running", "succeeded"]
    assert job.events[0].at == job.created_at and job.events[-1].at == job.finished_at
    *past, current = job.events
    assert all(e.duration_s is not None and e.duration_s >= 0 for e in past)
    assert current.duration_s is None
    for earlier, later in zip(past, job.events[1:], strict=True):
        assert earlier.duration_s == round((later.at - earlier.at).total_seconds(), 3)


async def test_each_stage_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dockguard.metrics")
    f = fakes()
    f.sandbox.fail["build"] = BuildFailure(ErrorCode.BUILD_FAILED, "a RUN exited", ["step 1"])
    job_id = await submitted(f)
    await finished(f, job_id)
    lines = [
        (r.stage, r.outcome, r.code)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "stage"
    ]
    assert lines == [
        ("scan", "ok", None),
        ("build", "failed", "build_failed"),
        ("cleanup", "ok", None),
    ]
    assert all(r.duration_s >= 0 for r in caplog.records if r.getMessage() == "stage")  # type: ignore[attr-defined]


async def test_limits_come_from_the_settings() -> None:
    f = fakes(settings(build_nofile=99, run_nofile=77, run_data_mb=5, build_network="none"))
    job = await finished(f, await submitted(f))
    assert job.build is not None and job.build.limits is not None
    assert (job.build.limits.nofile, job.build.limits.network) == (99, "none")
    assert job.run is not None and job.run.limits is not None
    assert (job.run.limits.nofile, job.run.limits.data_mb) == (77, 5)


async def test_a_failing_dockerfile_scan_rejects_the_job_before_any_build() -> None:
    f = fakes()
    f.scanner.dockerfile_report = report(Severity.LOW, Severity.HIGH)
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.REJECTED, ErrorCode.DOCKERFILE_REJECTED)
    assert "DS-0002 (HIGH" in job.error.message if job.error else False
    assert job.scan.dockerfile is not None and not job.scan.dockerfile.passed
    assert "build" not in f.sandbox.calls


async def test_a_failing_image_scan_rejects_the_job_before_anything_runs() -> None:
    f = fakes()
    f.scanner.image_report = report(Severity.CRITICAL)
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.REJECTED, ErrorCode.IMAGE_REJECTED)
    assert job.build is not None and job.build.image_id is not None
    assert "prepare" not in f.sandbox.calls and "run" not in f.sandbox.calls


async def test_image_scans_can_be_turned_off() -> None:
    f = fakes(settings(scan_image=False))
    f.scanner.image_report = report(Severity.CRITICAL)
    job = await finished(f, await submitted(f))
    assert job.status == JobStatus.SUCCEEDED and job.scan.image is None
    assert f.scanner.scanned == ["dockerfile"]


async def test_a_scanner_failure_fails_the_job() -> None:
    f = fakes()
    f.scanner.failure = JobFailure(ErrorCode.SCANNER_FAILED, "the scanner exited with status 2")
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, ErrorCode.SCANNER_FAILED)


async def test_a_refused_base_image_rejects_the_job() -> None:
    f = fakes()
    f.sandbox.fail["check_bases"] = JobFailure(
        ErrorCode.BASE_IMAGE_FORBIDDEN, "has ONBUILD triggers", rejected=True
    )
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.REJECTED, ErrorCode.BASE_IMAGE_FORBIDDEN)
    assert "build" not in f.sandbox.calls


async def test_a_dockerfile_the_current_policy_refuses_is_rejected_at_the_worker() -> None:
    f = fakes()
    job = await finished(f, await submitted(f, "FROM ${X:-busybox}\n"))
    assert_ended(job, JobStatus.REJECTED, ErrorCode.DOCKERFILE_FORBIDDEN)
    assert "check_bases" not in f.sandbox.calls


async def test_a_failed_build_records_its_log_tail_and_limits() -> None:
    f = fakes()
    f.sandbox.fail["build"] = BuildFailure(ErrorCode.BUILD_FAILED, "a RUN exited", ["step 1"])
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, ErrorCode.BUILD_FAILED)
    assert job.build is not None and job.build.log_tail == ["step 1"]
    assert job.build.limits == Limits.from_settings(f.services.settings).build
    assert f.scanner.scanned == ["dockerfile"]


async def test_a_refusal_while_preparing_keeps_the_build_log_too() -> None:
    f = fakes()
    f.sandbox.fail["prepare"] = BuildFailure(ErrorCode.USER_INVALID, "no such user", ["why"])
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, ErrorCode.USER_INVALID)
    assert job.build is not None and job.build.log_tail == ["built", "why"]


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        ({"timed_out": True, "exit_code": 137}, ErrorCode.RUN_TIMEOUT),
        ({"oom_killed": True, "exit_code": 137}, ErrorCode.RUN_OOM),
        ({"exit_code": 3}, ErrorCode.RUN_NONZERO_EXIT),
    ],
)
async def test_a_run_that_does_not_exit_cleanly_fails_without_reading_a_result(
    outcome: dict[str, object], code: ErrorCode
) -> None:
    f = fakes()
    base = f.sandbox.run_outcome
    f.sandbox.run_outcome = RunOutcome(
        container_id=base.container_id,
        exit_code=int(str(outcome.get("exit_code", 0))),
        oom_killed=bool(outcome.get("oom_killed", False)),
        timed_out=bool(outcome.get("timed_out", False)),
        duration_s=1.0,
        log_tail=["last words"],
    )
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, code)
    assert job.run is not None and job.run.log_tail == ["last words"]
    assert "fetch_result" not in f.sandbox.calls


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"not json", ErrorCode.RESULT_INVALID), (b"[1, 2]", ErrorCode.RESULT_INVALID)],
)
async def test_a_result_that_is_not_a_json_object_fails_the_job(
    raw: bytes, code: ErrorCode
) -> None:
    f = fakes()
    f.sandbox.result = raw
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, code)
    assert job.result is None


async def test_a_missing_result_fails_the_job() -> None:
    f = fakes()
    f.sandbox.fail["fetch_result"] = JobFailure(ErrorCode.RESULT_MISSING, "no /data/perf.json")
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, ErrorCode.RESULT_MISSING)


async def test_an_unexpected_error_is_an_internal_error_that_says_nothing_of_itself() -> None:
    f = fakes()
    f.sandbox.fail["run"] = RuntimeError("secret engine detail /var/lib/docker")
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, ErrorCode.INTERNAL_ERROR)
    assert job.error is not None and "secret" not in job.error.message


async def test_a_job_that_outlives_its_timeout_fails_and_is_cleaned_up() -> None:
    f = fakes(settings(job_timeout_s=0.2))
    f.sandbox.hang = "run"
    started = time.monotonic()
    job = await finished(f, await submitted(f))
    assert time.monotonic() - started < 5
    assert_ended(job, JobStatus.FAILED, ErrorCode.JOB_TIMEOUT)
    assert job.error is not None and "0.2 s" in job.error.message


async def test_a_job_whose_dockerfile_is_gone_fails() -> None:
    f = fakes()
    job_id = await submitted(f)
    await f.dockerfiles.delete(job_id)
    job = await finished(f, job_id)
    assert_ended(job, JobStatus.FAILED, ErrorCode.INTERNAL_ERROR)
    assert f.scanner.scanned == []


async def test_a_retried_job_that_already_ended_is_left_alone() -> None:
    f = fakes()
    job_id = await submitted(f)
    assert await run_job(f.services, job_id) == "succeeded"
    before = await f.store.get(job_id)
    f.sandbox.calls.clear()
    assert await run_job(f.services, job_id) == "succeeded"
    assert f.sandbox.calls == [] and await f.store.get(job_id) == before


async def test_a_job_that_expired_before_it_ran_is_skipped() -> None:
    f = fakes()
    assert await run_job(f.services, uuid.uuid4().hex) == "expired"
    assert f.sandbox.calls == []


@pytest.mark.parametrize("status", [JobStatus.CANCELLED, JobStatus.FAILED])
async def test_a_job_ended_elsewhere_while_it_ran_keeps_that_ending(status: JobStatus) -> None:
    f = fakes()
    job_id = await submitted(f)
    original = f.sandbox.run

    async def run_while_ended_elsewhere(
        job_id: str, prepared: Prepared, limits: RunLimits, lines: LineSink | None = None
    ) -> RunOutcome:
        await f.store.update(job_id, lambda job: setattr(job, "status", status))
        return await original(job_id, prepared, limits, lines)

    f.sandbox.run = run_while_ended_elsewhere  # type: ignore[method-assign]
    assert await run_job(f.services, job_id) == status.value
    job = await f.store.get(job_id)
    assert job is not None and job.status == status and job.error is None
    assert f.sandbox.calls[-1] == "cleanup"


async def test_the_reaper_fails_jobs_past_their_deadline_once() -> None:
    f = fakes()
    late, on_time = await submitted(f), await submitted(f)
    f.store.deadlines[late] = time.time() - 1
    assert await reap(f.services) == 1
    job = await f.store.get(late)
    assert job is not None
    assert_ended(job, JobStatus.FAILED, ErrorCode.WORKER_LOST)
    assert late in f.dockerfiles.released and late not in f.store.deadlines
    assert "cleanup" in f.sandbox.calls
    other = await f.store.get(on_time)
    assert other is not None and other.status == JobStatus.QUEUED
    assert await reap(f.services) == 0


async def test_a_lost_job_that_ended_meanwhile_is_not_failed() -> None:
    f = fakes()
    job_id = await submitted(f)
    await run_job(f.services, job_id)
    assert not await fail_lost(f.services, job_id)
    job = await f.store.get(job_id)
    assert job is not None and job.status == JobStatus.SUCCEEDED


def test_the_job_timeout_is_every_step_timeout_plus_slack_unless_set() -> None:
    s = settings(scanner_timeout_s=10, build_timeout_s=20, run_timeout_s=30)
    steps = step_timeouts_s(Limits.from_settings(s))
    assert sorted(steps.values()) == [10, 10, 10, 20, 20, 30]
    assert job_timeout_s(s) == 100 + STEP_SLACK_S
    assert running_deadline_s(s) > job_timeout_s(s)
    assert queued_deadline_s(s) == s.queue_timeout_s + running_deadline_s(s)
    assert job_timeout_s(settings(job_timeout_s=42)) == 42


async def test_cancel_ends_a_queued_job_and_a_worker_then_leaves_it_alone() -> None:
    f = fakes()
    job_id = await submitted(f)
    job = await cancel(f.services, job_id)
    assert_ended(job, JobStatus.CANCELLED, ErrorCode.JOB_CANCELLED)
    assert job_id in f.dockerfiles.released and job_id not in f.store.deadlines
    assert await run_job(f.services, job_id) == "cancelled"
    assert f.sandbox.calls == [] and f.scanner.scanned == []


async def test_cancel_of_an_ended_or_unknown_job_is_refused() -> None:
    f = fakes()
    job_id = await submitted(f)
    await run_job(f.services, job_id)
    with pytest.raises(JobFinished):
        await cancel(f.services, job_id)
    ended = await f.store.get(job_id)
    assert ended is not None and ended.status == JobStatus.SUCCEEDED
    with pytest.raises(JobNotFound):
        await cancel(f.services, uuid.uuid4().hex)


async def test_a_running_job_whose_task_is_cancelled_is_cleaned_up_and_stays_cancelled() -> None:
    f = fakes()
    f.sandbox.hang = "run"
    job_id = await submitted(f)
    task = asyncio.create_task(run_job(f.services, job_id))
    await f.sandbox.hanging.wait()
    await cancel(f.services, job_id)  # what the API does, then arq's abort cancels the task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert f.sandbox.calls[-1] == "cleanup"
    job = await f.store.get(job_id)
    assert job is not None
    assert_ended(job, JobStatus.CANCELLED, ErrorCode.JOB_CANCELLED)
