"""`/readyz` names every check: Redis and the engine (503 when either fails, and ready again by
itself when it is back), the workers seen alive (503 with none: an API without a worker cannot
finish a job), and the scanner's DB."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from dockguard.store.workers import Heartbeats
from tests.e2e.conftest import Dockguard, Instances, _free_socket


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
        != b"PONG\n"
    ):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture
def own_redis() -> Iterator[tuple[int, str]]:
    with _free_socket() as sock:
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="dockguard-readyz-")
    yield port, workdir
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
    shutil.rmtree(workdir, ignore_errors=True)


async def readyz(dg: Dockguard) -> tuple[int, dict[str, object]]:
    answer = await dg.client.get("/readyz")
    return answer.status_code, answer.json()


async def test_ready_with_its_own_worker(dockguard: Dockguard) -> None:
    status, body = await readyz(dockguard)
    assert status == 200, body
    assert body["status"] == "ready"
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert (checks["redis"], checks["docker"]) == ("ok", "ok")
    assert isinstance(checks["workers"], int) and checks["workers"] >= 1
    assert checks["scanner_db"] == "ok"


async def test_an_api_without_a_worker_is_not_ready(instances: Instances) -> None:
    api_only = await instances.get(run_worker=False, run_timeout_s=31)
    status, body = await readyz(api_only)
    assert status == 503 and body["status"] == "not_ready"
    assert body["checks"] == {"redis": "ok", "docker": "ok", "workers": 0, "scanner_db": "ok"}
    assert body["code"] == "service_unavailable" and body["detail"] == "not ready: workers"


async def test_excluded_checks_are_reported_but_do_not_decide(instances: Instances) -> None:
    """`?exclude=` (as Kubernetes' own /readyz): an API whose workers are scaled to zero, or that
    has no engine socket, is ready when it can store jobs."""
    api_only = await instances.get(run_worker=False, run_timeout_s=31)
    answer = await api_only.client.get("/readyz", params={"exclude": ["workers"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready" and body["excluded"] == ["workers"]
    assert body["checks"]["workers"] == 0 and body["checks"]["docker"] == "ok"

    answer = await api_only.client.get("/readyz", params={"exclude": ["docker", "workers"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"]["docker"] == "not_checked"
    assert answer.json()["excluded"] == ["docker", "workers"]

    # Excluding the engine only still needs a worker.
    answer = await api_only.client.get("/readyz", params={"exclude": "docker"})
    assert answer.status_code == 503 and answer.json()["detail"] == "not ready: workers"

    # Redis cannot be left out, nor can a check that does not exist.
    for wrong in ("redis", "nonsense"):
        answer = await api_only.client.get("/readyz", params={"exclude": wrong})
        assert answer.status_code == 422, answer.text  # as every invalid query parameter
        assert answer.json()["code"] == "request_invalid"


async def test_an_api_with_no_engine_excludes_its_check_by_setting(instances: Instances) -> None:
    """DOCKGUARD_READYZ_EXCLUDE=docker (compose.yaml's API, which has no socket): the engine is
    never asked, every request's verdict leaves it out, and the workers still decide."""
    settings: dict[str, Any] = {
        "docker_url": "unix:///nonexistent/dockguard-test/docker.sock",
        "readyz_exclude": ["docker"],
    }
    no_engine = await instances.get(**settings)
    answer = await no_engine.client.get("/readyz")
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "ready", body
    assert body["checks"]["docker"] == "not_checked" and body["excluded"] == ["docker"]
    assert body["runtime"] == {"run": None, "build": None}  # no engine was asked
    answer = await no_engine.client.get("/readyz", params={"exclude": "workers"})
    assert answer.json()["excluded"] == ["docker", "workers"]  # the request's, added
    await instances.stop(**settings)  # its worker's engine is not there: no more watchdog rounds
    # Without the setting, the engine that is not there fails the check.
    failing = await instances.get(
        docker_url="unix:///nonexistent/dockguard-test/docker.sock", run_worker=False
    )
    answer = await failing.client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["checks"]["docker"] == "failed", answer.text


async def test_redis_down_is_not_ready_and_back_is_ready_again(
    instances: Instances, own_redis: tuple[int, str]
) -> None:
    port, workdir = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    redis = start_redis(port, workdir)
    dg = await instances.get(run_worker=False, redis_url=url)
    client = Redis.from_url(url)
    try:
        await Heartbeats(client).beat("a-worker-elsewhere")  # as a standalone worker does
        assert (await readyz(dg))[0] == 200
        redis.terminate()
        redis.wait(10)
        started = time.monotonic()
        status, body = await readyz(dg)
        assert time.monotonic() - started < 5  # bounded, whatever Redis does
        assert status == 503 and body["checks"]["redis"] == "failed"  # type: ignore[index]
        assert "redis" in str(body["detail"])
        redis = start_redis(port, workdir)
        await client.aclose()
        client = Redis.from_url(url)
        await Heartbeats(client).beat("a-worker-elsewhere")
        deadline = time.monotonic() + 15
        while (answer := await readyz(dg))[0] != 200:  # the API reconnects by itself
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.2)
        assert answer[1]["checks"]["redis"] == "ok"  # type: ignore[index]
    finally:
        await client.aclose()
        redis.terminate()
        redis.wait(10)
