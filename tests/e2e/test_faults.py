"""Faults, black-box (issue 11's reliability suite), on the processes of test_reliability's
`Stack`:

- the engine connection cut mid-job (a unix-socket proxy between the worker and the engine,
  closed during the build or the run): the job fails `engine_unavailable`, /readyz says the
  engine is down, and once the engine is back the same worker runs the next job to the end;
- a second arq delivery of a job another worker is running (its in-progress key dropped, as a
  lost lease would): one build, one run, one verdict, and the first attempt's work kept;
- 200 submissions from 50 concurrent clients against a queue of 12: exactly 12 accepted, the
  rest 429 `queue_full` with Retry-After, no 5xx, no duplicate; then one worker ends them all;
  concurrent submissions with one Idempotency-Key make one job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest
import pytest_asyncio
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from dockguard.sandbox import http, names
from dockguard.sandbox.cleanup import ignore_missing, remove_objects
from dockguard.store.keys import QUEUE_NAME
from tests.e2e import test_reliability
from tests.e2e.test_reliability import Stack, finished_lines, run_container, slow

stack = test_reliability.stack  # the fixture: redis-server (AOF) and the processes, stopped

ENGINE_SOCKET = "/var/run/docker.sock"


class EngineProxy:
    """A unix socket that forwards every connection to the engine's, until `cut`: then every
    open connection is aborted and new ones are refused, until `restore`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def restore(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._forward, path=str(self.path))

    async def cut(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        await self._server.wait_closed()
        self._server = None

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            engine_reader, engine_writer = await asyncio.open_unix_connection(ENGINE_SOCKET)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, engine_writer}
        try:
            await asyncio.gather(
                _pipe(reader, engine_writer), _pipe(engine_reader, writer), return_exceptions=True
            )
        finally:
            for end in (writer, engine_writer):
                self._open.discard(end)
                end.transport.abort()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(1 << 16):
        sink.write(chunk)
        await sink.drain()
    with contextlib.suppress(OSError):
        sink.write_eof()


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[EngineProxy]:
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-faults-"))
    running = EngineProxy(workdir / "engine.sock")
    await running.restore()
    try:
        yield running
    finally:
        await running.cut()
        shutil.rmtree(workdir, ignore_errors=True)


async def remove_job_objects(docker: aiodocker.Docker, job_id: str) -> None:
    """What of the job its cut-off worker could not remove (the sweeper's, in production),
    removed with dockguard's own routine."""
    await remove_objects(docker, names.label_filter(job_id))
    await ignore_missing(docker.images.delete(names.image_tag(job_id, "build")))


def building(seconds: int) -> str:
    """A Dockerfile whose build takes `seconds` (with no network: DOCKGUARD_BUILD_NETWORK=none)."""
    return f"FROM busybox:latest\nRUN sleep {seconds}\n" + slow(0).split("\n", 1)[1]


async def build_container(docker: aiodocker.Docker, job_id: str, timeout_s: float = 60) -> None:
    """Once the job's build runs a step (its step containers carry the job's label)."""
    deadline = time.monotonic() + timeout_s
    while not [
        c
        for c in await docker.containers.list(filters=names.label_filter(job_id))
        if c["State"] == "running"
    ]:
        assert time.monotonic() < deadline, "the job's build never ran a step"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("stage", ["build", "run"])
async def test_a_cut_engine_connection_fails_the_job_engine_unavailable(
    stack: Stack, proxy: EngineProxy, docker: aiodocker.Docker, stage: str
) -> None:
    async with asyncio.timeout(150):
        stack.env["DOCKGUARD_DOCKER_URL"] = proxy.url  # the API's too: its /readyz
        await stack.start_api()
        worker = await stack.start_worker("worker")
        cut_id = await stack.submit(building(30) if stage == "build" else slow(30))
        try:
            if stage == "build":
                await build_container(docker, cut_id)
            else:
                await run_container(docker, cut_id)
            await proxy.cut()
            try:
                cut = await stack.wait(cut_id, timeout_s=60)
                ready = await stack.client.get("/readyz")
            finally:
                await proxy.restore()
            assert (cut["status"], cut["error"]["code"]) == ("failed", "engine_unavailable"), cut
            assert "Cannot connect" not in cut["error"]["message"]  # no raw client or daemon text
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["docker"] == "failed"
            # The same worker process goes on, and runs the next job to the end.
            after = await stack.wait(await stack.submit(slow(0, perf=5)), timeout_s=60)
            assert (after["status"], after["result"]["perf"]) == ("succeeded", 5), after["error"]
            assert worker.proc.returncode is None
            assert (await stack.client.get("/readyz")).status_code == 200
        finally:  # what the cut-off cleanup could not remove (the sweeper's, in production)
            await remove_job_objects(docker, cut_id)


