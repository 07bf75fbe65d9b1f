"""Everything dockguard connects to, built in one place from the settings (never at import time)
and shared by the API and the worker."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import posixpath
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiodocker
import aiohttp
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from dockguard import tracing
from dockguard.models import ScannerLimits
from dockguard.ports import DockerfileStore, JobLogs, JobStore, Sandbox, Scanner
from dockguard.redis_url import SentinelUrl, ServerUrl, parse_redis_url
from dockguard.sandbox import EngineSandbox, connect
from dockguard.sandbox.egress import Egress, host_allowlist, parse_allowlist
from dockguard.scanning import ContainerTrivy, LocalTrivy, TrivyBackend, TrivyScanner, find_trivy
from dockguard.settings import Settings
from dockguard.store import RedisDockerfileStore, RedisJobStore
from dockguard.store.dockerfiles import cipher
from dockguard.store.events import JobEvents
from dockguard.store.keys import QUEUE_NAME
from dockguard.store.logs import RedisJobLogs
from dockguard.store.scan_cache import ScanCache

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Redis)

_REDIS_CONNECT_TIMEOUT_S = 5
_REDIS_START_TRIES = 4  # at start, a second apart: as arq's own pool (`conn_retries`)
_SENTINEL_TIMEOUT_S = 5  # each question to a Sentinel, connecting and reading
_DOCKERFILE_REDIS_TIMEOUT_S = 10


def serialize(payload: dict[str, Any]) -> bytes:
    """arq payloads as JSON, never pickle: a queue entry can then never execute code."""
    return json.dumps(payload).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(raw)
    return payload


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = _REDIS_CONNECT_TIMEOUT_S
    settings.conn_retries = _REDIS_START_TRIES - 1
    return settings


class FailoverConnection(SentinelManagedConnection):
    """A connection to the Sentinels' master that lets go of a master which can no longer take
    writes: READONLY (it was demoted: redis-py's own handling) and NOREPLICAS (its replica left
    it, under `min-replicas-to-write`: a failover is promoting that replica, and a write here
    would be lost). Both come out as a ConnectionError, which every Redis retry path waits out
    (or the API answers 503), and the next connection asks the Sentinels for the master again."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not (str(exc).startswith("NOREPLICAS") and self.connection_pool.is_master):
                raise
            await self.disconnect()
            raise RedisConnectionError("the master lost its replicas (a failover?)") from exc


def sentinel_master(
    target: SentinelUrl, redis_class: type[R], *, read_timeout_s: float | None = None
) -> R:
    """A client of the master the Sentinels name, asked again on each new connection;
    `read_timeout_s` is the master's, every question to a Sentinel has its own."""
    sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        target.sentinels,
        sentinel_kwargs={
            "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
            "socket_timeout": _SENTINEL_TIMEOUT_S,
        },
    )
    client: R = sentinels.master_for(
        target.master,
        redis_class=redis_class,
        connection_class=FailoverConnection,
        db=target.db,
        username=target.username,
        password=target.password,
        socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        socket_timeout=read_timeout_s,
    )
    return client


async def close_redis(client: Redis) -> None:
    """Close `client` and, for a Sentinel master, its connections to the Sentinels."""
    await client.aclose()
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


async def _first_ping(client: Redis, tries: int) -> None:
    """Up to `tries` PINGs a second apart; the client is closed if none is answered."""
    for tried in range(1, tries + 1):
        try:
            await client.ping()
            return
        except (RedisError, OSError) as exc:
            if tried == tries:
                await close_redis(client)
                raise
            log.warning("redis not reachable yet", extra={"why": repr(exc)[:300], "retry_in_s": 1})
        await asyncio.sleep(1)


async def open_queue_redis(url: str) -> ArqRedis:
    """The main Redis (arq's queue, the jobs, everything else), checked at once. Like arq's own
    pool, it sets no read timeout: the API's job-end subscription (store/events.py) idles on
    it, and each caller bounds its own waits."""
    target = parse_redis_url(url)
    if isinstance(target, ServerUrl):
        return await create_pool(
            redis_settings(target.url),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=QUEUE_NAME,
        )
    redis = sentinel_master(target, ArqRedis)
    # What arq's `create_pool` sets on its own pool; it has no way to add timeouts to a
    # Sentinel one.
    redis.job_serializer = serialize
    redis.job_deserializer = deserialize
    redis.default_queue_name = QUEUE_NAME
    await _first_ping(redis, _REDIS_START_TRIES)
    return redis


