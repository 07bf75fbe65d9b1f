"""A worker after a Redis outage (its job slots recounted) and a delivery past the tries (it
fails the job only once no live attempt runs it), against the fakes of tests/unit/fakes.py.
(renew_leases against a real Redis: tests/e2e/test_reliability.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import pytest

from dockguard.errors import ErrorCode
from dockguard.jobs import pipeline
from dockguard.jobs.pipeline import ATTEMPT_LEASE_S, give_up, run_job
from dockguard.jobs.worker import _before_polling_again, create_worker
from dockguard.models import Job, JobStatus, utcnow
from dockguard.settings import Settings
from tests.unit.fakes import fakes
from tests.unit.test_pipeline import assert_ended, submitted


async def test_slots_a_lost_connection_leaked_are_given_back_before_polling_again() -> None:
    worker = create_worker(fakes().services, handle_signals=False)
    slots = worker.max_jobs
    running = asyncio.create_task(asyncio.sleep(30))
    worker.tasks["running"] = running
    worker.tasks["done"] = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    # arq took every slot, then the connection broke before it gave the leaked ones back.
    for _ in range(slots):
        await worker.sem.acquire()
    worker.job_counter = slots
    with contextlib.suppress(AttributeError):  # the fakes have no Redis to renew leases in
        await _before_polling_again(worker)
    assert worker.job_counter == 1  # the one still running
    for _ in range(slots):  # every other slot can be taken again, and no more (arq's + 1)
        await asyncio.wait_for(worker.sem.acquire(), 0.1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(worker.sem.acquire(), 0.05)
    running.cancel()


async def test_a_delivery_past_the_tries_waits_for_a_live_attempt_and_fails_nothing() -> None:
    f = fakes()
    job_id = await submitted(f)
    live = await f.store.claim(job_id, lease_s=ATTEMPT_LEASE_S)  # another worker runs it
    assert live is not None
    giving_up = asyncio.create_task(give_up(f.services, job_id, "interrupted 3 times"))
    await asyncio.sleep(0.05)
    assert not giving_up.done() and f.sandbox.calls == []
    job = await f.store.get(job_id)
    assert job is not None and job.status == JobStatus.QUEUED

    def succeed(job: object) -> None:
        job.status = JobStatus.SUCCEEDED  # type: ignore[attr-defined]

    await f.store.update(job_id, succeed, attempt=live)  # the live attempt ends it
    await f.store.renew(job_id, live, 0)
    assert await asyncio.wait_for(giving_up, 5) == "succeeded"
    assert f.sandbox.calls == []  # nothing of the live attempt's was removed


async def test_a_delivery_past_the_tries_with_no_live_attempt_fails_the_job_worker_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "_LEASE_POLL_S", 0.01)
    f = fakes()
    job_id = await submitted(f)
    assert await give_up(f.services, job_id, "interrupted 3 times") == "failed"
    job = await f.store.get(job_id)
    assert job is not None
    assert_ended(job, JobStatus.FAILED, ErrorCode.WORKER_LOST)
    assert f.sandbox.calls == ["cleanup"]
    assert job_id in f.dockerfiles.released
    assert job_id not in f.store.leases  # its own lease ended


async def test_a_job_no_worker_took_within_the_queue_timeout_is_failed_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """arq keeps a job's entry past the queue timeout (for its retries): that no worker took it
    in time is the pipeline's check."""
    monkeypatch.setattr(pipeline, "_LEASE_POLL_S", 0.01)
    f = fakes(Settings(_env_file=None, queue_timeout_s=60))
    late = Job(
        id=uuid.uuid4().hex,
        dockerfile_sha256="0" * 64,
        dockerfile_bytes=10,
        created_at=utcnow() - timedelta(seconds=61),
    )
    await f.store.create(late, "FROM busybox\n", deadline_s=3600)
    assert await run_job(f.services, late.id) == "failed"
    job = await f.store.get(late.id)
    assert job is not None
    assert_ended(job, JobStatus.FAILED, ErrorCode.WORKER_LOST)
    assert "DOCKGUARD_QUEUE_TIMEOUT_S" in job.error.message  # type: ignore[union-attr]
    assert f.sandbox.calls == ["cleanup"] and f.scanner.scanned == []  # nothing of it ran
