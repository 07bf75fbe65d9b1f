"""What the pipeline makes of a lost engine connection (`engine_unavailable`), and of a second
delivery of a job whose attempt is alive (it waits, and starts nothing), against the fakes of
tests/unit/fakes.py. (For real: tests/e2e/test_faults.py.)"""

from __future__ import annotations

import asyncio

import aiodocker
import aiohttp
import pytest

from dockguard.errors import ErrorCode, JobFailure
from dockguard.jobs.pipeline import ATTEMPT_LEASE_S, engine_unreachable, run_job
from dockguard.models import Job, JobStatus
from tests.unit.fakes import fakes
from tests.unit.test_pipeline import assert_ended, finished, submitted


def _raised_while_handling(cause: BaseException, exc: BaseException) -> BaseException:
    """`exc` as Python chains it when raised in an `except` block of `cause` (no `from`), as
    aiodocker raises its status 900 while handling aiohttp's error."""
    exc.__context__ = cause
    return exc


def _cannot_connect() -> aiodocker.DockerError:
    return aiodocker.DockerError(900, "Cannot connect to Docker Engine via unix:///x [refused]")


def _failed_from_lost_connection() -> JobFailure:
    """A step's failure raised `from` a failed connection, as the sandbox raises its own."""
    failure = JobFailure(ErrorCode.RUN_START_FAILED, "the run's container could not be created")
    failure.__cause__ = _cannot_connect()
    return failure


@pytest.mark.parametrize(
    "exc",
    [
        _cannot_connect(),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(32, "Broken pipe"),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        _raised_while_handling(aiohttp.ClientOSError(32, "Broken pipe"), RuntimeError("then")),
        _failed_from_lost_connection(),
    ],
    ids=["status-900", "disconnected", "broken-pipe", "payload", "chained", "failure-from"],
)
def test_engine_connection_failures_are_recognised(exc: BaseException) -> None:
    assert engine_unreachable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        aiodocker.DockerError(500, "OCI runtime create failed"),
        aiodocker.DockerError(404, "no such image"),
        TimeoutError(),
        RuntimeError("a bug"),
        JobFailure(ErrorCode.BUILD_FAILED, "a RUN exited"),
    ],
    ids=["engine-500", "engine-404", "timeout", "bug", "failure"],
)
def test_the_engine_answering_is_not_a_lost_connection(exc: BaseException) -> None:
    assert not engine_unreachable(exc)


@pytest.mark.parametrize("step", ["check_bases", "build", "prepare", "run", "fetch_result"])
async def test_a_lost_engine_fails_the_job_engine_unavailable(step: str) -> None:
    f = fakes()
    f.sandbox.fail[step] = _raised_while_handling(
        aiohttp.ServerDisconnectedError(), _cannot_connect()
    )
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, ErrorCode.ENGINE_UNAVAILABLE)
    assert job.error is not None and "Cannot connect" not in job.error.message


async def test_a_step_failure_caused_by_a_lost_connection_is_engine_unavailable() -> None:
    f = fakes()
    f.sandbox.fail["run"] = _failed_from_lost_connection()
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.FAILED, ErrorCode.ENGINE_UNAVAILABLE)


async def test_a_verdict_stands_whatever_the_engine_did_after_it() -> None:
    f = fakes()
    rejected = JobFailure(ErrorCode.BASE_IMAGE_FORBIDDEN, "ONBUILD", rejected=True)
    rejected.__context__ = _cannot_connect()
    f.sandbox.fail["check_bases"] = rejected
    job = await finished(f, await submitted(f))
    assert_ended(job, JobStatus.REJECTED, ErrorCode.BASE_IMAGE_FORBIDDEN)


async def test_a_second_delivery_waits_for_the_live_attempt_and_starts_nothing() -> None:
    f = fakes()
    job_id = await submitted(f)
    f.sandbox.hang = "run"
    first = asyncio.create_task(run_job(f.services, job_id))
    await asyncio.wait_for(f.sandbox.hanging.wait(), 5)
    calls = list(f.sandbox.calls)
    second = asyncio.create_task(run_job(f.services, job_id))
    await asyncio.sleep(0.2)
    assert not second.done()
    assert f.sandbox.calls == calls  # no cleanup of the first attempt's objects, no build
    first.cancel()  # the first attempt stops: its lease ends with it, and the second goes on
    with pytest.raises(asyncio.CancelledError):
        await first
    f.sandbox.hang = None
    assert await asyncio.wait_for(second, 5) == "succeeded"
    assert f.sandbox.calls.count("build") == 2  # the first attempt's, then the second's


async def test_a_second_delivery_of_a_job_that_ends_meanwhile_returns_its_status() -> None:
    f = fakes()
    job_id = await submitted(f)
    assert await f.store.claim(job_id, lease_s=ATTEMPT_LEASE_S)  # a live attempt elsewhere
    second = asyncio.create_task(run_job(f.services, job_id))
    await asyncio.sleep(0.2)

    def succeed(job: Job) -> None:
        job.status = JobStatus.SUCCEEDED

    await f.store.update(job_id, succeed)
    assert await asyncio.wait_for(second, 5) == "succeeded"
    assert f.sandbox.calls == []