def trivy_backend(
    settings: Settings, docker: aiodocker.Docker, limits: ScannerLimits
) -> TrivyBackend:
    if settings.scanner_backend == "local":
        return LocalTrivy(find_trivy(settings.trivy_binary), settings.scanner_cache_dir)
    if settings.trivy_image is None:
        raise ValueError("DOCKGUARD_SCANNER_BACKEND=container needs DOCKGUARD_TRIVY_IMAGE")
    return ContainerTrivy(
        docker, settings.trivy_image, settings.scanner_cache_dir, limits, runtime=settings.runtime
    )


def trivy_scanner(settings: Settings, docker: aiodocker.Docker, cache: ScanCache) -> TrivyScanner:
    limits = ScannerLimits.from_settings(settings)
    return TrivyScanner(trivy_backend(settings, docker, limits), settings, docker, cache, limits)


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
    target = parse_redis_url(url)
    client: Redis
    if isinstance(target, ServerUrl):
        client = Redis.from_url(
            target.url,
            socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=_DOCKERFILE_REDIS_TIMEOUT_S,
        )
    else:
        client = sentinel_master(target, Redis, read_timeout_s=_DOCKERFILE_REDIS_TIMEOUT_S)
    await _first_ping(client, tries=1)
    return client


class RuntimeUnavailable(ValueError):
    """DOCKGUARD_RUNTIME names a runtime the engine does not know, or one every run would fail
    under with these settings: nothing could run."""


# gVisor's own threads (its kernel's, and on the ptrace platform a host process per address
# space) count in the run's pids limit: at 64 a shell fails to fork after a few subshells
# (tests/e2e/test_adversarial.py runs its attacks under runsc at this floor).
GVISOR_MIN_RUN_PIDS = 128


def is_gvisor(runtime: str, entry: object) -> bool:
    """Whether the engine's runtime `runtime` (its `docker info` Runtimes entry) is gVisor's."""
    path = entry.get("path") if isinstance(entry, dict) else None
    return posixpath.basename(str(path or runtime)).startswith("runsc")


async def check_runtime(
    runtime: str | None, docker: aiodocker.Docker, *, run_pids: int, warn: bool = True
) -> None:
    """At start: the engine must list DOCKGUARD_RUNTIME, else every run would fail; and when runs
    are under gVisor (DOCKGUARD_RUNTIME, or unset, the engine's default) DOCKGUARD_RUN_PIDS must
    leave room for gVisor's own threads. An engine that does not answer now is not a reason to
    refuse (jobs fail `engine_unavailable` until it is back); one that answers without the
    runtime is. `warn`: log what is allowed but worth knowing (the caller that starts the
    service does; a pre-check before it does not, so that nothing is said twice)."""
    try:
        info = await docker.system.info()
    except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        if warn and runtime is not None:
            log.warning("runtime not checked: the engine did not answer", extra={"why": repr(exc)})
        return
    runtimes = info.get("Runtimes") or {}
    default = str(info.get("DefaultRuntime") or "runc")
    if runtime is not None and runtime not in runtimes:
        raise RuntimeUnavailable(
            f"DOCKGUARD_RUNTIME={runtime} is not a runtime of the Docker Engine (it has: "
            f"{', '.join(sorted(runtimes)) or 'none'}); register it (scripts/gvisor.sh for runsc) "
            "or unset it"
        )
    runs = runtime or default
    runs_gvisor = is_gvisor(runs, runtimes.get(runs))
    if runs_gvisor and run_pids < GVISOR_MIN_RUN_PIDS:
        which = (
            f"DOCKGUARD_RUNTIME={runtime}" if runtime else f"the engine's default runtime, {runs}"
        )
        raise RuntimeUnavailable(
            f"DOCKGUARD_RUN_PIDS={run_pids} is too few under gVisor ({which}): its own threads "
            f"count in the limit, and a run's shell would soon fail to fork; set it to "
            f"{GVISOR_MIN_RUN_PIDS} or more"
        )
    if warn and runs_gvisor and not is_gvisor(default, runtimes.get(default)):
        log.warning(
            f"DOCKGUARD_RUNTIME={runs} puts runs under gVisor, but builds take the engine's "
            f"default runtime, {default}: RUN steps, as root, share the host's kernel. An engine "
            "whose default runtime is runsc puts them under gVisor too (scripts/gvisor.sh "
            "--build-engine; README, gVisor: a second wall)",
            extra={"runtime": runs, "build_runtime": default},
        )
    if runtime is not None:
        log.info("runtime checked", extra={"runtime": runtime})


