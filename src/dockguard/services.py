"""Everything dockguard connects to, built in one place from the settings (never at import time)
and shared by the API and the worker."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiodocker
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import Redis

from dockguard.sandbox import Sandbox, connect
from dockguard.sandbox.egress import Egress, host_allowlist, parse_allowlist
from dockguard.scanning import ContainerTrivy, LocalTrivy, Scanner, TrivyBackend, find_trivy
from dockguard.settings import Settings
from dockguard.store import JobStore
from dockguard.store.dockerfiles import DockerfileStore, cipher
from dockguard.store.keys import QUEUE_NAME
from dockguard.store.scan_cache import ScanCache

log = logging.getLogger(__name__)


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
    """The longest a job may take: DOCKGUARD_JOB_TIMEOUT_S, or by default longer than all of its
    steps' own timeouts together, so that a step's timeout fires first (two scans, the build,
    the run, and slack)."""
    s = settings
    if s.job_timeout_s:
        return s.job_timeout_s
    return 3 * s.scanner_timeout_s + 2 * s.build_timeout_s + s.run_timeout_s + 300


ARQ_MARGIN_S = 60  # arq's own job timeout: a backstop behind the pipeline's


RUNNING_MARGIN_S = 120  # past the job timeout: arq's own timeout and our cleanup come first


def running_deadline_s(settings: Settings) -> float:
    """How long after a worker takes a job it must have ended, or the sweeper fails it."""
    return job_timeout_s(settings) + RUNNING_MARGIN_S


def queued_deadline_s(settings: Settings) -> float:
    """How long after its submission a job must have ended: it waits at most the queue timeout."""
    return settings.queue_timeout_s + running_deadline_s(settings)


def trivy_backend(settings: Settings, docker: aiodocker.Docker) -> TrivyBackend:
    if settings.scanner_backend == "local":
        return LocalTrivy(find_trivy(settings.trivy_binary), settings.scanner_cache_dir)
    if settings.trivy_image is None:
        raise ValueError("DOCKGUARD_SCANNER_BACKEND=container needs DOCKGUARD_TRIVY_IMAGE")
    return ContainerTrivy(
        docker, settings.trivy_image, settings.scanner_cache_dir, settings.scanner_memory_mb
    )


async def build_egress(settings: Settings, docker: aiodocker.Docker) -> Egress | None:
    """The build network's proxy, for `DOCKGUARD_BUILD_NETWORK=egress`; its allowlist is read
    here, at start: the setting, or this machine's own apt and pip sources."""
    if settings.build_network == "bridge":
        log.warning(
            "DOCKGUARD_BUILD_NETWORK=bridge: RUN steps share the engine's default bridge and can "
            "reach the engine host, other jobs' builds and any address the host can; use egress "
            "or none unless every Dockerfile is trusted"
        )
    if settings.build_network != "egress":
        return None
    allow = parse_allowlist(settings.build_egress_allow) or host_allowlist()
    source = "DOCKGUARD_BUILD_EGRESS_ALLOW" if settings.build_egress_allow else "apt and pip"
    log.info("build egress allowlist", extra={"hosts": ",".join(allow), "source": source})
    egress = Egress(docker, allow, settings.build_egress_proxy_image)
    if problem := await egress.problem():
        log.error(
            "builds will fail with internal_error until this is fixed",
            extra={"why": f"build network egress: {problem}"},
        )
    return egress


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
            sandbox=Sandbox(
                docker, settings.log_tail_lines, egress=await build_egress(settings, docker)
            ),
            dockerfile_redis=dockerfile_redis,
        )

    async def close(self) -> None:
        await self.sandbox.docker.close()
        await self.redis.aclose()
        if self.dockerfile_redis is not None:
            await self.dockerfile_redis.aclose()
