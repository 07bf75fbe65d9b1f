"""Crash-safety, black-box: a real redis-server with AOF (`appendfsync everysec`), the API and the
workers as processes of their own, driven over HTTP and with signals.

- a worker killed mid-run: another worker takes the job within its lease and finishes it, well
  within 60 s of the death, and removes the orphaned run container;
- a worker paused past its lease: the job's second attempt runs; the first, resumed, neither
  removes the second's objects nor ends the job again (fenced attempts);
- a delivery past the tries allowed ends the job `worker_lost` (arq would drop it silently);
- Redis killed and restarted mid-job: the worker rides it out, the running job and a queued one
  both finish (the queued one from the AOF);
- every worker exits 0 on SIGTERM, and nothing a job created is left in the engine."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest_asyncio
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dockguard.jobs.worker import LEASE_S, MAX_TRIES, create_worker, renew_leases
from dockguard.sandbox import names
from tests.e2e.conftest import TERMINAL, Dockguard, assert_no_leftovers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def slow(seconds: int, perf: int = 1) -> str:
    script = f"sleep {seconds}; echo '{{\"perf\": {perf}}}' > /data/perf.json"
    return f"FROM busybox:latest\nUSER 1000\nCMD {json.dumps(['sh', '-c', script])}\n"


class Process:
    """A dockguard process, its stderr in a file (JSON log lines)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    async def stop(self) -> int:
        """SIGTERM, and its exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(150):
            return await self.proc.wait()


class Stack:
    """redis-server (AOF), `dockguard serve --no-worker` and `dockguard worker` processes."""

    def __init__(self, workdir: Path, trivy_db: Path) -> None:
        self.workdir = workdir
        self.redis_port = _free_port()
        self.api_port = _free_port()
        self.redis_proc: asyncio.subprocess.Process | None = None
        self.processes: list[Process] = []
        self.env = {
            **os.environ,
            "DOCKGUARD_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DOCKGUARD_SCANNER_CACHE_DIR": str(trivy_db),
            "DOCKGUARD_SCANNER_DB_REFRESH_H": "0",
            "DOCKGUARD_BUILD_NETWORK": "none",
            "DOCKGUARD_WORKER_METRICS_PORT": "0",
            "DOCKGUARD_WORKER_CONCURRENCY": "1",
            "DOCKGUARD_RUN_TIMEOUT_S": "60",
            "DOCKGUARD_BUILD_TIMEOUT_S": "120",
            "DOCKGUARD_LOG_FORMAT": "json",
        }
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.api_port}",
            timeout=10,
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        self.jobs: list[str] = []

    async def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test.sh installs it)"
        self.redis_proc = await asyncio.create_subprocess_exec(
            binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        redis = Redis(port=self.redis_port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if await redis.ping():
                        return
                except RedisConnectionError:
                    pass
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()

    async def kill_redis(self) -> None:
        assert self.redis_proc is not None
        self.redis_proc.kill()
        await self.redis_proc.wait()

    async def _spawn(self, name: str, *args: str) -> Process:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dockguard", *args, env=self.env,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        process = Process(name, proc, log)
        self.processes.append(process)
        return process

    async def start_api(self) -> Process:
        api = await self._spawn("api", "serve", "--no-worker", "--port", str(self.api_port))
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await self.client.get("/healthz")).status_code == 200:
                    return api
            except httpx.TransportError:
                pass
            assert api.proc.returncode is None, api.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the API did not start"
            await asyncio.sleep(0.1)

    async def start_worker(self, name: str) -> Process:
        return await self._spawn(name, "worker")

    async def submit(self, dockerfile: str) -> str:
        answer = await self.client.post(
            "/v1/jobs", content=dockerfile, headers={"Content-Type": "text/plain"}
        )
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["id"]
        self.jobs.append(job_id)
        return job_id

    async def job(self, job_id: str) -> dict[str, Any]:
        answer = await self.client.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    async def wait(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            with_redis_back = True
            try:
                job = await self.job(job_id)
            except (httpx.TransportError, AssertionError):
                with_redis_back = False  # the API answers 503 while Redis is down
            if with_redis_back and job["status"] in TERMINAL:
                return job
            assert time.monotonic() < deadline, f"job {job_id} did not end in {timeout_s} s"
            await asyncio.sleep(0.2)

    async def close(self) -> dict[str, int]:
        """Stop every process (workers first); their exit codes by name."""
        codes = {}
        for process in reversed(self.processes):
            codes[process.name] = await process.stop()
        await self.client.aclose()
        if self.redis_proc is not None and self.redis_proc.returncode is None:
            self.redis_proc.terminate()
            await self.redis_proc.wait()
        return codes


@pytest_asyncio.fixture
async def stack(trivy_db: Path, docker: aiodocker.Docker) -> AsyncIterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-reliability-"))
    running = Stack(workdir, trivy_db)
    await running.start_redis()
    try:
        yield running
    finally:
        codes = await running.close()
        await assert_no_leftovers(docker, running.jobs)
        shutil.rmtree(workdir, ignore_errors=True)
    killed = {name for name, code in codes.items() if code == -signal.SIGKILL}
    assert all(code == 0 for name, code in codes.items() if name not in killed), codes


async def run_container(docker: aiodocker.Docker, job_id: str, timeout_s: float = 90) -> str:
    """The id of the job's run container once it is running."""
    deadline = time.monotonic() + timeout_s
    while True:
        for container in await docker.containers.list(filters=names.label_filter(job_id)):
            if container["State"] == "running" and "-data-holder" not in container["Names"][0]:
                return str(container["Id"])
        assert time.monotonic() < deadline, "the job's run never started"
        await asyncio.sleep(0.1)


