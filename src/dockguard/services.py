"""Everything dockguard connects to, built in one place from the settings (never at import time)
and shared by the API and the worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiodocker
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import Redis

from dockguard.sandbox import Sandbox, connect
from dockguard.scanning import ContainerTrivy, LocalTrivy, Scanner, TrivyBackend, find_trivy
from dockguard.settings import Settings
from dockguard.store import JobStore
from dockguard.store.dockerfiles import DockerfileStore, cipher
from dockguard.store.keys import QUEUE_NAME
from dockguard.store.scan_cache import ScanCache


def serialize(payload: dict[str, Any]) -> bytes:
    """arq payloads as JSON, never pickle: a queue entry can then never execute code."""
    return json.dumps(payload).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(raw)
    return payload


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 5
    settings.conn_retries = 3
    return settings


def job_timeout_s(settings: Settings) -> float:
    """The longest a job may take: longer than all of its steps' own timeouts together, so a
    step's timeout always fires first (two scans, two builds, the run, and slack)."""
    s = settings
    return 3 * s.scanner_timeout_s + 2 * s.build_timeout_s + s.run_timeout_s + 300


def trivy_backend(settings: Settings, docker: aiodocker.Docker) -> TrivyBackend:
    if settings.scanner_backend == "local":
        return LocalTrivy(find_trivy(settings.trivy_binary), settings.scanner_cache_dir)
    if settings.trivy_image is None:
        raise ValueError("DOCKGUARD_SCANNER_BACKEND=container needs DOCKGUARD_TRIVY_IMAGE")
    return ContainerTrivy(
        docker, settings.trivy_image, settings.scanner_cache_dir, settings.scanner_memory_mb
    )


async def open_dockerfile_redis(url: str) -> Redis:
    """The Dockerfiles' own Redis, checked at once so a wrong URL stops the start, not a job."""
    client: Redis = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    try:
        await client.ping()
    except Exception:
        await client.aclose()
        raise
    return client


@dataclass
class Services:
    settings: Settings
    redis: ArqRedis
    store: JobStore
    dockerfiles: DockerfileStore
    scanner: Scanner
    sandbox: Sandbox
    dockerfile_redis: Redis | None = None  # set when Dockerfiles have a Redis of their own

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        if settings.redis_url is None:
            raise ValueError("DOCKGUARD_REDIS_URL must be set by the time services open")
        redis = await create_pool(
            redis_settings(settings.redis_url),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=QUEUE_NAME,
        )
        dockerfile_redis: Redis | None = None
        if settings.dockerfile_redis_url is not None:
            dockerfile_redis = await open_dockerfile_redis(settings.dockerfile_redis_url)
        dockerfiles = DockerfileStore(
            redis if dockerfile_redis is None else dockerfile_redis,
            settings.job_ttl_s,
            keep_s=settings.keep_dockerfile_s,
            fernet=cipher(settings.encryption_key),
        )
        docker = connect(settings.docker_url, settings.docker_timeout_s)
        scanner = Scanner(
            trivy_backend(settings, docker),
            settings,
            docker,
            ScanCache(redis, settings.scan_cache_ttl_s),
        )
        return cls(
            settings=settings,
            redis=redis,
            store=JobStore(redis, settings.job_ttl_s, dockerfiles),
            dockerfiles=dockerfiles,
            scanner=scanner,
            sandbox=Sandbox(docker, settings.log_tail_lines),
            dockerfile_redis=dockerfile_redis,
        )

    async def close(self) -> None:
        await self.sandbox.docker.close()
        await self.redis.aclose()
        if self.dockerfile_redis is not None:
            await self.dockerfile_redis.aclose()
