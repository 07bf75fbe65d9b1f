"""The webhooks still to send: a sorted set (`keys.CALLBACKS`) of job ids, each scored with the
Unix time its next attempt is due. The job store adds a job to it in the very transaction that
ends the job (so no ending, however it happens, loses its webhook, even if the process dies
right after); the worker's sender (jobs/callbacks.py) claims due jobs, and removes each once it
was delivered or given up on. A claim moves the job's time one lease ahead, so a sender that
dies mid-attempt leaves the job to be claimed again when the lease ends: at-least-once."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from dockguard.store.keys import CALLBACKS

# Due entries (score ≤ ARGV[1]), at most ARGV[3] of them, each moved to ARGV[2]: one script, so
# two senders never claim the same job.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return due
"""


def schedule(pipe: Pipeline, job_id: str) -> None:
    """Queue the job's first attempt, now, on the transaction that ends it (once: NX)."""
    pipe.zadd(CALLBACKS, {job_id: time.time()}, nx=True)


class CallbackOutbox:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def claim(self, *, lease_s: float, limit: int, now: float | None = None) -> list[str]:
        """Ids of the jobs whose attempt is due, each held for `lease_s`."""
        now = time.time() if now is None else now
        args = (str(now), str(now + lease_s), str(limit))
        ids = await cast("Awaitable[list[bytes]]", self._redis.eval(_CLAIM, 1, CALLBACKS, *args))
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def retry_at(self, job_id: str, when: float) -> None:
        await self._redis.zadd(CALLBACKS, {job_id: when}, xx=True)

    async def done(self, job_id: str) -> None:
        await self._redis.zrem(CALLBACKS, job_id)
