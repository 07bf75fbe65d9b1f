"""`dockguard.client` against the real service (HTTP on loopback, the real Redis and engine):
submit and wait, read, list, follow and resume the log, cancel, and every failure as one
`DockguardError` with the server's code, for the sync `Client` and the `AsyncClient` alike.

The service runs in this event loop, so the sync client is driven from a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import aiodocker
import pytest
import pytest_asyncio

from dockguard.client import AsyncClient, Client, DockguardError, LogEvent, WaitTimeout
from dockguard.models import Job, JobStatus
from tests.e2e.conftest import Dockguard, Instances, leftovers

FAST: dict[str, Any] = {"build_timeout_s": 60, "build_memory_mb": 128, "scan_image": False}
HELLO = (
    "FROM busybox:latest\n"
    "RUN echo hello-from-build\n"
    "USER 1000\n"
    'CMD ["sh", "-c", "echo hello-from-run; echo \'{\\"perf\\": 2.5}\' > /data/perf.json"]\n'
)
SLEEPY = 'FROM busybox:latest\nUSER 1000\nCMD ["sleep", "60"]\n'
FORBIDDEN = "FROM busybox:latest\nONBUILD RUN true\n"
STAGES = [
    JobStatus.QUEUED,
    JobStatus.SCANNING,
    JobStatus.BUILDING,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
]


@pytest_asyncio.fixture
async def dg(instances: Instances) -> Dockguard:
    return await instances.get(**FAST)


def url_of(dg: Dockguard) -> str:
    return str(dg.client.base_url)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # bound, never listened on, closed: refused


def assert_hello_log(events: list[LogEvent]) -> None:
    lines = [(e.stage, e.line) for e in events if e.kind == "log"]
    assert ("build", "hello-from-build") in lines, lines
    assert ("run", "hello-from-run") in lines, lines
    assert [e.status for e in events if e.kind == "status"] == STAGES
    assert (events[-1].kind, events[-1].status) == ("end", JobStatus.SUCCEEDED)
    ids = [e.id for e in events]
    assert None not in ids and len(set(ids)) == len(ids)
    assert all(e.at is not None for e in events)


def assert_hello_succeeded(job: Job) -> None:
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result is not None and job.result.perf == 2.5
    assert job.finished_at is not None and job.run is not None and job.run.exit_code == 0


async def assert_no_leftovers_within(docker: aiodocker.Docker, job_id: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while found := await leftovers(docker, job_id):
        assert time.monotonic() < deadline, f"still there after {seconds} s: {found}"
        await asyncio.sleep(0.1)


async def test_sync_client_submits_follows_waits_reads_and_lists(dg: Dockguard) -> None:
    def scenario() -> dict[str, Any]:
        with Client(url_of(dg)) as client:
            queued = client.submit(HELLO)
            dg.submitted.append(queued.id)
            events = list(client.logs(queued.id))  # followed while the job runs, to its end
            cut = next(i for i, e in enumerate(events) if e.kind == "log" and e.stage == "run")
            return {
                "queued": queued,
                "events": events,
                "cut": cut,
                "resumed": list(client.logs(queued.id, last_event_id=events[cut].id)),
                "ended": client.wait(queued.id, timeout_s=60),
                "got": client.get(queued.id),
                "long_polled": client.get(queued.id, wait=30),
                "snapshot": list(client.logs(queued.id, follow=False)),
                "text": client.logs_text(queued.id),
                "page": client.list(limit=5),
                "succeeded": client.list(status="succeeded", limit=100),
                "failed": client.list(status=JobStatus.FAILED, limit=100),
                "all": list(client.iter_jobs(page_size=2)),
            }

    seen = await asyncio.to_thread(scenario)
    queued: Job = seen["queued"]
    assert queued.status is JobStatus.QUEUED
    assert queued.dockerfile_bytes == len(HELLO)
    assert_hello_succeeded(seen["ended"])
    assert seen["got"] == seen["ended"] == seen["long_polled"]
    assert_hello_log(seen["events"])
    assert seen["resumed"] == seen["events"][seen["cut"] + 1 :]  # no loss, no repeat
    assert LogEvent("log", stage="build", line="hello-from-build") in seen["snapshot"]
    assert "build | hello-from-build\n" in seen["text"] and "run | hello-from-run\n" in seen["text"]
    assert seen["page"].jobs[0].id == queued.id  # newest first
    assert queued.id in {j.id for j in seen["succeeded"].jobs}
    assert queued.id not in {j.id for j in seen["failed"].jobs}
    every = [j.id for j in seen["all"]]
    assert queued.id in every and len(set(every)) == len(every)  # pages: no repeats


async def test_async_client_submits_with_a_long_poll_and_follows(dg: Dockguard) -> None:
    async with AsyncClient(url_of(dg)) as client:
        first = await client.submit(HELLO, wait=60, limits={"run_timeout_s": 20})
        dg.submitted.append(first.id)
        ended = first if first.status.terminal else await client.wait(first.id, timeout_s=60)
        assert_hello_succeeded(ended)
        assert ended.requested_limits is not None and ended.requested_limits.run_timeout_s == 20
        assert ended.run is not None and ended.run.limits is not None
        assert ended.run.limits.timeout_s == 20
        events = [event async for event in client.logs(first.id)]  # ended: the whole stream
        assert_hello_log(events)
        assert await client.get(first.id) == ended
        assert (await client.list(limit=1)).jobs[0].id == first.id
        assert first.id in [job.id async for job in client.iter_jobs(status="succeeded")]
        assert "run | hello-from-run\n" in await client.logs_text(first.id)
        snapshot = [event async for event in client.logs(first.id, follow=False)]
        assert [e.line for e in snapshot if e.stage == "run"] == ["hello-from-run"]


async def test_async_client_waits_out_then_cancels_a_running_job(
    dg: Dockguard, docker: aiodocker.Docker
) -> None:
    async with AsyncClient(url_of(dg)) as client:
        job = await client.submit(SLEEPY, idempotency_key=f"client-test-{time.time_ns()}")
        dg.submitted.append(job.id)
        async with contextlib.aclosing(client.logs(job.id)) as events:
            async for event in events:
                if event.status is JobStatus.RUNNING:
                    break  # aclosing: leaving the loop closes the stream
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as timed_out:
            await client.wait(job.id, timeout_s=1)
        assert 0.9 < time.monotonic() - started < 3
        assert timed_out.value.code == "wait_timeout"
        assert timed_out.value.job.status is JobStatus.RUNNING
        assert isinstance(timed_out.value, DockguardError)

        cancelled = await client.cancel(job.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.error is not None and cancelled.error.code == "job_cancelled"
        with pytest.raises(DockguardError) as again:
            await client.cancel(job.id)
        assert (again.value.code, again.value.status) == ("job_finished", 409)
        assert (await client.wait(job.id, timeout_s=5)).status is JobStatus.CANCELLED
    await assert_no_leftovers_within(docker, job.id, 5)


async def test_sync_client_cancels_a_queued_job(dg: Dockguard, docker: aiodocker.Docker) -> None:
    def scenario() -> tuple[Job, Job]:
        with Client(url_of(dg)) as client:
            job = client.submit(SLEEPY)
            dg.submitted.append(job.id)
            return client.cancel(job.id), client.get(job.id)

    cancelled, read = await asyncio.to_thread(scenario)
    assert cancelled.status is JobStatus.CANCELLED and read == cancelled
    await assert_no_leftovers_within(docker, cancelled.id, 5)


def expect_error(call: Any, code: str, status: int | None) -> DockguardError:
    with pytest.raises(DockguardError) as raised:
        result = call()
        if hasattr(result, "__next__"):
            next(result)  # a log stream is opened on first use
    assert (raised.value.code, raised.value.status) == (code, status), raised.value
    if status is not None:
        assert raised.value.problem is not None and raised.value.problem["code"] == code
        assert raised.value.message == raised.value.problem["detail"]
    return raised.value


async def test_sync_client_errors_carry_the_servers_code(dg: Dockguard) -> None:
    unknown = "0" * 32

    def scenario() -> None:
        with Client(url_of(dg)) as client:
            expect_error(lambda: client.get(unknown), "job_not_found", 404)
            with pytest.raises(DockguardError) as escaped:  # the id stays in its path segment
                client.get("../../healthz")
            assert escaped.value.status == 404
            expect_error(lambda: client.cancel(unknown), "job_not_found", 404)
            expect_error(lambda: client.logs(unknown), "job_not_found", 404)
            expect_error(lambda: client.logs_text(unknown), "job_not_found", 404)
            expect_error(lambda: client.submit(FORBIDDEN), "dockerfile_forbidden", 400)
            expect_error(lambda: client.submit(b"FROM \xff\n"), "dockerfile_encoding", 400)
            expect_error(lambda: client.submit(""), "dockerfile_empty", 400)
            limits = {"run_timeout_s": -1}
            expect_error(lambda: client.submit(HELLO, limits=limits), "request_invalid", 422)
            too_much = {"run_memory_mb": 10**7}
            expect_error(lambda: client.submit(HELLO, limits=too_much), "limits_exceed_policy", 400)
            expect_error(lambda: client.list(status="bogus"), "request_invalid", 422)
            expect_error(lambda: client.list(limit=1000), "request_invalid", 422)
        with Client(closed_port_url(), timeout_s=5) as down:
            error = expect_error(lambda: down.get(unknown), "connection_failed", None)
            assert "connect" in str(error)
            expect_error(lambda: down.submit(HELLO), "connection_failed", None)
            expect_error(lambda: down.logs(unknown), "connection_failed", None)
        with Client("ftp://127.0.0.1:1") as wrong:
            expect_error(lambda: wrong.get(unknown), "url_invalid", None)

    await asyncio.to_thread(scenario)


async def test_async_client_errors_carry_the_servers_code(dg: Dockguard) -> None:
    async with AsyncClient(url_of(dg)) as client:
        with pytest.raises(DockguardError) as missing:
            await client.get("f" * 32, wait=5)
        assert (missing.value.code, missing.value.status) == ("job_not_found", 404)
        with pytest.raises(DockguardError) as forbidden:
            await client.submit(FORBIDDEN)
        assert forbidden.value.code == "dockerfile_forbidden"
        assert "ONBUILD" in forbidden.value.message
        with pytest.raises(DockguardError) as no_log:
            async for _ in client.logs("f" * 32):
                pass
        assert no_log.value.code == "job_not_found"
    async with AsyncClient(closed_port_url(), timeout_s=5) as down:
        with pytest.raises(DockguardError) as refused:
            await down.list()
        assert (refused.value.code, refused.value.status) == ("connection_failed", None)
