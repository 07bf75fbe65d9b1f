"""Everything dockguard connects to, built in one place from the settings (never at import time)
and shared by the API and the worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiodocker
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from dockguard.sandbox import Sandbox, connect
from dockguard.scanning import ContainerTrivy, LocalTrivy, Scanner, TrivyBackend, find_trivy
from dockguard.settings import Settings
from dockguard.store import JobStore
from dockguard.store.scan_cache import ScanCache

QUEUE_NAME = "dockguard:queue"


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


@dataclass
class Services:
    settings: Settings
    redis: ArqRedis
    store: JobStore
    scanner: Scanner
    sandbox: Sandbox

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
            store=JobStore(redis, settings.job_ttl_s),
            scanner=scanner,
            sandbox=Sandbox(docker, settings.log_tail_lines),
        )

    async def close(self) -> None:
        await self.sandbox.docker.close()
        await self.redis.aclose()
