"""Job records in Redis. A record is written by `create`, changed only by `update` (atomic, and
a job's status only moves forward), and removed by `delete` (only when the API could not queue
the job, or another submission with its Idempotency-Key came first) or by its TTL.
Beside the records, a sorted set holds the deadline of every unfinished job, so that the
reaper can fail a job that no worker finished in time (`worker_lost`): `create` and
`set_deadline` write it, `update` to a terminal status and `forget_deadline` clear it. An
`update` to a terminal status also publishes the job's id (see events.py), and every status
change is an entry of the job's live log, in the same transaction (see logs.py), as is, for a job
with a webhook, the webhook's first attempt when the job ends (see callbacks.py).
A second sorted set indexes every job by creation time for `list_jobs` (see listing.py): `create`
adds to it (and trims what is older than the TTL), `delete` and listing remove from it.
Each attempt at a job (a worker taking it, again after a crash or a lost lease) `claim`s it with
a fresh token; an `update` given its attempt's token fails with `Superseded` once a later attempt
has claimed the job, so an attempt that lost its lease (a paused worker) cannot write over its
successor, nor end the job twice. A claim also takes the job's lease, which its attempt renews
while it runs: while another attempt's lease runs, `claim` refuses (a duplicate delivery of a job
that is alive elsewhere must not start it again); once it lapses (that attempt's worker died or
stalled), the job can be claimed again.
(Every Redis key is built in keys.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from dockguard.models import Job, JobStatus, StatusEvent, utcnow
from dockguard.store import callbacks, listing, logs
from dockguard.store import queue as queue_scripts
from dockguard.store.keys import (
    DEADLINES,
    JOB_ENDED_CHANNEL,
    JOBS,
    attempt_key,
    job_key,
    lease_key,
    logs_key,
)
from dockguard.store.queue import QueueEntry

if TYPE_CHECKING:  # the store layer does not load the sandbox (and aiodocker) at run time
    from dockguard.ports import DockerfileStore


# KEYS: the lease, the attempt; ARGV: the new token, the lease in ms, the job TTL in s.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
    return 1
end
return 0
"""
# KEYS: the lease, the attempt; ARGV: the token, the lease in ms (0: let it go). A lease that
# lapsed (Redis was away) is taken again while no other attempt has claimed the job.
_RENEW = """
local lease = redis.call('GET', KEYS[1])
if ARGV[2] == '0' then
    if lease == ARGV[1] then
        return redis.call('DEL', KEYS[1])
    end
    return 0
end
if lease == ARGV[1] or (not lease and redis.call('GET', KEYS[2]) == ARGV[1]) then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""


# A new job's record (with its TTL), its log stream's first entry (and the same TTL), its deadline
# and its entry in the index. KEYS: the record, the stream, DEADLINES, JOBS; ARGV: the record's
# JSON, the TTL in s, the stream's max length, the entry's data, the job id, the deadline, the
# creation time in µs, the index's trimming bound. `{n}`: how many KEYS the queue's part of the
# script (queue.py) takes before these (and 5 ARGV for each 2 KEYS), 0 when there is none.
_CREATE = """
local k, a = {n}, {n} / 2 * 5
redis.call('SET', KEYS[k + 1], ARGV[a + 1], 'EX', ARGV[a + 2])
redis.call('XADD', KEYS[k + 2], 'MAXLEN', '~', ARGV[a + 3], '*',
           'kind', 'status', 'data', ARGV[a + 4])
redis.call('EXPIRE', KEYS[k + 2], ARGV[a + 2])
redis.call('ZADD', KEYS[k + 3], ARGV[a + 6], ARGV[a + 5])
redis.call('ZADD', KEYS[k + 4], ARGV[a + 7], ARGV[a + 5])
redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', ARGV[a + 8])
"""


class StaleUpdate(Exception):
    """The update would move a job's status backwards (e.g. a retried step after the job ended)."""


class Superseded(StaleUpdate):
    """A later attempt has claimed the job: this one must stop, and leave the job's objects and
    record to it."""