def finished_lines(*processes: Process, job_id: str) -> list[dict[str, Any]]:
    return [
        line
        for process in processes
        for line in process.lines()
        if line.get("msg") == "job finished" and line.get("job_id") == job_id
    ]


async def test_a_killed_workers_job_is_taken_again_within_its_lease(
    stack: Stack, docker: aiodocker.Docker
) -> None:
    await stack.start_api()
    first = await stack.start_worker("first")
    job_id = await stack.submit(slow(4))
    orphan = await run_container(docker, job_id)
    second = await stack.start_worker("second")  # only now: the first one has the job
    first.proc.kill()
    killed_at = time.monotonic()
    await first.proc.wait()
    job = await stack.wait(job_id, timeout_s=90)
    took_s = time.monotonic() - killed_at
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["perf"] == 1
    # Within the lease (and a poll), not arq's hour: the retry ran the whole job again.
    assert took_s < 60, f"the job ended {took_s:.1f} s after its worker died"
    assert not [c for c in await docker.containers.list(all=True) if c.id == orphan]
    assert len(finished_lines(first, second, job_id=job_id)) == 1


async def test_a_job_taken_again_after_the_queue_timeout_is_not_dropped(
    stack: Stack, docker: aiodocker.Docker
) -> None:
    """arq's entry of a job outlives the queue timeout: a worker that dies on a job submitted
    longer ago than that still has its job taken again (arq dropped it as expired before)."""
    stack.env["DOCKGUARD_QUEUE_TIMEOUT_S"] = "2"
    await stack.start_api()
    first = await stack.start_worker("first")
    submitted_at = time.monotonic()
    job_id = await stack.submit(slow(6))
    await run_container(docker, job_id)
    await asyncio.sleep(max(0.0, submitted_at + 3 - time.monotonic()))  # past the queue timeout
    second = await stack.start_worker("second")
    first.proc.kill()
    await first.proc.wait()
    job = await stack.wait(job_id, timeout_s=90)
    assert job["status"] == "succeeded", job["error"]
    assert len(finished_lines(first, second, job_id=job_id)) == 1


