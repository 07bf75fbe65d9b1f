"""Worker heartbeats: a sorted set (`keys.WORKERS`) of worker ids, each scored with the Unix
time it was last seen. Each worker beats every `BEAT_S` (jobs/worker.py); `/readyz` counts the
workers seen within `ALIVE_S`. Entries older than a day are trimmed on each beat, so a worker
that died leaves nothing behind for long."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from dockguard.store.keys import DEPLOYMENT, WORKERS

BEAT_S = 5.0
ALIVE_S = 30.0
_FORGET_S = 86400.0


class Heartbeats:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def beat(self, worker_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(WORKERS, {worker_id: now})
            pipe.zremrangebyscore(WORKERS, "-inf", now - _FORGET_S)
            await pipe.execute()

    async def alive(self, within_s: float = ALIVE_S, now: float | None = None) -> int:
        """How many workers were seen in the last `within_s` seconds."""
        now = time.time() if now is None else now
        return int(await self._redis.zcount(WORKERS, now - within_s, "+inf"))

    async def forget(self, worker_id: str) -> None:
        """A worker that stops cleanly is no longer counted at once."""
        await self._redis.zrem(WORKERS, worker_id)


async def deployment_id(redis: Redis) -> str:
    """The id of the deployment this Redis serves, made by the first worker to ask. Every Docker
    object of its jobs carries it, so a worker's watchdog judges by this Redis only the objects
    of jobs it holds (several deployments may share an engine). No TTL: a new id would make the
    objects of every running job look like another deployment's (kept, never removed)."""
    while True:
        candidate = uuid.uuid4().hex
        if await redis.set(DEPLOYMENT, candidate, nx=True):
            return candidate
        found = await redis.get(DEPLOYMENT)
        if found is not None:  # (None: removed in between, by a flush: make one again)
            return found.decode() if isinstance(found, bytes) else str(found)
