"""Stopping, black-box: real processes (test_reliability.py's `Stack`: a redis-server, `dockguard
serve`, `dockguard worker`), the real engine, signals.

- a worker's SIGTERM with a grace long enough: the job it runs finishes `succeeded` on it, it
  takes no new job meanwhile (one submitted after the signal waits for the next worker) and no
  longer counts as a live worker, and it exits 0;
- with a short grace: the running job is handed back and finishes on another worker; the first
  attempt's containers are gone when the stopped worker exits;
- `serve --workers 2 --no-worker`: /metrics counts every request whichever process answered
  (and so does DOCKGUARD_API_METRICS_PORT, on which every process listens, and which another
  serve is refused), and SIGTERM to the parent stops every process within the grace (an open
  long-poll waited for until then), exit status 0; a replacement that fails to start during a
  SIGHUP restart leaves the old processes serving and does not turn the later stop into exit 3."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import httpx
import pytest_asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from dockguard.store.workers import BEAT_S, Heartbeats
from tests.e2e.conftest import _free_socket, assert_no_leftovers, leftovers
from tests.e2e.test_reliability import Process, Stack, finished_lines, run_container, slow

GRACE_LONG_S = 60
GRACE_SHORT_S = 1


class Stop(Stack):
    async def start_api_processes(self, processes: int) -> Process:
        api = await self._spawn(
            "api", "serve", "--no-worker", "--workers", str(processes), "--port", str(self.api_port)
        )
        deadline = time.monotonic() + 60
        # Every one of them started (a /healthz answered is only one of them).
        while (
            len(children(api.proc.pid)) < processes
            or messages(api).count("Application startup complete.") < processes
            or not await self._healthy()
        ):
            assert api.proc.returncode is None, api.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the API processes did not start"
            await asyncio.sleep(0.1)
        return api

    async def _healthy(self) -> bool:
        try:
            return (await self.client.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False


@pytest_asyncio.fixture
async def stack(trivy_db: Path, docker: aiodocker.Docker) -> AsyncIterator[Stop]:
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-shutdown-"))
    running = Stop(workdir, trivy_db)
    running.env["DOCKGUARD_LOG_LEVEL"] = "INFO"
    await running.start_redis()
    try:
        yield running
    finally:
        codes = await running.close()
        await assert_no_leftovers(docker, running.jobs)
        shutil.rmtree(workdir, ignore_errors=True)
    assert all(code == 0 for code in codes.values()), codes


def children(pid: int) -> list[int]:
    """The API processes uvicorn's supervisor `pid` started (not multiprocessing's resource
    tracker, its other child)."""
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    started = []
    for child in found:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                started.append(int(child))
        except OSError:
            pass  # it has just ended
    return started


def messages(process: Process) -> list[str]:
    return [str(line.get("msg", "")) for line in process.lines()]


async def logged(process: Process, message: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(message in line for line in messages(process)):
        assert process.proc.returncode is None, process.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never logged {message!r}"
        await asyncio.sleep(0.05)


async def test_a_stopping_worker_finishes_its_job_and_takes_no_new_one(
    stack: Stop, docker: aiodocker.Docker
) -> None:
    stack.env["DOCKGUARD_WORKER_CONCURRENCY"] = "2"  # a free slot: only the stop keeps a job out
    stack.env["DOCKGUARD_WORKER_SHUTDOWN_GRACE_S"] = str(GRACE_LONG_S)
    await stack.start_api()
    first = await stack.start_worker("first")
    running = await stack.submit(slow(12, perf=5))  # runs past the next beat
    await run_container(docker, running)
    redis = Redis(host="127.0.0.1", port=stack.redis_port)
    try:
        assert await Heartbeats(redis).alive() == 1
        first.proc.send_signal(signal.SIGTERM)
        await logged(first, "worker stopping: takes no new job")
        # No longer a worker to take jobs (/readyz), from its next beat, while its job runs on.
        deadline = time.monotonic() + BEAT_S + 5
        while await Heartbeats(redis).alive() != 0:
            assert time.monotonic() < deadline, "a stopping worker still counted as alive"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    assert (await stack.job(running))["status"] == "running"
    queued = await stack.submit(slow(0, perf=6))
    async with asyncio.timeout(GRACE_LONG_S + 30):
        code = await first.proc.wait()
    assert code == 0, first.log.read_text()[-3000:]
    job = await stack.job(running)
    assert (job["status"], job["result"]["perf"]) == ("succeeded", 5), job["error"]
    assert [line["status"] for line in finished_lines(first, job_id=running)] == ["succeeded"]
    assert (await stack.job(queued))["status"] == "queued"  # not taken by the stopping worker
    assert not any(c for c in messages(first) if "handed back" in c)
    second = await stack.start_worker("second")
    later = await stack.wait(queued, timeout_s=90)
    assert (later["status"], later["result"]["perf"]) == ("succeeded", 6), later["error"]
    assert finished_lines(first, job_id=queued) == []
    assert len(finished_lines(second, job_id=queued)) == 1


async def test_past_a_short_grace_the_job_is_handed_back_and_ends_on_another_worker(
    stack: Stop, docker: aiodocker.Docker
) -> None:
    stack.env["DOCKGUARD_WORKER_SHUTDOWN_GRACE_S"] = str(GRACE_SHORT_S)
    await stack.start_api()
    first = await stack.start_worker("first")
    job_id = await stack.submit(slow(10, perf=7))
    before = await run_container(docker, job_id)
    second = await stack.start_worker("second")  # only now: the first one has the job
    signalled_at = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(GRACE_SHORT_S + 130):  # the grace, then the cleanup's at most
        code = await first.proc.wait()
    assert code == 0, first.log.read_text()[-3000:]
    assert time.monotonic() - signalled_at < 10 - 1  # it did not wait for the run to end
    assert any("handed back" in message for message in messages(first))
    # The first attempt's run container is gone by the time its worker has exited.
    assert not [c for c in await docker.containers.list(all=True) if c.id == before]
    job = await stack.wait(job_id, timeout_s=120)
    assert (job["status"], job["result"]["perf"]) == ("succeeded", 7), job["error"]
    assert finished_lines(first, job_id=job_id) == []
    assert len(finished_lines(second, job_id=job_id)) == 1
    assert await leftovers(docker, job_id) == []


def _requests_counted(text: str, route: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "dockguard_http_requests"
        for sample in family.samples
        if sample.name == "dockguard_http_requests_total" and sample.labels["route"] == route
    )


def _counted_by(pid: int, route: str) -> float:
    """What one API process alone has counted: its own counter file, read as /metrics reads all
    of them (the directory is in the environment the parent gave it)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (directory,) = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC")]
    with tempfile.TemporaryDirectory() as alone:
        shutil.copy(Path(os.fsdecode(directory)) / f"counter_{pid}.db", alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=alone)
        return sum(
            sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name == "dockguard_http_requests_total" and sample.labels["route"] == route
        )


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its sockets' inodes, found in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_several_api_processes_count_every_request_and_stop_together(stack: Stop) -> None:
    grace_s = 3
    stack.env["DOCKGUARD_API_SHUTDOWN_GRACE_S"] = str(grace_s)
    with _free_socket() as sock:
        metrics_port = sock.getsockname()[1]
    stack.env["DOCKGUARD_API_METRICS_PORT"] = str(metrics_port)
    api = await stack.start_api_processes(2)
    pids = children(api.proc.pid)
    assert len(pids) == 2
    # Each process serves the metrics port too (SO_REUSEPORT), beside the API's shared socket.
    deadline = time.monotonic() + 30
    while not all(metrics_port in listening_ports(pid) for pid in pids):
        assert time.monotonic() < deadline, {pid: listening_ports(pid) for pid in pids}
        await asyncio.sleep(0.1)
    assert children(api.proc.pid) == pids  # neither failed to start and was replaced
    # Another serve is refused that port (it would have shared the scrapes), and exits 2.
    with _free_socket() as sock:
        other_port = sock.getsockname()[1]
    other = await stack._spawn(
        "other", "serve", "--no-worker", "--workers", "2", "--port", str(other_port)
    )
    async with asyncio.timeout(60):
        assert await other.proc.wait() == 2
    assert (
        other.log.read_text()
        .strip()
        .endswith(
            f"dockguard: cannot listen on 127.0.0.1:{metrics_port} (Address already in use); set "
            "DOCKGUARD_API_METRICS_PORT to a free port"
        )
    )
    stack.processes.remove(other)
    job_id = await stack.submit(slow(0))  # no worker: it stays queued
    before = (await stack.client.get("/metrics")).text
    sent = {"/healthz": 300, "/v1/jobs/{job_id}": 100}
    # A connection per request, many at once: both processes accept some.
    async with httpx.AsyncClient(
        base_url=str(stack.client.base_url), limits=httpx.Limits(max_keepalive_connections=0)
    ) as fresh:
        gate = asyncio.Semaphore(20)

        async def get(path: str) -> None:
            async with gate:
                assert (await fresh.get(path)).status_code == 200

        paths = ["/healthz"] * sent["/healthz"] + [f"/v1/jobs/{job_id}"] * sent["/v1/jobs/{job_id}"]
        await asyncio.gather(*(get(path) for path in paths))
    after = (await stack.client.get("/metrics")).text
    for route, count in sent.items():
        assert _requests_counted(after, route) - _requests_counted(before, route) == count
    # The metrics port adds up both processes' metrics too (a request to it is not counted).
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as side:
        for _ in range(6):  # fresh connections: both processes answer some
            scraped = await side.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert scraped.status_code == 200
            counted = _requests_counted(scraped.text, "/v1/jobs/{job_id}")
            assert counted == _requests_counted(after, "/v1/jobs/{job_id}")
    by_process = {pid: _counted_by(pid, "/healthz") for pid in pids}
    assert all(by_process.values()), by_process  # each answered some, and /metrics saw both
    assert sum(by_process.values()) == _requests_counted(after, "/healthz")

    # A long-poll open across the stop: each process waits for its open requests, up to the grace.
    polling = asyncio.create_task(stack.client.get(f"/v1/jobs/{job_id}", params={"wait": 60}))
    await asyncio.sleep(0.5)
    signalled_at = time.monotonic()
    api.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(grace_s + 20):
        code = await api.proc.wait()
    took_s = time.monotonic() - signalled_at
    assert code == 0, api.log.read_text()[-3000:]
    assert grace_s - 0.5 < took_s < grace_s + 15, took_s
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    await asyncio.gather(polling, return_exceptions=True)  # cut at the grace's end
    assert not any(Path(tempfile.gettempdir()).glob(f"dockguard-metrics-*/counter_{pids[0]}.db"))


async def test_a_replacement_that_fails_to_start_is_no_reason_to_fail_the_stop(
    stack: Stop,
) -> None:
    """SIGHUP replaces the processes one by one; one that cannot start (Redis is down) leaves the
    old one serving. A later SIGTERM is an ordinary stop: exit 0, not 3."""
    stack.env["DOCKGUARD_API_SHUTDOWN_GRACE_S"] = "1"
    api = await stack.start_api_processes(2)
    pids = children(api.proc.pid)
    await stack.kill_redis()
    api.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while "aborting the restart" not in api.log.read_text():
        assert api.proc.returncode is None, api.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the replacement did not fail"
        await asyncio.sleep(0.1)
    assert children(api.proc.pid) == pids, api.log.read_text()[-6000:]  # the old ones serve on
    assert (await stack.client.get("/healthz")).status_code == 200
    await stack.start_redis()
    api.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await api.proc.wait()
    assert code == 0, api.log.read_text()[-3000:]
    assert "did not start" not in api.log.read_text()