async def test_a_paused_worker_cannot_undo_the_attempt_that_replaced_it(
    stack: Stack, docker: aiodocker.Docker
) -> None:
    await stack.start_api()
    first = await stack.start_worker("first")
    job_id = await stack.submit(slow(20, perf=2))
    before = await run_container(docker, job_id)
    second = await stack.start_worker("second")
    first.proc.send_signal(signal.SIGSTOP)  # paused past its lease: the job is taken again
    try:
        deadline = time.monotonic() + LEASE_S + 60
        while (replacement := await run_container(docker, job_id)) == before:
            assert time.monotonic() < deadline, "no second attempt"
            await asyncio.sleep(0.2)
    finally:
        first.proc.send_signal(signal.SIGCONT)
    job = await stack.wait(job_id, timeout_s=120)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["perf"] == 2
    assert not [c for c in await docker.containers.list(all=True) if c.id in (before, replacement)]
    # The job ended once, by the second attempt; the first one knew it had been replaced.
    (finished,) = finished_lines(first, second, job_id=job_id)
    assert finished["status"] == "succeeded"
    assert any(
        line.get("msg") == "a later attempt took the job over; this attempt stops"
        and line.get("job_id") == job_id
        for line in first.lines()
    ), first.log.read_text()[-3000:]


async def test_a_delivery_past_the_tries_allowed_fails_the_job_worker_lost(
    stack: Stack,
) -> None:
    await stack.start_api()
    job_id = await stack.submit(slow(0))
    redis = Redis(port=stack.redis_port)
    try:  # as if it had been interrupted MAX_TRIES times: arq counts tries in this key
        await redis.set(f"arq:retry:{job_id}", MAX_TRIES, ex=600)
    finally:
        await redis.aclose()
    await stack.start_worker("worker")
    job = await stack.wait(job_id, timeout_s=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert f"interrupted {MAX_TRIES} times" in job["error"]["message"]


async def test_a_worker_rides_out_a_redis_restart_and_loses_no_job(
    stack: Stack, docker: aiodocker.Docker
) -> None:
    await stack.start_api()
    worker = await stack.start_worker("worker")
    running = await stack.submit(slow(6, perf=3))
    queued = await stack.submit(slow(0, perf=4))  # one slot: it waits in the queue
    await run_container(docker, running)
    await asyncio.sleep(1.5)  # appendfsync everysec: what was written is on disk now
    await stack.kill_redis()
    await asyncio.sleep(4)  # the run ends meanwhile: its verdict's write must wait Redis out
    answer = await stack.client.get(f"/v1/jobs/{running}")
    assert answer.status_code == 503 and answer.json()["code"] == "service_unavailable"
    await stack.start_redis()
    first = await stack.wait(running, timeout_s=120)
    second = await stack.wait(queued, timeout_s=120)
    assert worker.proc.returncode is None, worker.log.read_text()[-3000:]
    assert (first["status"], second["status"]) == ("succeeded", "succeeded"), (first, second)
    assert (first["result"]["perf"], second["result"]["perf"]) == (3, 4)
    assert any(line.get("msg", "").startswith("redis unavailable") for line in worker.lines())


async def test_a_running_deliverys_lapsed_lease_is_set_again_and_an_ended_ones_is_not(
    dockguard: Dockguard,
) -> None:
    """After a Redis outage longer than the lease, arq's in-progress key has lapsed: the
    heartbeat sets it again for a delivery still running (else arq hands the job out again),
    and not for one that has ended."""
    services = dockguard.services
    worker = create_worker(services, handle_signals=False)
    running = asyncio.create_task(asyncio.sleep(30))
    ended = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    worker.tasks.update({"lapsed-running": running, "lapsed-ended": ended})
    redis = services.redis
    try:
        await redis.delete(*(in_progress_key_prefix + key for key in worker.tasks))
        await renew_leases(services, worker)
        ttl_ms = await redis.pttl(in_progress_key_prefix + "lapsed-running")
        assert LEASE_S * 1000 - 2000 < ttl_ms <= LEASE_S * 1000
        assert not await redis.exists(in_progress_key_prefix + "lapsed-ended")
    finally:
        running.cancel()
        await redis.delete(in_progress_key_prefix + "lapsed-running")
