"""A build stopped mid-step (a cancel, a timeout, a worker shutting down) leaves nothing behind.

The engine does not stop a step at once: a `RUN` step that has just finished is still being
committed, and that commit ends in a labelled image after the client has gone. Cleanup must wait
for the engine's own end of the build (its step containers gone) before it removes the job's
objects; removing what is listed right away left that image behind (it once tripped the test
session's leftover check)."""

from __future__ import annotations

import asyncio
import uuid

import aiodocker
import pytest

from dockguard.models import BuildLimits
from dockguard.sandbox import names
from dockguard.sandbox.engine import EngineSandbox
from tests.e2e.conftest import leftovers

# A step whose layer takes the engine a few seconds to commit once its command has exited.
SLOW_COMMIT = (
    "FROM busybox:latest\n"
    "RUN dd if=/dev/zero of=/big bs=1M count=300 2>/dev/null\n"
    "ENV NEXT=1\n"
    'CMD ["true"]\n'
)
LIMITS = BuildLimits(
    memory_mb=512,
    cpus=1.0,
    pids=0,
    timeout_s=120,
    network="none",
    nocache=True,
    file_size_mb=1024,
    nofile=1024,
)
SETTLE_S = 8  # how long after cleanup a late commit would have landed by


async def step_exited(docker: aiodocker.Docker, job_id: str) -> None:
    """Returns once the build's RUN command has exited: the engine is now committing its layer."""
    filters = {"label": [f"{names.JOB_LABEL}={job_id}"], "status": ["exited"]}
    for _ in range(3000):  # a minute
        if await docker.containers.list(all=True, filters=filters):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the build's RUN step did not exit within a minute")


async def test_a_build_cancelled_during_a_commit_leaves_no_image(docker: aiodocker.Docker) -> None:
    """The job's timeout, a cancel and a worker's shutdown all reach the build as a cancel."""
    sandbox = EngineSandbox(docker, log_tail_lines=10, data_holder_image="busybox:latest")
    job_id = uuid.uuid4().hex
    build = asyncio.create_task(sandbox.build(job_id, SLOW_COMMIT, LIMITS))
    await step_exited(docker, job_id)
    build.cancel()
    with pytest.raises(asyncio.CancelledError):
        await build

    await sandbox.cleanup(job_id)
    assert await leftovers(docker, job_id) == []
    await asyncio.sleep(SETTLE_S)
    assert await leftovers(docker, job_id) == []
