"""Waiting for a job to end without polling Redis: `RedisJobStore.update` publishes the id of a
job that reaches a terminal status on one channel (in the same transaction as the write), and
each API process keeps ONE subscription to it, however many requests wait (`?wait=`). A waiter
registers before it reads the job, so an end published after the read wakes it; while the
subscription is down (Redis restarting) waiters are woken when it is back, to read again, and
otherwise they simply answer when their wait is over. The same subscription carries the ids of
jobs whose live log grew (logs.py), which wakes the readers of `GET /v1/jobs/{id}/logs`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dockguard.models import Job
from dockguard.store.keys import JOB_ENDED_CHANNEL, LOG_ADDED_CHANNEL

log = logging.getLogger(__name__)

_RECONNECT_DELAY_S = 1.0
_SUBSCRIBE_WAIT_S = 2.0  # how long a waiter waits for the subscription before reading anyway


class JobEvents:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._log_waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reads: dict[str, asyncio.Future[Job | None]] = {}

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    async def wait_ended(
        self, job_id: str, timeout_s: float, read: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """`read()` again and again, each time the job may have ended, until it has ended, is
        gone, or `timeout_s` has passed; the last read."""
        self._start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(timeout_s, _SUBSCRIBE_WAIT_S)):
                await self._subscribed.wait()
        while True:
            event = asyncio.Event()
            self._waiters[job_id].add(event)
            try:
                job = await self._read_once(job_id, read)
                remaining = deadline - loop.time()
                if job is None or job.status.terminal or remaining <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await event.wait()
            finally:
                self._forget(job_id, event)

    @contextlib.contextmanager
    def log_added(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when the job's live log may have grown (logs.py publishes each write),
        for the duration of the block. Register first, then read, then wait: an entry added
        after the read sets it."""
        self._start()
        event = asyncio.Event()
        self._log_waiters[job_id].add(event)
        try:
            yield event
        finally:
            events = self._log_waiters.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._log_waiters[job_id]

    async def subscribed(self, timeout_s: float = _SUBSCRIBE_WAIT_S) -> None:
        """Wait (at most `timeout_s`) for the subscription to be up."""
        self._start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._subscribed.wait()

    async def _read_once(
        self, job_id: str, read: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """One read of the job for all who wait on it at this moment: a thousand waiters woken
        by its end make one Redis read, not a thousand (each gets its own copy)."""
        pending = self._reads.get(job_id)
        if pending is None:
            pending = asyncio.ensure_future(read())
            self._reads[job_id] = pending
            pending.add_done_callback(lambda _: self._reads.pop(job_id, None))
        job = await asyncio.shield(pending)
        return None if job is None else job.model_copy(deep=True)

    def _forget(self, job_id: str, event: asyncio.Event) -> None:
        events = self._waiters.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[job_id]

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="dockguard-job-events")

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(JOB_ENDED_CHANNEL, LOG_ADDED_CHANNEL)
                self._subscribed.set()
                self._wake_all()  # whatever ended while there was no subscription
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                log.warning("job-end subscription lost; reconnecting", extra={"why": repr(exc)})
            finally:
                self._subscribed.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(_RECONNECT_DELAY_S)

    def _wake(self, channel: bytes | str, data: bytes | str) -> None:
        job_id = data.decode() if isinstance(data, bytes) else str(data)
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        waiters = self._log_waiters if name == LOG_ADDED_CHANNEL else self._waiters
        for event in waiters.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in (self._waiters, self._log_waiters):
            for events in waiters.values():
                for event in events:
                    event.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
