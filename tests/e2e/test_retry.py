"""arq may run a job twice (a worker stopped mid-job): every step must be safe to repeat."""

from __future__ import annotations

import uuid

import aiodocker

from dockguard.jobs.pipeline import run_job
from dockguard.models import Job, JobStatus
from dockguard.sandbox import names
from tests.e2e.conftest import Dockguard, leftovers
from tests.e2e.test_pipeline import writes

DOCKERFILE = writes('{"perf": 2}')


async def test_a_finished_job_is_left_alone(dockguard: Dockguard) -> None:
    job = await dockguard.run(DOCKERFILE)
    assert job["status"] == "succeeded", job["error"]
    assert await run_job(dockguard.services, job["id"]) == "succeeded"
    again = (await dockguard.client.get(f"/v1/jobs/{job['id']}")).json()
    assert again == job


async def test_an_interrupted_job_resumes_and_cleans_up_the_first_attempt(
    dockguard: Dockguard, docker: aiodocker.Docker
) -> None:
    # What a worker killed mid-run leaves: a job marked running and a container of its own.
    job_id = uuid.uuid4().hex
    job = Job(id=job_id, dockerfile_sha256="0" * 64, dockerfile_bytes=len(DOCKERFILE))
    await dockguard.services.store.create(job, DOCKERFILE, deadline_s=3600)
    dockguard.submitted.append(job_id)
    await dockguard.services.store.update(job_id, lambda j: setattr(j, "status", JobStatus.RUNNING))
    stale = await docker.containers.create(
        {"Image": "busybox:latest", "Cmd": ["true"], "Labels": names.labels(job_id)},
        name=names.container_name(job_id),
    )
    assert await run_job(dockguard.services, job_id) == "succeeded"
    finished = (await dockguard.client.get(f"/v1/jobs/{job_id}")).json()
    assert finished["status"] == "succeeded" and finished["result"]["perf"] == 2.0
    assert await leftovers(docker, job_id) == []
    try:
        await docker.containers.get(stale.id)
        raise AssertionError("the first attempt's container was not removed")
    except aiodocker.DockerError as exc:
        assert exc.status == 404
