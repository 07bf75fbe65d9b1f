"""A job's containers are watched even when no worker watches the job (the watchdog on every
worker's heartbeat, jobs/sweeper.py `watch`), black-box: Redis, the API and the workers as
processes of their own (tests/e2e/test_reliability.py's `Stack`), SIGKILL, the real engine.

- a worker SIGKILLed mid-run, its job cancelled meanwhile: no attempt will take the job again,
  yet its run container (sleeping far past its run timeout), holder, volume and image are gone
  within two heartbeats of the dead worker's lease running out;
- a managed container alive past its deadline label is killed and removed within two
  heartbeats, while a job running normally on one worker, watched by two, is left alone."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiodocker
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from dockguard.sandbox import names
from dockguard.store.keys import DEPLOYMENT, lease_key
from dockguard.store.workers import BEAT_S, Heartbeats
from tests.e2e import test_reliability
from tests.e2e.conftest import leftovers
from tests.e2e.test_reliability import Process, Stack, run_container, slow

orphans_stack = test_reliability.stack  # the fixture, under a name of this module's

_REMOVED = "watchdog removed a container"
_SLACK_S = 3.0  # a round's own work, and this test's polling


async def gone_by(docker: aiodocker.Docker, job_id: str, deadline: float) -> float:
    """When (monotonic) nothing of the job was left in the engine; fails past `deadline`."""
    while found := await leftovers(docker, job_id):
        assert time.monotonic() < deadline, f"still in the engine: {found}"
        await asyncio.sleep(0.2)
    return time.monotonic()


def removals(*processes: Process) -> list[dict[str, Any]]:
    """The watchdog's log lines, one per container it removed."""
    return [line for process in processes for line in process.lines() if line["msg"] == _REMOVED]


async def lease_left_s(redis: Redis, job_id: str) -> float:
    """How long until every lease on the job (arq's delivery, the attempt's own) runs out."""
    keys = (in_progress_key_prefix + job_id, lease_key(job_id))
    ttls: list[int] = [await redis.pttl(key) for key in keys]
    return max([0, *ttls]) / 1000


async def test_a_cancelled_job_of_a_killed_worker_leaves_nothing_running(
    orphans_stack: Stack, docker: aiodocker.Docker
) -> None:
    stack = orphans_stack
    async with asyncio.timeout(60):
        await stack.start_api()
        first = await stack.start_worker("first")
        job_id = await stack.submit(slow(600))  # far past its 60 s run timeout
        orphan = await run_container(docker, job_id)
        labels = (await docker.containers.get(orphan))["Config"]["Labels"]
        assert int(labels[names.DEADLINE_LABEL]) >= time.time() + 60  # its own, not overdue
        assert labels[names.DEPLOYMENT_LABEL]
        redis = Redis(port=stack.redis_port)
        try:
            first.proc.kill()
            await first.proc.wait()
            lapses_at = time.monotonic() + await lease_left_s(redis, job_id)
        finally:
            await redis.aclose()
        answer = await stack.client.delete(f"/v1/jobs/{job_id}")
        assert answer.status_code == 202 and answer.json()["status"] == "cancelled", answer.text
        second = await stack.start_worker("second")
        # No attempt will take a cancelled job again: the re-delivery is dropped by arq (aborted
        # before start), so only the watchdog can end the orphaned run.
        assert (await docker.containers.get(orphan))["State"]["Running"]
        removed_at = await gone_by(docker, job_id, lapses_at + 2 * BEAT_S + _SLACK_S)
    print(f"gone {removed_at - lapses_at:+.1f} s after the dead worker's lease ran out")
    why = {
        line["container"]: line["why"] for line in removals(second) if line.get("job_id") == job_id
    }
    assert "ended" in why.get(names.container_name(job_id), ""), second.log.read_text()[-3000:]


async def test_a_container_past_its_deadline_is_killed_and_a_running_job_is_not(
    orphans_stack: Stack, docker: aiodocker.Docker
) -> None:
    stack = orphans_stack
    async with asyncio.timeout(60):
        await stack.start_api()
        first = await stack.start_worker("first")
        job_id = await stack.submit(slow(3 * int(BEAT_S), perf=7))  # on `first`: one slot
        running = await run_container(docker, job_id)
        second = await stack.start_worker("second")  # watches `first`'s job too
        redis = Redis(port=stack.redis_port)
        try:
            while await Heartbeats(redis).alive() < 2:  # noqa: ASYNC110 -- another process
                await asyncio.sleep(0.1)
            deployment = (await redis.get(DEPLOYMENT)).decode()
        finally:
            await redis.aclose()
        # As a worker of this deployment that died long ago left it: alive, past its deadline.
        # (No job label: no job's record, gone or ended, can be why it is removed.)
        name = f"{names.OBJECT_PREFIX}test-{uuid.uuid4().hex}-overdue"
        overdue = await docker.containers.create(
            {
                "Image": "busybox:latest",
                "Cmd": ["sleep", "600"],
                "Labels": {
                    names.MANAGED_LABEL: "true",
                    names.DEPLOYMENT_LABEL: deployment,  # (other deployments leave it alone)
                    names.DEADLINE_LABEL: str(int(time.time()) - 1),
                },
                "HostConfig": {"NetworkMode": "none"},
            },
            name=name,
        )
        try:
            await overdue.start()
            started = time.monotonic()
            while await _exists(docker, overdue.id):
                assert time.monotonic() < started + 2 * BEAT_S + _SLACK_S, "still there"
                await asyncio.sleep(0.2)
            took_s = time.monotonic() - started
            job = await stack.wait(job_id, timeout_s=40)
        finally:
            await _remove(docker, overdue.id)
    print(f"the overdue container was gone {took_s:.1f} s after it started")
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["perf"] == 7
    assert not [c for c in await docker.containers.list(all=True) if c.id == running]
    (line,) = [line for line in removals(first, second) if line["container"] == name]
    assert line["why"].startswith("past its deadline"), line  # by one of them, once
    assert [line for line in removals(first, second) if line.get("job_id") == job_id] == []


async def _exists(docker: aiodocker.Docker, container_id: str) -> bool:
    try:
        await docker.containers.get(container_id)
    except aiodocker.DockerError as exc:
        assert exc.status == 404, exc
        return False
    return True


async def _remove(docker: aiodocker.Docker, container_id: str) -> None:
    try:
        await docker.containers.container(container_id).delete(force=True)
    except aiodocker.DockerError as exc:
        assert exc.status == 404, exc