class RedisJobStore:
    """Job records (`ports.JobStore`). `dockerfiles` (required: it decides whether Dockerfiles
    are encrypted, and where they live) is written with each new job and removed with it; every
    other read of a Dockerfile goes through `Services.dockerfiles`, the same object."""

    def __init__(
        self,
        redis: Redis,
        ttl_s: int,
        dockerfiles: DockerfileStore,
        *,
        log_max_lines: int = logs.DEFAULT_MAX_LINES,
    ) -> None:
        self._redis = redis
        self._log_max_lines = log_max_lines
        self._ttl_s = ttl_s
        self._dockerfiles = dockerfiles
        self._create = redis.register_script(_CREATE.replace("{n}", "0") + "return 1")
        self._create_queued = redis.register_script(
            queue_scripts.RESERVE + _CREATE.replace("{n}", "2") + queue_scripts.ENQUEUE
        )
        self._enqueue = redis.register_script(queue_scripts.RESERVE + queue_scripts.ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)

    async def create(
        self, job: Job, dockerfile: str, *, deadline_s: float, queue: QueueEntry | None = None
    ) -> bool:
        """Store the Dockerfile, then the job, both expiring after the job TTL, and its deadline
        (`deadline_s` from now); with `queue`, queue the job in the same script, unless the queue
        is full: then nothing is kept and this returns False.

        They may live in two Redis servers, so there is no transaction: the Dockerfile is written
        first, so a stored job always has one, and removed again if the job cannot be written."""
        await self._dockerfiles.put(job.id, dockerfile)
        created_us = listing.created_us(job.created_at)
        keys = [job_key(job.id), logs_key(job.id), DEADLINES, JOBS]
        args: list[EncodableT] = [
            job.model_dump_json(),
            self._ttl_s,
            self._log_max_lines,
            logs.entry_data({"status": job.status.value}),
            job.id,
            time.time() + deadline_s,
            created_us,
            # Entries older than the TTL (and a minute) point at expired records.
            f"({created_us - (self._ttl_s + 60) * 10**6}",
        ]
        script = self._create if queue is None else self._create_queued
        if queue is not None:
            keys, args = queue.keys + keys, queue.args + args
        stored: bool | None = None  # None: not known
        try:
            stored = bool(await script(keys=keys, args=args))
        except (ResponseError, RedisConnectionError, RedisTimeoutError) as exc:
            if isinstance(exc, ResponseError) or _never_sent(exc):  # certainly not stored
                stored = False
            raise
        finally:
            # Removed only when the job is certainly not stored. A broken connection or a cancel
            # while the script is on its way leaves it unknown: the Dockerfile is kept (a job
            # stored without it could only fail), and expires with the TTL if the job is not.
            if stored is False:
                with suppress(RedisError):
                    await self._dockerfiles.delete(job.id)
        return stored

    async def enqueue(self, queue: QueueEntry) -> bool:
        """Queue a stored job (`create` without `queue`), unless the queue is full: False."""
        return bool(await self._enqueue(keys=queue.keys, args=queue.args))

    async def get_json(self, job_id: str) -> bytes | None:
        """The job as stored: the API's JSON for it (`Job.model_dump_json`), not read again."""
        raw: bytes | None = await self._redis.get(job_key(job_id))
        return raw

    async def get(self, job_id: str) -> Job | None:
        raw = await self._redis.get(job_key(job_id))
        return None if raw is None else Job.model_validate_json(raw)

    async def delete(self, job_id: str) -> None:
        await self._redis.delete(
            job_key(job_id), logs_key(job_id), attempt_key(job_id), lease_key(job_id)
        )
        await self._redis.zrem(DEADLINES, job_id)
        await self._redis.zrem(JOBS, job_id)
        await self._dockerfiles.delete(job_id)

    async def list_jobs(
        self, *, status: JobStatus | None, limit: int, after: listing.Position | None
    ) -> listing.Page:
        """Up to `limit` jobs created before `after` (None: the newest), newest first."""
        return await listing.page(self._redis, status=status, limit=limit, after=after)

    async def set_deadline(self, job_id: str, deadline_s: float) -> None:
        """A worker took the job: it must end within `deadline_s` from now."""
        await self._redis.zadd(DEADLINES, {job_id: time.time() + deadline_s}, xx=True)

    async def overdue(self, now: float, limit: int = 100) -> list[str]:
        """Ids of unfinished jobs whose deadline has passed, oldest first."""
        ids = await self._redis.zrangebyscore(DEADLINES, "-inf", now, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def forget_deadline(self, job_id: str) -> None:
        await self._redis.zrem(DEADLINES, job_id)

    async def claim(self, job_id: str, *, lease_s: float) -> str | None:
        """A new attempt at the job holds it from now on, and its lease for `lease_s` (see
        `renew`); returns its token (for `update`), or None while another attempt's lease runs."""
        token = uuid.uuid4().hex
        keys = [lease_key(job_id), attempt_key(job_id)]
        claimed = await self._claim(keys=keys, args=[token, _ms(lease_s), self._ttl_s])
        return token if claimed else None

    async def renew(self, job_id: str, attempt: str, lease_s: float) -> bool:
        """Extend `attempt`'s lease to `lease_s` from now (0: end it, the attempt is over);
        False when another attempt has claimed the job since."""
        keys = [lease_key(job_id), attempt_key(job_id)]
        return bool(await self._renew(keys=keys, args=[attempt, _ms(lease_s)]))

    async def holds(self, job_id: str, attempt: str) -> bool:
        """Whether `attempt` is still the job's latest attempt."""
        held = await self._redis.get(attempt_key(job_id))
        return held is None or held.decode() == attempt

    async def update(
        self, job_id: str, change: Callable[[Job], None], *, attempt: str | None = None
    ) -> Job | None:
        """Apply `change` to the stored job atomically (optimistic WATCH/MULTI), keeping its TTL.

        Returns the updated job, or None when the job has expired. Raises StaleUpdate, leaving the
        record as it was, when the change would move the status backwards or out of a terminal
        status: a step that arq retries after the job ended must not resurrect it; and, given
        `attempt`, Superseded when a later attempt has claimed the job.
        """
        key = job_key(job_id)
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key, attempt_key(job_id))
                    if attempt is not None:
                        held = await pipe.get(attempt_key(job_id))
                        if held is not None and held.decode() != attempt:
                            raise Superseded(f"a later attempt holds job {job_id}")
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    before = Job.model_validate_json(raw)
                    job = changed(before, change)
                    record = job.model_dump_json()  # may raise: nothing is written then
                    moved = job.status != before.status
                    # Only a status change writes to the live log, which needs the record's TTL.
                    ttl_ms = await pipe.pttl(key) if moved else 0
                    pipe.multi()
                    pipe.set(key, record, keepttl=True)
                    if moved:  # the live log's status entry (logs.py)
                        logs.status_changed(
                            pipe,
                            job_id,
                            job.status.value,
                            terminal=job.status.terminal,
                            ttl_ms=ttl_ms,
                            max_lines=self._log_max_lines,
                        )
                    if job.status.terminal:
                        pipe.zrem(DEADLINES, job_id)
                        pipe.publish(JOB_ENDED_CHANNEL, job_id)  # wakes `?wait=` (events.py)
                        if moved and job.callback is not None:  # its webhook (callbacks.py)
                            callbacks.schedule(pipe, job_id)
                    await pipe.execute()
                    return job
                except WatchError:
                    continue


