"""End-to-end fixtures: a real redis-server started for the session, the real Docker Engine, and
dockguard itself (uvicorn + in-process arq worker) served on loopback, driven with httpx.

Each settings profile (e.g. a 3 s run timeout) gets its own dockguard instance and its own Redis
database, so instances never take each other's jobs. Every job the suite submits is remembered,
and at the end of the session nothing labelled with any of their ids may remain in the engine."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest
import pytest_asyncio
import uvicorn
from redis.asyncio import Redis

from dockguard.api import create_app
from dockguard.api.server import UVICORN_OPTIONS
from dockguard.logs import ContextFilter, formatter
from dockguard.sandbox import names
from dockguard.services import Services
from dockguard.settings import Settings
from tests.trivydb import Vulnerability, write_db


def pytest_sessionstart(session: pytest.Session) -> None:
    """A failing test's captured log shows each record's extra fields (the `why` of an error),
    as the service's text log format does (pytest's own format drops them), and carries the
    job and request ids the service's handler adds."""
    plugin = session.config.pluginmanager.get_plugin("logging-plugin")
    if plugin is not None:
        for handler in (plugin.report_handler, plugin.caplog_handler):
            handler.setFormatter(formatter("console"))
            handler.addFilter(ContextFilter())  # job_id and request_id, as the service's own


TERMINAL = {"succeeded", "failed", "rejected", "cancelled"}
BASE_IMAGES = ("busybox:latest", "debian:bookworm-slim")
# Redis databases: instances take 0, 1, 2, … in order; tests that need a database of their own
# take them from the top, so the two can never meet.
DATABASES = 256
SCRATCH_DB = DATABASES - 1  # the `redis` fixture's
DOCKERFILE_DB = DATABASES - 2  # test_data_protection's separate Dockerfile Redis
WORKER_DB = DATABASES - 3  # test_metrics' standalone worker


# The runtimes the run attacks are made under: the engine's default, and gVisor's (registered by
# scripts/gvisor.sh, which scripts/test.sh runs).
RUNTIMES = ("runc", "runsc")


