"""The job record in Redis: TTL, keys, forward-only status — against the real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from dockguard.models import ErrorInfo, Job, JobStatus
from dockguard.store import RedisDockerfileStore, RedisJobStore, StaleUpdate
from dockguard.store.keys import dockerfile_key, job_key
from tests.e2e.conftest import Instances


def job_store(redis: Redis, ttl_s: int) -> tuple[RedisJobStore, RedisDockerfileStore]:
    dockerfiles = RedisDockerfileStore(redis, ttl_s, fernet=None)
    return RedisJobStore(redis, ttl_s, dockerfiles), dockerfiles


def new_job(job_id: str = "a" * 32) -> Job:
    return Job(id=job_id, dockerfile_sha256="0" * 64, dockerfile_bytes=10)


async def test_create_stores_job_and_dockerfile_with_ttl(redis: Redis) -> None:
    store, dockerfiles = job_store(redis, ttl_s=100)
    await store.create(new_job(), "FROM busybox\n", deadline_s=3600)
    assert 95 <= await redis.ttl(job_key("a" * 32)) <= 100
    assert 95 <= await redis.ttl(dockerfile_key("a" * 32)) <= 100
    assert await dockerfiles.get("a" * 32) == "FROM busybox\n"
    assert (await store.get("a" * 32)).status == JobStatus.QUEUED  # type: ignore[union-attr]


async def test_updates_keep_the_ttl_and_move_forward_only(redis: Redis) -> None:
    store, _ = job_store(redis, ttl_s=100)
    await store.create(new_job(), "FROM busybox\n", deadline_s=3600)
    await redis.expire(job_key("a" * 32), 50)
    before = await store.get("a" * 32)
    job = await store.update("a" * 32, lambda j: setattr(j, "status", JobStatus.BUILDING))
    assert job is not None and job.status == JobStatus.BUILDING
    assert before is not None and job.updated_at > before.updated_at
    assert 45 <= await redis.ttl(job_key("a" * 32)) <= 50
    with pytest.raises(StaleUpdate):
        await store.update("a" * 32, lambda j: setattr(j, "status", JobStatus.SCANNING))

    def fail(j: Job) -> None:
        j.status = JobStatus.FAILED
        j.error = ErrorInfo(code="build_failed", message="x")

    ended = await store.update("a" * 32, fail)
    assert ended is not None and ended.finished_at == ended.updated_at
    with pytest.raises(StaleUpdate):
        await store.update("a" * 32, lambda j: setattr(j, "status", JobStatus.SUCCEEDED))
    stored = await store.get("a" * 32)
    assert stored is not None and stored.status == JobStatus.FAILED


async def test_concurrent_updates_are_not_lost(redis: Redis) -> None:
    store, _ = job_store(redis, ttl_s=100)
    await store.create(new_job(), "FROM busybox\n", deadline_s=3600)

    def add_line(n: int):  # type: ignore[no-untyped-def]
        def change(job: Job) -> None:
            job.dockerfile_bytes += n

        return change

    await asyncio.gather(*(store.update("a" * 32, add_line(1)) for _ in range(20)))
    stored = await store.get("a" * 32)
    assert stored is not None and stored.dockerfile_bytes == 30


async def test_update_of_expired_job_returns_none(redis: Redis) -> None:
    assert await job_store(redis, ttl_s=100)[0].update("b" * 32, lambda j: None) is None


async def test_job_record_expires_after_its_ttl(instances: Instances, redis_port: int) -> None:
    short = await instances.get(job_ttl_s=3)
    response = await short.submit('FROM busybox:latest\nUSER 1000\nCMD ["true"]\n')
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert (await short.client.get(f"/v1/jobs/{job_id}")).status_code == 200
    started = time.monotonic()
    while (await short.client.get(f"/v1/jobs/{job_id}")).status_code == 200:
        assert time.monotonic() - started < 10, "the job record outlived its TTL"
        await asyncio.sleep(0.2)
    gone = await short.client.get(f"/v1/jobs/{job_id}")
    assert gone.status_code == 404 and gone.json()["code"] == "job_not_found"
    database = int(short.settings.redis_url.rsplit("/", 1)[1])  # type: ignore[union-attr]
    client = Redis(host="127.0.0.1", port=redis_port, db=database)
    try:
        assert await client.exists(job_key(job_id), dockerfile_key(job_id)) == 0
    finally:
        await client.aclose()
