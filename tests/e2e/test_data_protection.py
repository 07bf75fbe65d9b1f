"""The Dockerfile at rest: encrypted with rotating keys, optionally in its own Redis, and gone
when its job ends unless kept on purpose — against the real Redis, and through the API."""

from __future__ import annotations

import socket
import uuid

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dockguard.errors import ErrorCode
from dockguard.jobs.pipeline import run_job
from dockguard.models import Job
from dockguard.store import RedisDockerfileStore, RedisJobStore
from dockguard.store.dockerfiles import DockerfileUnreadable, cipher
from dockguard.store.keys import dockerfile_key, job_key
from tests.e2e.conftest import DOCKERFILE_DB, Instances
from tests.e2e.test_pipeline import writes

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
TEXT = "FROM busybox:latest\nUSER 1000\nRUN echo a-secret-token-of-the-client\n"
DOCKERFILE = writes('{"perf": 0.5}')


def store(redis: Redis, keys: str | None = None, keep_s: int = 0) -> RedisDockerfileStore:
    return RedisDockerfileStore(
        redis, 100, keep_s=keep_s, fernet=cipher(None if keys is None else SecretStr(keys))
    )


def client_for(url: str | None) -> Redis:
    assert url is not None
    client: Redis = Redis.from_url(url)  # redis-py leaves from_url's return type out
    return client


async def test_without_a_key_the_value_is_marked_plain(redis: Redis) -> None:
    await store(redis).put("a", TEXT)
    assert await redis.get(dockerfile_key("a")) == b"plain:" + TEXT.encode()
    assert await store(redis).get("a") == TEXT
    assert 95 <= await redis.ttl(dockerfile_key("a")) <= 100


async def test_with_a_key_the_stored_value_is_ciphertext(redis: Redis) -> None:
    await store(redis, KEY_A).put("a", TEXT)
    raw = await redis.get(dockerfile_key("a"))
    assert raw.startswith(b"fernet:")
    assert b"a-secret-token" not in raw and b"FROM" not in raw
    assert await store(redis, KEY_A).get("a") == TEXT


async def test_rotation_new_key_first_old_keys_still_read(redis: Redis) -> None:
    await store(redis, KEY_A).put("old", TEXT)
    rotated = store(redis, f"{KEY_B},{KEY_A}")
    assert await rotated.get("old") == TEXT
    await rotated.put("new", TEXT)
    assert await store(redis, KEY_B).get("new") == TEXT  # written with B, the first key
    with pytest.raises(DockerfileUnreadable):
        await store(redis, KEY_A).get("new")


async def test_a_value_whose_key_was_dropped_is_never_returned(redis: Redis) -> None:
    await store(redis, KEY_A).put("a", TEXT)
    with pytest.raises(DockerfileUnreadable) as dropped:
        await store(redis, KEY_B).get("a")
    assert dropped.value.code == ErrorCode.INTERNAL_ERROR
    assert "could not be decrypted" in dropped.value.message
    assert "none of the keys" in dropped.value.message
    with pytest.raises(DockerfileUnreadable) as unset:
        await store(redis).get("a")
    assert "DOCKGUARD_ENCRYPTION_KEY is not set" in unset.value.message


async def test_a_plain_value_stays_readable_once_encryption_is_on(redis: Redis) -> None:
    # Jobs queued before the key was configured still run.
    await store(redis).put("a", TEXT)
    assert await store(redis, KEY_A).get("a") == TEXT


async def test_release_deletes_or_keeps_for_the_configured_time(redis: Redis) -> None:
    await store(redis).put("a", TEXT)
    await store(redis).release("a")
    assert await redis.exists(dockerfile_key("a")) == 0
    await store(redis, keep_s=10).put("b", TEXT)
    await store(redis, keep_s=10).release("b")
    assert 0 < await redis.ttl(dockerfile_key("b")) <= 10


async def test_create_removes_the_dockerfile_when_the_job_cannot_be_written(
    redis: Redis,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on: the main Redis is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    jobs = RedisJobStore(down, 100, store(redis, KEY_A))
    job = Job(id="c" * 32, dockerfile_sha256="0" * 64, dockerfile_bytes=len(TEXT))
    with pytest.raises(RedisConnectionError):
        await jobs.create(job, TEXT, deadline_s=3600)
    assert await redis.exists(dockerfile_key(job.id)) == 0
    await down.aclose()


async def test_encrypted_job_succeeds_and_keeps_only_ciphertext(instances: Instances) -> None:
    dockguard = await instances.get(encryption_key=KEY_A, keep_dockerfile_s=60)
    job = await dockguard.run(DOCKERFILE)
    assert job["status"] == "succeeded", job["error"]
    client = client_for(dockguard.settings.redis_url)
    try:
        raw = await client.get(dockerfile_key(job["id"]))
        assert raw is not None and raw.startswith(b"fernet:")
        assert b"perf.json" not in raw and b"busybox" not in raw
        assert Fernet(KEY_A).decrypt(raw.removeprefix(b"fernet:")).decode() == DOCKERFILE
        assert 0 < await client.ttl(dockerfile_key(job["id"])) <= 60
    finally:
        await client.aclose()


async def test_the_dockerfile_is_deleted_when_the_job_ends(instances: Instances) -> None:
    dockguard = await instances.get()
    job = await dockguard.run(DOCKERFILE)
    assert job["status"] == "succeeded", job["error"]
    client = client_for(dockguard.settings.redis_url)
    try:
        assert await client.exists(job_key(job["id"])) == 1
        assert await client.exists(dockerfile_key(job["id"])) == 0
    finally:
        await client.aclose()


async def test_a_job_whose_key_was_dropped_fails_clearly(instances: Instances) -> None:
    dockguard = await instances.get(encryption_key=KEY_B)
    client = client_for(dockguard.settings.redis_url)
    try:
        # Written by a process that still used key A alone; this instance only knows B.
        written_with_a = RedisJobStore(client, 100, store(client, KEY_A))
        job_id = uuid.uuid4().hex
        await written_with_a.create(
            Job(id=job_id, dockerfile_sha256="0" * 64, dockerfile_bytes=len(DOCKERFILE)),
            DOCKERFILE,
            deadline_s=3600,
        )
        dockguard.submitted.append(job_id)
        assert await run_job(dockguard.services, job_id) == "failed"
        job = (await dockguard.client.get(f"/v1/jobs/{job_id}")).json()
        assert job["error"]["code"] == "internal_error"
        assert "could not be decrypted" in job["error"]["message"]
        assert job["build"] is None  # nothing of it ran
        assert await client.exists(dockerfile_key(job_id)) == 0
    finally:
        await client.aclose()


async def test_dockerfiles_in_their_own_redis(instances: Instances, redis_port: int) -> None:
    own = f"redis://127.0.0.1:{redis_port}/{DOCKERFILE_DB}"
    dockguard = await instances.get(dockerfile_redis_url=own, keep_dockerfile_s=60)
    job = await dockguard.run(DOCKERFILE)
    assert job["status"] == "succeeded", job["error"]
    main, dockerfiles = client_for(dockguard.settings.redis_url), client_for(own)
    try:
        assert await main.exists(job_key(job["id"])) == 1
        assert await main.exists(dockerfile_key(job["id"])) == 0
        assert await dockerfiles.get(dockerfile_key(job["id"])) == b"plain:" + DOCKERFILE.encode()
        assert await dockerfiles.exists(job_key(job["id"])) == 0
    finally:
        await main.aclose()
        await dockerfiles.aclose()
