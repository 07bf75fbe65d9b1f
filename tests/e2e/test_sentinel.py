"""Redis failover, black-box: a primary, a replica and three Sentinels (quorum 2) on loopback,
each a process with its own directory and AOF, and the API (`serve --no-worker`) and a worker as
processes of their own with `DOCKGUARD_REDIS_URL=redis+sentinel://…/<master>`.

A failover is forced (`SENTINEL FAILOVER`, or the primary SIGKILLed) while one job runs and
another waits in the queue, and jobs are submitted all along: every submission gets 202 or 503
`service_unavailable` (never a 500), every one that got 202 ends `succeeded`, once; the worker
stays up and exits 0 on SIGTERM; the Sentinels name the former replica as the master.

The primary runs with `min-replicas-to-write 1`, as the README asks of every server of a
Sentinel deployment: without it the demoted primary goes on taking writes for seconds after the
failover (until the Sentinels reconfigure it, about 8 s), and every one of them is lost."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.e2e.conftest import assert_no_leftovers
from tests.e2e.test_reliability import Stack, _free_port, finished_lines, run_container, slow

MASTER = "dockguard"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
_ADMIN_TIMEOUT_S = 2.0
MIN_REPLICAS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")


def _admin(port: int) -> Redis:
    return Redis(
        port=port, socket_connect_timeout=_ADMIN_TIMEOUT_S, socket_timeout=_ADMIN_TIMEOUT_S
    )


@dataclass
class Servers:
    """redis-server processes (a primary, a replica) and their three Sentinels."""

    workdir: Path
    primary_port: int = field(default_factory=_free_port)
    replica_port: int = field(default_factory=_free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [_free_port() for _ in range(3)])
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{sentinels}/{MASTER}/0"

    async def start(self) -> None:
        # The primary refuses writes once its replica has left it (see the module's docstring);
        # with only one replica here, the new master must not, or it would wait for its own.
        await self._server("primary", self.primary_port, *MIN_REPLICAS)
        await self._server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        for number, port in enumerate(self.sentinel_ports, start=1):
            await self._sentinel(f"sentinel{number}", port)
        await self._until_ready()

    async def _spawn(self, name: str, *args: str) -> None:
        directory = self.workdir / name
        directory.mkdir()
        self.processes[name] = await asyncio.create_subprocess_exec(
            *args, "--dir", str(directory), "--logfile", str(directory / "log"),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def _server(self, name: str, port: int, *args: str) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test.sh installs it)"
        await self._spawn(
            name, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", *args,
        )  # fmt: skip

    async def _sentinel(self, name: str, port: int) -> None:
        binary = shutil.which("redis-sentinel")
        assert binary, "redis-sentinel is not installed (scripts/test.sh installs it)"
        config = self.workdir / f"{name}.conf"  # a Sentinel rewrites its config: one each
        config.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
        )
        await self._spawn(name, binary, str(config))

    async def _until_ready(self, timeout_s: float = 30) -> None:
        """The replica in sync, and every Sentinel seeing it and the two other Sentinels (a
        failover needs both)."""
        deadline = time.monotonic() + timeout_s
        while not await self._ready():
            for name, process in self.processes.items():
                assert process.returncode is None, f"{name} exited: {self.log(name)[-2000:]}"
            assert time.monotonic() < deadline, "the Redis servers and Sentinels did not start"
            await asyncio.sleep(0.2)

    async def in_sync(self, port: int) -> bool:
        """Whether the server on `port` is a replica, in sync with its master."""
        with contextlib.suppress(RedisError):
            replication = await self.info(port, "replication")
            return (
                replication.get("role") == "slave" and replication.get("master_link_status") == "up"
            )
        return False

    async def _ready(self) -> bool:
        try:
            if not await self.in_sync(self.replica_port):
                return False
            for port in self.sentinel_ports:
                state = await self.sentinel(port, "SENTINEL", "MASTER", MASTER)
                if (state["num-slaves"], state["num-other-sentinels"]) != ("1", "2"):
                    return False
        except RedisError:
            return False
        return True

    async def info(self, port: int, section: str) -> dict[str, object]:
        client = _admin(port)
        try:
            found: dict[str, object] = await client.info(section)
            return found
        finally:
            await client.aclose()

    async def sentinel(self, port: int, *command: str) -> dict[str, str]:
        """A Sentinel's answer as a flat field → value mapping (SENTINEL MASTER's form)."""
        client = _admin(port)
        try:
            answer = await client.execute_command(*command)
        finally:
            await client.aclose()
        if isinstance(answer, list):
            words = [item.decode() if isinstance(item, bytes) else str(item) for item in answer]
            return dict(zip(words[::2], words[1::2], strict=True))
        return {"answer": answer.decode() if isinstance(answer, bytes) else str(answer)}

    async def master_port(self, sentinel_port: int) -> int:
        client = _admin(sentinel_port)
        try:
            _, port = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        finally:
            await client.aclose()
        return int(port)

    async def kill(self, name: str) -> None:
        process = self.processes[name]
        process.kill()
        await process.wait()

    def log(self, name: str) -> str:
        path = self.workdir / name / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.terminate()
        for process in self.processes.values():
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[Servers]:
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-sentinel-"))
    started = Servers(workdir)
    try:
        await started.start()
        yield started
    finally:
        await started.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture
async def stack(servers: Servers, trivy_db: Path, docker: aiodocker.Docker) -> AsyncIterator[Stack]:
    running = Stack(servers.workdir, trivy_db)
    running.env["DOCKGUARD_REDIS_URL"] = servers.url
    try:
        yield running
    finally:
        codes = await running.close()
        await assert_no_leftovers(docker, running.jobs)
    assert all(code == 0 for code in codes.values()), codes


@dataclass
class Submitter:
    """Submits a job every `every_s` until stopped; what each submission was answered."""

    stack: Stack
    every_s: float = 2.0
    answers: list[tuple[float, int, str | None]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        perf = 100
        while not stop.is_set():
            perf += 1
            await self.submit_one(perf)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    async def submit_one(self, perf: int) -> None:
        answer = await self.stack.client.post(
            "/v1/jobs", content=slow(0, perf=perf), headers={"Content-Type": "text/plain"}
        )
        body = answer.json()
        self.answers.append((time.monotonic(), answer.status_code, body.get("code")))
        if answer.status_code == 202:
            self.accepted.append(body["id"])
            self.stack.jobs.append(body["id"])


async def test_a_sentinel_failover_loses_no_accepted_job(
    servers: Servers, stack: Stack, docker: aiodocker.Docker
) -> None:
    async def failover() -> None:
        answer = await servers.sentinel(servers.sentinel_ports[0], "SENTINEL", "FAILOVER", MASTER)
        assert answer == {"answer": "OK"}, answer

    async def demoted() -> bool:
        """The Sentinels made the former primary a replica: what it took alone is gone now."""
        return await servers.in_sync(servers.primary_port)

    await _ride_out(servers, stack, docker, failover, demoted)


async def test_a_killed_primary_loses_no_accepted_job(
    servers: Servers, stack: Stack, docker: aiodocker.Docker
) -> None:
    async def kill() -> None:
        await servers.kill("primary")  # found down after DOWN_AFTER_MS, then replaced

    async def at_once() -> bool:
        return True

    await _ride_out(servers, stack, docker, kill, at_once)


async def _ride_out(
    servers: Servers,
    stack: Stack,
    docker: aiodocker.Docker,
    force: Callable[[], Awaitable[None]],
    settled: Callable[[], Awaitable[bool]],
) -> None:
    """Force a failover while one job runs and one waits, submitting all along until jobs are
    taken again; once the failover has `settled`, check every job and the worker."""
    await stack.start_api()
    worker = await stack.start_worker("worker")
    running = await stack.submit(slow(6, perf=1))  # runs through the failover
    waiting = await stack.submit(slow(0, perf=2))  # one slot: it waits in the queue through it
    try:
        await run_container(docker, running)
    except AssertionError:
        raise AssertionError(worker.log.read_text()[-3000:]) from None
    submitter = Submitter(stack)
    stop = asyncio.Event()
    submitting = asyncio.create_task(submitter.run(stop))
    try:
        await asyncio.sleep(1)
        await force()
        switched_at = await _until_master(servers, servers.replica_port, timeout_s=30)
        while not _accepted_in_a_row(submitter, since=switched_at, count=2):
            assert time.monotonic() - switched_at < 60, submitter.answers[-5:]
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await submitting
    while not await settled():
        assert time.monotonic() - switched_at < 60, "the failover did not settle"
        await asyncio.sleep(0.2)
    assert worker.proc.returncode is None, worker.log.read_text()[-3000:]

    answers = {(status, code) for _, status, code in submitter.answers}
    assert answers <= {(202, None), (503, "service_unavailable")}, submitter.answers
    jobs = [running, waiting, *submitter.accepted]
    found = {job_id: (await stack.client.get(f"/v1/jobs/{job_id}")).status_code for job_id in jobs}
    assert set(found.values()) == {200}, f"accepted, then lost: {found}"
    ended = {job_id: await stack.wait(job_id, timeout_s=120) for job_id in jobs}
    failed = {job_id: job["error"] for job_id, job in ended.items() if job["status"] != "succeeded"}
    assert not failed, failed
    assert (ended[running]["result"]["perf"], ended[waiting]["result"]["perf"]) == (1, 2)
    for job_id in jobs:
        assert len(finished_lines(worker, job_id=job_id)) == 1, job_id
    for port in servers.sentinel_ports:
        assert await servers.master_port(port) == servers.replica_port


async def _until_master(servers: Servers, port: int, timeout_s: float) -> float:
    """When every Sentinel names the server on `port` as the master."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(RedisError):
            if all([await servers.master_port(p) == port for p in servers.sentinel_ports]):
                return time.monotonic()
        assert time.monotonic() < deadline, "the Sentinels did not switch the master"
        await asyncio.sleep(0.1)


def _accepted_in_a_row(submitter: Submitter, since: float, count: int) -> bool:
    """Whether the last `count` submissions, all made after `since`, were taken."""
    last = submitter.answers[-count:]
    return len(last) == count and all(at >= since and status == 202 for at, status, _ in last)
