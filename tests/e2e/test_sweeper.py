"""The sweeper removes what an interrupted job left in the engine, by age, and nothing newer."""

from __future__ import annotations

import asyncio
import uuid

import aiodocker

from dockguard.sandbox import names
from dockguard.sandbox.cleanup import sweep
from tests.e2e.conftest import leftovers


async def test_sweeper_removes_old_leftovers_and_keeps_young_ones(docker: aiodocker.Docker) -> None:
    job_id = uuid.uuid4().hex  # what a worker killed mid-job leaves: a container and a volume
    volume = names.volume_name(job_id)
    await docker.volumes.create({"Name": volume, "Labels": names.labels(job_id)})
    await docker.containers.create(
        {
            "Image": "busybox:latest",
            "Cmd": ["true"],
            "Labels": names.labels(job_id),
            "HostConfig": {"Mounts": [{"Type": "volume", "Source": volume, "Target": "/data"}]},
        },
        name=names.container_name(job_id),
    )
    try:
        # (Scoped to this test's job: other jobs may be running on the same engine.)
        assert await sweep(docker, older_than_s=3600, job_id=job_id) == 0  # young: kept
        assert len(await leftovers(docker, job_id)) == 2
        await asyncio.sleep(1.1)  # creation times have a one-second resolution
        assert await sweep(docker, older_than_s=1, job_id=job_id) == 2
        assert await leftovers(docker, job_id) == []
    finally:
        for container in await docker.containers.list(all=True, filters=names.label_filter(job_id)):
            await container.delete(force=True)
        try:
            await docker.volumes.get(volume)
        except aiodocker.DockerError:
            pass
        else:
            await (await docker.volumes.get(volume)).delete()