def _never_sent(exc: RedisError) -> bool:
    """Whether the connection failed before anything was sent: redis-py's errors of a connect
    ("Error 111 connecting to …", "Timeout connecting to server"), or no master to send to."""
    return isinstance(exc, MasterNotFoundError) or "connecting to" in str(exc)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)


def changed(before: Job, change: Callable[[Job], None]) -> Job:
    """`before` with `change` applied to a copy and the timestamps set; raises StaleUpdate when
    the change would move the status backwards or out of a terminal status. (Pure: shared with
    the unit tests' in-memory store, so both keep one rule.)"""
    job = before.model_copy(deep=True)
    change(job)
    check_transition(before, job)
    job.updated_at = now = utcnow()
    if job.status != before.status:  # the timeline: the last status lasted until now
        if job.events:
            last = job.events[-1]
            last.duration_s = round(max((now - last.at).total_seconds(), 0.0), 3)
        job.events.append(StatusEvent(status=job.status, at=now))
    if job.status.terminal and job.finished_at is None:
        job.finished_at = job.updated_at
    return job


def check_transition(before: Job, after: Job) -> None:
    if before.status.terminal and after.status != before.status:
        raise StaleUpdate(f"job {before.id} already ended as {before.status}")
    if after.status.rank < before.status.rank:
        raise StaleUpdate(f"job {before.id} cannot move from {before.status} to {after.status}")