async def require_runtime(docker: aiodocker.Docker, runtime: str) -> None:
    """Fails (never skips) when the engine lacks `runtime`: such a test says why, loudly."""
    known = (await docker.system.info()).get("Runtimes") or {}
    if runtime not in known:
        pytest.fail(
            f"the engine has no runtime {runtime} (it has: {', '.join(sorted(known))}): "
            "run scripts/gvisor.sh (scripts/test.sh does)"
        )


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """A private redis-server for the whole session, on a free loopback port."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/test.sh installs it)"
    with _free_socket() as sock:
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="dockguard-test-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--databases", str(DATABASES)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "redis-server did not start"
        assert proc.poll() is None, "redis-server exited at start"
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def docker() -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker()
    try:
        await client.version()
    except aiodocker.DockerError as exc:
        pytest.fail(f"no Docker Engine reachable ({exc}); scripts/test.sh starts one")
    for image in BASE_IMAGES:
        try:
            await client.images.inspect(image)
        except aiodocker.DockerError:
            pytest.fail(f"base image {image} is missing; scripts/base-images.sh builds it")
    yield client
    await client.close()


@dataclass
class Dockguard:
    """One running dockguard instance and an HTTP client for it."""

    client: httpx.AsyncClient
    settings: Settings
    services: Services
    submitted: list[str] = field(default_factory=list)

    async def submit(
        self, dockerfile: str | bytes, content_type: str = "text/plain"
    ) -> httpx.Response:
        body = dockerfile.encode() if isinstance(dockerfile, str) else dockerfile
        response = await self.client.post(
            "/v1/jobs", content=body, headers={"Content-Type": content_type}
        )
        if response.status_code == 202:
            self.submitted.append(response.json()["id"])
        return response

    async def run(self, dockerfile: str, timeout_s: float = 120) -> dict[str, Any]:
        """Submit and wait for the job to end; returns the final job."""
        response = await self.submit(dockerfile)
        assert response.status_code == 202, response.text
        return await self.wait(response.json()["id"], timeout_s)

    async def wait(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            response = await self.client.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            job: dict[str, Any] = response.json()
            if job["status"] in TERMINAL:
                return job
            assert time.monotonic() < deadline, f"job still {job['status']} after {timeout_s} s"
            await asyncio.sleep(0.1)


class Instances:
    """dockguard instances by settings profile, started on first use, stopped at session end."""

    def __init__(self, redis_port: int, trivy_db: Path) -> None:
        self._redis_port = redis_port
        self._trivy_db = trivy_db
        self._running: dict[str, tuple[Dockguard, uvicorn.Server, asyncio.Task[None]]] = {}

    async def get(self, **overrides: Any) -> Dockguard:
        key = repr(sorted(overrides.items()))
        if key in self._running:
            assert not self._running[key][2].done(), "this instance was stopped"
        else:
            self._running[key] = await self._start(len(self._running), overrides)
        return self._running[key][0]

    async def _start(
        self, database: int, overrides: dict[str, Any]
    ) -> tuple[Dockguard, uvicorn.Server, asyncio.Task[None]]:
        assert database < WORKER_DB, "more instances than Redis databases for them"
        values: dict[str, Any] = {
            "redis_url": f"redis://127.0.0.1:{self._redis_port}/{database}",
            "run_timeout_s": 60,
            "build_timeout_s": 300,
            "log_format": "console",
            "scanner_cache_dir": str(self._trivy_db),
            "scanner_db_refresh_h": 0,  # nothing can be downloaded here
        }
        run_worker = overrides.pop("run_worker", True)
        values.update(overrides)
        settings = Settings(**values)
        sock = _free_socket()
        port = sock.getsockname()[1]
        app = create_app(settings, run_worker=run_worker)
        config = uvicorn.Config(app, lifespan="on", **UVICORN_OPTIONS)  # as `dockguard serve`
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), "dockguard did not start"
            await asyncio.sleep(0.02)
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends them: reusing one
        # just as the server closes it is a ReadError (seen once in CI, polling 13 jobs).
        client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        return (
            Dockguard(client=client, settings=settings, services=app.state.services),
            server,
            task,
        )

    def submitted(self) -> list[str]:
        return [job for instance, _, _ in self._running.values() for job in instance.submitted]

    async def stop(self, **overrides: Any) -> None:
        """Stop the instance of these settings (before the session ends: its engine is going
        away), or with none given every instance. A stopped one keeps its Redis database."""
        keys = [repr(sorted(overrides.items()))] if overrides else list(self._running)
        for key in keys:
            instance, server, task = self._running[key]
            if not task.done():
                await instance.client.aclose()
                server.should_exit = True
                await task


VULNERABLE = Vulnerability(
    id="CVE-2099-0001",
    package="dgtest",
    fixed_version="1.0-2",
    severity="HIGH",
    title="dgtest: a made-up flaw",
)
UNFIXED = Vulnerability(
    id="CVE-2099-0002", package="dgunfixed", fixed_version="", severity="CRITICAL", title="no fix"
)


def make_trivy_db(parent: Path, name: str, *, age: timedelta) -> Path:
    """A vulnerability DB (see tests/trivydb.py) whose UpdatedAt is `age` ago."""
    cache = parent / name
    write_db(cache, [VULNERABLE, UNFIXED], updated_at=datetime.now(UTC) - age)
    return cache


@pytest.fixture(scope="session")
def trivy_dbs() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dockguard-test-trivy-") as parent:
        os.chmod(parent, 0o755)  # the container backend's non-root scanner reads it
        yield Path(parent)


@pytest.fixture(scope="session")
def trivy_db(trivy_dbs: Path) -> Path:
    return make_trivy_db(trivy_dbs, "fresh", age=timedelta(hours=1))


@pytest_asyncio.fixture(scope="session")
async def instances(
    redis_port: int, docker: aiodocker.Docker, trivy_db: Path
) -> AsyncIterator[Instances]:
    running = Instances(redis_port, trivy_db)
    yield running
    await running.stop()
    await assert_no_leftovers(docker, running.submitted())


@pytest_asyncio.fixture(scope="session")
async def dockguard(instances: Instances) -> Dockguard:
    """dockguard with default settings (but for shorter timeouts)."""
    return await instances.get()


@pytest_asyncio.fixture
async def redis(redis_port: int) -> AsyncIterator[Redis]:
    """A client of an empty Redis database no dockguard instance uses, emptied again after."""
    client = Redis(host="127.0.0.1", port=redis_port, db=SCRATCH_DB)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest_asyncio.fixture
async def idle(instances: Instances) -> Dockguard:
    """An instance with no worker (its jobs stay `queued`) and an empty Redis database."""
    instance = await instances.get(run_worker=False)
    await instance.services.redis.flushdb()
    return instance


async def leftovers(docker: aiodocker.Docker, job_id: str) -> list[str]:
    """Every container, volume and image that still carries the job's label."""
    filters = names.label_filter(job_id)
    found = [
        f"container {c.id[:12]}" for c in await docker.containers.list(all=True, filters=filters)
    ]
    volumes = await docker.volumes.list(filters=filters)
    found += [f"volume {v['Name']}" for v in volumes.get("Volumes") or []]
    found += [f"image {i['Id'][:19]}" for i in await docker.images.list(all=True, filters=filters)]
    for stage in ("build", "final"):
        try:
            await docker.images.inspect(names.image_tag(job_id, stage))
            found.append(f"tag {names.image_tag(job_id, stage)}")
        except aiodocker.DockerError:
            pass
    return found


async def assert_gone(docker: aiodocker.Docker, *jobs: dict[str, Any]) -> None:
    for job in jobs:
        assert await leftovers(docker, job["id"]) == [], job["id"]


def assert_failed(job: dict[str, Any], code: str) -> None:
    assert (job["status"], (job["error"] or {}).get("code")) == ("failed", code), (
        job["error"],
        job["build"],
        job["run"],
    )


async def assert_no_leftovers(docker: aiodocker.Docker, job_ids: list[str]) -> None:
    remaining = {job: found for job in job_ids if (found := await leftovers(docker, job))}
    assert not remaining, f"jobs left objects in the engine: {remaining}"