@dataclass
class Services:
    """The one composition root. The pipeline and the sweeper reach the world only through the
    Protocol-typed fields (see ports.py), so the unit tests can hand in fakes; the API uses
    `redis` too, for the arq queue."""

    settings: Settings
    redis: ArqRedis
    store: JobStore
    dockerfiles: DockerfileStore
    scanner: Scanner
    sandbox: Sandbox
    events: JobEvents | None = None  # the API's `?wait=` (store/events.py); not the worker's
    logs: JobLogs | None = None  # the jobs' live logs (store/logs.py); None: not kept
    closers: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    # Shielded work (a job's cleanup and verdict) still going: a stopping worker awaits it.
    finishing: set[asyncio.Task[Any]] = field(default_factory=set)

    async def shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`, run to its end even when the caller is cancelled (a worker stopping mid-job):
        `drain` awaits what is still running before the process goes."""
        task = asyncio.ensure_future(work)
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)
        return await asyncio.shield(task)

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the shielded work still running."""
        if self.finishing:
            log.info("waiting for jobs' cleanup", extra={"tasks": len(self.finishing)})
            await asyncio.wait(set(self.finishing), timeout=timeout_s)

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        if settings.redis_url is None:
            raise ValueError("DOCKGUARD_REDIS_URL must be set by the time services open")
        tracing.configure(settings.otel_endpoint)
        redis = await open_queue_redis(settings.redis_url)
        closers: list[Callable[[], Awaitable[object]]] = [functools.partial(close_redis, redis)]
        dockerfile_redis: Redis = redis
        if settings.dockerfile_redis_url is not None:
            dockerfile_redis = await open_dockerfile_redis(settings.dockerfile_redis_url)
            closers.append(functools.partial(close_redis, dockerfile_redis))
        dockerfiles = RedisDockerfileStore(
            dockerfile_redis,
            settings.job_ttl_s,
            fernet=cipher(settings.encryption_key),
            keep_s=settings.keep_dockerfile_s,
        )
        docker = connect(settings.docker_url, settings.docker_timeout_s)
        closers.insert(0, docker.close)
        try:
            await check_runtime(settings.runtime, docker, run_pids=settings.run_pids)
        except RuntimeUnavailable:
            for close in closers:
                await close()
            raise
        sandbox = EngineSandbox(
            docker,
            log_tail_lines=settings.log_tail_lines,
            data_holder_image=settings.run_data_holder_image,
            pull_allow=tuple(settings.build_pull_allow),
            egress=await build_egress(settings, docker),
        )
        return cls(
            settings=settings,
            redis=redis,
            store=RedisJobStore(
                redis, settings.job_ttl_s, dockerfiles, log_max_lines=settings.log_max_lines
            ),
            dockerfiles=dockerfiles,
            scanner=trivy_scanner(settings, docker, ScanCache(redis, settings.scan_cache_ttl_s)),
            sandbox=sandbox,
            events=JobEvents(redis),
            logs=RedisJobLogs(
                redis,
                max_lines=settings.log_max_lines,
                line_max_chars=settings.log_line_max_chars,
            ),
            closers=closers,
        )

    async def close(self) -> None:
        if self.events is not None:
            await self.events.close()
        for close in self.closers:
            await close()