@contextlib.asynccontextmanager
async def engine_events(docker: aiodocker.Docker) -> AsyncIterator[list[dict[str, Any]]]:
    """The engine's events about dockguard's objects while the block runs, as they come (the
    engine keeps only its last 256 for a `since` query: on a shared engine, too few)."""
    found: list[dict[str, Any]] = []
    filters = json.dumps({"label": [f"{names.MANAGED_LABEL}=true"]})
    listening = asyncio.Event()

    async def listen() -> None:
        async with http.stream(docker, "events", "GET", params={"filters": filters}) as response:
            listening.set()
            async for line in response.content:
                found.append(json.loads(line))

    task = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(listening.wait(), 10)
        yield found
        await asyncio.sleep(0.5)  # the last events on their way
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_duplicate_delivery_makes_one_build_one_run_one_verdict(
    stack: Stack, docker: aiodocker.Docker
) -> None:
    async with asyncio.timeout(150), engine_events(docker) as events:
        await stack.start_api()
        first = await stack.start_worker("first")
        job_id = await stack.submit(slow(8, perf=6))
        await run_container(docker, job_id)
        second = await stack.start_worker("second")
        await redeliver(stack, job_id)  # the second worker takes it (the first is busy)
        job = await stack.wait(job_id, timeout_s=90)
    assert (job["status"], job["result"]["perf"]) == ("succeeded", 6), job["error"]
    run, seen = names.container_name(job_id), _summary(events, job_id)
    assert _count(events, "image", "tag", names.image_tag(job_id, "build")) == 1, seen
    assert _count(events, "container", "create", run) == 1, seen
    assert _count(events, "container", "kill", run) == 0, seen  # it ended by itself
    assert [line["status"] for line in finished_lines(first, second, job_id=job_id)] == [
        "succeeded"
    ]
    assert first.proc.returncode is None and second.proc.returncode is None


async def redeliver(stack: Stack, job_id: str, timeout_s: float = 30) -> None:
    """What arq does once a delivery's lease is lost: the job is still in its queue (it stays
    there until it ends), its in-progress key is gone, and the next worker to poll takes it;
    returns once one has (the key is back)."""
    redis = Redis(port=stack.redis_port)
    key = in_progress_key_prefix + job_id
    try:
        assert await redis.zscore(QUEUE_NAME, job_id) is not None
        assert await redis.delete(key) == 1
        deadline = time.monotonic() + timeout_s
        while not await redis.exists(key):
            assert time.monotonic() < deadline, "no worker took the job again"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


def _summary(events: list[dict[str, Any]], job_id: str) -> list[str]:
    return [
        f"{event.get('Type')} {event.get('Action')} {attributes.get('name')}"
        for event in events
        if job_id in json.dumps(attributes := event.get("Actor", {}).get("Attributes", {}))
    ]


def _count(events: list[dict[str, Any]], kind: str, action: str, name: str) -> int:
    return sum(
        1
        for event in events
        if (event.get("Type"), event.get("Action")) == (kind, action)
        and event.get("Actor", {}).get("Attributes", {}).get("name") == name
    )


QUEUE_CAP = 12
CLIENTS = 50
SUBMISSIONS = 200


async def test_200_submissions_from_50_clients_fill_the_queue_then_get_429(stack: Stack) -> None:
    async with asyncio.timeout(150):
        stack.env["DOCKGUARD_MAX_QUEUED"] = str(QUEUE_CAP)
        stack.env["DOCKGUARD_WORKER_CONCURRENCY"] = "3"
        await stack.start_api()
        answers = await _burst(stack, slow(0, perf=7))
        codes = sorted({answer.status_code for answer in answers})
        accepted = [answer.json()["id"] for answer in answers if answer.status_code == 202]
        refused = [answer for answer in answers if answer.status_code == 429]
        stack.jobs.extend(accepted)
        assert codes == [202, 429], codes  # no 5xx, nothing else
        assert len(accepted) == QUEUE_CAP, len(accepted)
        assert len(set(accepted)) == QUEUE_CAP, accepted
        for answer in refused:
            assert answer.json()["code"] == "queue_full", answer.text
            assert int(answer.headers["Retry-After"]) > 0
        listed = [job["id"] for job in await _listed(stack)]
        assert sorted(listed) == sorted(accepted)  # each stored once, nothing of the refused
        await stack.start_worker("worker")
        for job_id in accepted:
            job = await stack.wait(job_id, timeout_s=100)
            assert (job["status"], job["result"]["perf"]) == ("succeeded", 7), job["error"]
        # With room again: one Idempotency-Key sent by several clients at once makes one job.
        answers = await _burst(stack, slow(0, perf=8), clients=5, each=1, key="one-key")
        assert sorted(answer.status_code for answer in answers) == [200] * 4 + [202]
        (job_id,) = {answer.json()["id"] for answer in answers}
        stack.jobs.append(job_id)
        job = await stack.wait(job_id, timeout_s=30)
        assert (job["status"], job["result"]["perf"]) == ("succeeded", 8), job["error"]
        listed = [job["id"] for job in await _listed(stack)]
        assert len(listed) == QUEUE_CAP + 1 and job_id in listed


async def _burst(
    stack: Stack,
    dockerfile: str,
    *,
    clients: int = CLIENTS,
    each: int = SUBMISSIONS // CLIENTS,
    key: str | None = None,
) -> list[httpx.Response]:
    """`clients` clients of their own, each sending `each` POSTs in turn, all at once."""
    started = asyncio.Event()
    headers = {"Content-Type": "text/plain"} | ({} if key is None else {"Idempotency-Key": key})

    async def client() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(stack.client.base_url), timeout=30) as session:
            await started.wait()
            return [
                await session.post("/v1/jobs", content=dockerfile, headers=headers)
                for _ in range(each)
            ]

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(0)
    started.set()
    return [answer for answers in await asyncio.gather(*tasks) for answer in answers]


async def _listed(stack: Stack) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "100"} | ({} if cursor is None else {"cursor": cursor})
        page = (await stack.client.get("/v1/jobs", params=params)).json()
        jobs += page["jobs"]
        if (cursor := page["next_cursor"]) is None:
            return jobs
