"""Per-job run limits: what a submission may ask for (checked against the settings, before
anything is stored), the form fields that carry them, and the pipeline applying them (against
the fakes of tests/unit/fakes.py)."""

from __future__ import annotations

import time
import uuid

import pytest

from dockguard.api import multipart
from dockguard.api.submissions import check_limits, parse_limits
from dockguard.errors import ErrorCode, LimitsExceedPolicy, SubmissionError
from dockguard.jobs.pipeline import job_timeout_s, run_job
from dockguard.models import Job, JobStatus, Limits, RequestedLimits
from dockguard.settings import Settings
from tests.unit.fakes import Fakes, fakes
from tests.unit.test_submit_parts import DOCKERFILE, form, part, request


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_limits_parse_from_numbers_and_form_text() -> None:
    parsed = parse_limits({"run_timeout_s": "2.5", "run_memory_mb": "64", "run_cpus": 1})
    assert parsed == RequestedLimits(run_timeout_s=2.5, run_memory_mb=64, run_cpus=1.0)
    assert parse_limits({}) is None
    assert parse_limits({"run_cpus": None}) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"run_timeout_s": 0},
        {"run_timeout_s": "-1"},
        {"run_memory_mb": "1.5"},
        {"run_memory_mb": "lots"},
        {"run_cpus": "nan"},
        {"run_cpus": "inf"},
        {"run_pids": 10},
    ],
)
def test_bad_limits_are_invalid(fields: dict[str, object]) -> None:
    with pytest.raises(SubmissionError) as caught:
        parse_limits(fields)
    assert (caught.value.code, caught.value.http_status) == (ErrorCode.REQUEST_INVALID, 422)


def test_limits_up_to_the_settings_pass() -> None:
    s = settings(run_timeout_s=60, run_memory_mb=2048, run_cpus=2)
    check_limits(None, s)
    check_limits(RequestedLimits(run_timeout_s=60, run_memory_mb=2048, run_cpus=2), s)


@pytest.mark.parametrize(
    ("requested", "detail"),
    [
        (
            RequestedLimits(run_memory_mb=4096),
            "run_memory_mb 4096 is above this service's maximum, 2048",
        ),
        (
            RequestedLimits(run_timeout_s=60.5),
            "run_timeout_s 60.5 is above this service's maximum, 60",
        ),
        (RequestedLimits(run_cpus=2.5), "run_cpus 2.5 is above this service's maximum, 2"),
    ],
)
def test_limits_above_the_settings_exceed_the_policy(
    requested: RequestedLimits, detail: str
) -> None:
    s = settings(run_timeout_s=60, run_memory_mb=2048, run_cpus=2)
    with pytest.raises(LimitsExceedPolicy) as caught:
        check_limits(requested, s)
    assert caught.value.code == ErrorCode.LIMITS_EXCEED_POLICY
    assert (caught.value.http_status, caught.value.message) == (400, detail)


async def test_the_form_carries_the_limit_fields() -> None:
    body = form(
        part("run_timeout_s", b"5", filename=None),
        part("dockerfile", DOCKERFILE),
        part("run_cpus", b" 0.5 ", filename=None),
    )
    read = await multipart.read_form(request([body]), 1024)
    assert read == multipart.Form(DOCKERFILE, {"run_timeout_s": "5", "run_cpus": "0.5"})


@pytest.mark.parametrize(
    "parts",
    [
        [part("run_cpus", b"1", filename=None), part("run_cpus", b"1", filename=None)],
        [part("run_cpus", b"1" * 33, filename=None)],
        [part("run_pids", b"1", filename=None)],
    ],
)
async def test_bad_limit_fields_are_refused(parts: list[bytes]) -> None:
    body = form(part("dockerfile", DOCKERFILE), *parts)
    with pytest.raises(SubmissionError) as caught:
        await multipart.read_form(request([body]), 1024)
    assert (caught.value.code, caught.value.http_status) == (ErrorCode.REQUEST_INVALID, 400)


def test_requested_limits_override_only_the_run_limits_they_name() -> None:
    s = settings()
    base = Limits.from_settings(s)
    limits = Limits.from_settings(s, RequestedLimits(run_timeout_s=5, run_cpus=0.5))
    assert limits.run == base.run.model_copy(update={"timeout_s": 5.0, "cpus": 0.5})
    assert (limits.build, limits.scanner) == (base.build, base.scanner)
    assert job_timeout_s(s, limits) < job_timeout_s(s, base)


async def submitted(f: Fakes, requested: RequestedLimits | None) -> str:
    job = Job(
        id=uuid.uuid4().hex,
        dockerfile_sha256="0" * 64,
        dockerfile_bytes=len(DOCKERFILE),
        requested_limits=requested,
    )
    await f.store.create(job, DOCKERFILE.decode(), deadline_s=time.time() + 3600)
    return job.id


async def test_the_pipeline_runs_the_job_under_its_requested_limits() -> None:
    f = fakes()
    requested = RequestedLimits(run_timeout_s=5, run_memory_mb=64, run_cpus=0.5)
    job_id = await submitted(f, requested)
    assert await run_job(f.services, job_id) == JobStatus.SUCCEEDED.value
    job = await f.store.get(job_id)
    assert job is not None and job.run is not None and job.run.limits is not None
    ran = f.sandbox.run_limits
    assert ran == [job.run.limits]
    assert (ran[0].timeout_s, ran[0].memory_mb, ran[0].cpus) == (5.0, 64, 0.5)
    assert ran[0].pids == f.services.settings.run_pids
    assert job.requested_limits == requested


async def test_without_requested_limits_the_pipeline_runs_under_the_settings() -> None:
    f = fakes()
    job_id = await submitted(f, None)
    assert await run_job(f.services, job_id) == JobStatus.SUCCEEDED.value
    expected = Limits.from_settings(f.services.settings).run
    assert f.sandbox.run_limits[0].model_copy(update={"user": None}) == expected


def test_limits_asked_for_are_never_above_the_settings_when_applied() -> None:
    """Checked at submission, and again when the job runs: the operator may have lowered a
    setting while the job was queued."""
    lowered = Settings(_env_file=None, run_timeout_s=10, run_memory_mb=256, run_cpus=0.5)
    asked = RequestedLimits(run_timeout_s=30, run_memory_mb=128, run_cpus=1.0)
    run = Limits.from_settings(lowered, asked).run
    assert (run.timeout_s, run.memory_mb, run.cpus) == (10, 128, 0.5)
