"""The scripts in examples/, run as a user would (their own process, httpx or the stdlib) against
the real service: they must keep working as the API changes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest_asyncio

from dockguard import callbacks
from tests.e2e.conftest import Dockguard, Instances

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "example-receiver-secret"
FAST = {"run_timeout_s": 30, "build_timeout_s": 60, "build_network": "none"}


def perf_dockerfile(value: int) -> str:
    script = f"echo '{{\"perf\": {value}}}' > /data/perf.json"
    return f"FROM busybox:latest\nUSER 1000\nCMD {json.dumps(['sh', '-c', script])}\n"


async def run_example(dg: Dockguard, *args: str, timeout_s: float = 120) -> tuple[int, str]:
    """Run an example in its own process (the service runs in this event loop: never block it)."""
    env = {**os.environ, "DOCKGUARD_URL": str(dg.client.base_url).rstrip("/")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(timeout_s):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def remember(dg: Dockguard, output: str) -> None:
    """Jobs the example made, for the suite's check that nothing of them is left in the engine."""
    dg.submitted.extend(word for word in output.split() if len(word) == 32 and word.isalnum())


@pytest_asyncio.fixture
async def dg(instances: Instances) -> Dockguard:
    return await instances.get(**FAST)


async def test_submit_and_wait(dg: Dockguard, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.Dockerfile", tmp_path / "bad.Dockerfile"
    good.write_text(perf_dockerfile(42))
    bad.write_text('FROM busybox:latest\nUSER 1000\nCMD ["false"]\n')
    code, out = await run_example(dg, str(EXAMPLES / "submit_and_wait.py"), str(good))
    remember(dg, out)
    assert code == 0, out
    assert out.strip().endswith("succeeded: perf = 42.0")
    code, out = await run_example(dg, str(EXAMPLES / "submit_and_wait.py"), str(bad))
    remember(dg, out)
    assert code == 1 and "failed: run_nonzero_exit" in out, out
    forbidden = tmp_path / "forbidden.Dockerfile"
    forbidden.write_text("# syntax=docker/dockerfile:1\nFROM busybox:latest\n")
    code, out = await run_example(dg, str(EXAMPLES / "submit_and_wait.py"), str(forbidden))
    assert code == 2 and "refused: dockerfile_forbidden" in out, out


async def test_submit_many(dg: Dockguard, tmp_path: Path) -> None:
    paths = []
    for value in (1, 2, 3):
        path = tmp_path / f"{value}.Dockerfile"
        path.write_text(perf_dockerfile(value))
        paths.append(str(path))
    code, out = await run_example(dg, str(EXAMPLES / "submit_many.py"), *paths)
    remember(dg, out)
    assert code == 0, out
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert [(row[0], row[2], row[3]) for row in rows] == [
        (path, "succeeded", f"{value:.1f}") for path, value in zip(paths, (1, 2, 3), strict=True)
    ]
    assert len({row[1] for row in rows}) == 3  # three jobs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_webhook_receiver_verifies_the_signature(instances: Instances) -> None:
    dg = await instances.get(callback_allowed_hosts=["127.0.0.1"], callback_secret=SECRET, **FAST)
    port = _free_port()
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "webhook_receiver.py"), str(port),
        env={**os.environ, "DOCKGUARD_CALLBACK_SECRET": SECRET}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert receiver.stdout is not None
    try:
        url = f"http://127.0.0.1:{port}/dockguard"
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 10
            while True:  # until it listens
                try:
                    forged = await client.post(
                        url, content=b"{}", headers={"X-Dockguard-Signature": "t=1,v1=00"}
                    )
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            assert forged.status_code == 401
            body = json.dumps({"dockerfile": perf_dockerfile(5), "callback_url": url})
            response = await dg.submit(body, "application/json")
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            stale = callbacks.sign(SECRET.encode(), b"{}", int(time.time()) - 3600)
            old = await client.post(url, content=b"{}", headers={"X-Dockguard-Signature": stale})
            assert old.status_code == 401  # a replay of an old call
        lines: list[str] = []
        async with asyncio.timeout(120):
            while not lines or not lines[-1].startswith("verified"):
                lines.append((await receiver.stdout.readline()).decode().strip())
        assert lines == ["refused", "refused", f"verified {job_id} succeeded"]
        await dg.wait(job_id)
        deadline = time.monotonic() + 30
        while not (final := (await dg.client.get(f"/v1/jobs/{job_id}")).json())["callback"][
            "delivered"
        ]:  # the receiver prints its line before the sender records the attempt
            assert time.monotonic() < deadline, final["callback"]
            await asyncio.sleep(0.05)
        assert [a["status_code"] for a in final["callback"]["attempts"]] == [204]
    finally:
        receiver.kill()
        await receiver.wait()
