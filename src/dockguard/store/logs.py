"""A job's live log: one Redis stream per job (`keys.logs_key`) that any API replica can read.

Entries, in the order they happened, each a `kind` and a JSON `data`:
- `log`: `{"stage": "build" | "run", "line": …}`, one line of what the build or the container
  printed, cleaned by `clean_line` (length-capped, invalid UTF-8 replaced, terminal escapes and
  control characters removed), written by a `LogWriter` in batches;
- `status`: `{"status": …}`, each status a job moves to, written by the job store in the same
  transaction as the status itself (so the stream and the record never disagree);
- `end`: `{"status": …}`, after the terminal status: nothing follows it.

The stream is created with the job and expires with it (the job's TTL, set once, at creation),
and is capped at `max_lines` entries (`XADD MAXLEN ~`): a job that prints more keeps its last
lines. Every write publishes the job id on `keys.LOG_ADDED_CHANNEL`, which wakes the API's
readers (events.py) without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from dockguard.lines import DEFAULT_LINE_MAX_CHARS, clean_line
from dockguard.store.keys import LOG_ADDED_CHANNEL, job_key, logs_key

log = logging.getLogger(__name__)

Stage = Literal["build", "run"]
Kind = Literal["log", "status", "end"]

DEFAULT_MAX_LINES = 5000
_FLUSH_INTERVAL_S = 0.1  # lines are sent in batches at most this often
_WRITE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LogEvent:
    """One stream entry: its id (the SSE event id), kind and data."""

    id: str
    kind: Kind
    data: dict[str, Any]


def add(pipe: Pipeline, job_id: str, kind: Kind, data: dict[str, Any], max_lines: int) -> None:
    """Queue one entry on a pipeline."""
    fields: dict[Any, Any] = {"kind": kind, "data": entry_data(data)}
    pipe.xadd(logs_key(job_id), fields, maxlen=max_lines, approximate=True)


def status_changed(
    pipe: Pipeline, job_id: str, status: str, *, terminal: bool, ttl_ms: int, max_lines: int
) -> None:
    """Queue, in the transaction that writes the status, its entry (and `end` after a terminal
    one), the stream's expiry set to the job record's remaining `ttl_ms` (so an entry never
    outlives the job, nor recreates an expired stream for good), and the readers' wake-up."""
    add(pipe, job_id, "status", {"status": status}, max_lines)
    if terminal:
        add(pipe, job_id, "end", {"status": status}, max_lines)
    pipe.pexpire(logs_key(job_id), max(ttl_ms, 1))
    pipe.publish(LOG_ADDED_CHANNEL, job_id)


def entry_data(data: dict[str, Any]) -> str:
    """An entry's `data` field, as every writer stores it."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# Append log lines only while the job record lives, expiring the stream with it; one round trip.
# KEYS: the stream, the job record. ARGV: max_lines, channel, job id, then the entries' data.
_APPEND = """
local ttl = redis.call('PTTL', KEYS[2])
if ttl <= 0 then return 0 end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', 'log', 'data', ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return #ARGV - 3
"""


async def read(redis: Redis, job_id: str, after: str | None, count: int = 500) -> list[LogEvent]:
    """Entries after the id `after` (from the first when None), at most `count`."""
    start_id = "-" if after is None else f"({after}"
    raw = await redis.xrange(logs_key(job_id), min=start_id, max="+", count=count)
    return [_event(entry_id, fields) for entry_id, fields in raw]


async def exists(redis: Redis, job_id: str) -> bool:
    return bool(await redis.exists(logs_key(job_id)))


async def lines(redis: Redis, job_id: str) -> list[LogEvent]:
    """Every stored `log` entry (at most the stream's cap), oldest first."""
    found: list[LogEvent] = []
    after: str | None = None
    while batch := await read(redis, job_id, after, count=1000):
        found += [event for event in batch if event.kind == "log"]
        after = batch[-1].id
    return found


def _event(entry_id: bytes | str, fields: dict[Any, Any]) -> LogEvent:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    decoded = {text(k): text(v) for k, v in fields.items()}
    kind = decoded.get("kind", "log")
    try:
        data = json.loads(decoded.get("data", "{}"))
    except ValueError:
        data = {}
    if kind not in ("log", "status", "end") or not isinstance(data, dict):
        kind, data = "log", {}
    return LogEvent(id=text(entry_id), kind=kind, data=data)  # type: ignore[arg-type]


_ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}\Z")


def valid_id(value: str) -> bool:
    """A stream entry id as this module sends them (`<ms>-<seq>`): what `Last-Event-ID` holds."""
    return bool(_ENTRY_ID.match(value))


class LogWriter:
    """The lines of one stage of one job, sent to its stream in batches from a background task.

    `write` never blocks and never fails: a job must not fail because its log could not be
    written. When Redis is slower than the job prints, the oldest unsent lines are dropped (and
    a line saying how many takes their place), so memory stays bounded by `max_lines`."""

    def __init__(
        self,
        redis: Redis,
        job_id: str,
        stage: Stage,
        *,
        max_lines: int = DEFAULT_MAX_LINES,
        line_max_chars: int = DEFAULT_LINE_MAX_CHARS,
    ) -> None:
        self._redis = redis
        self._job_id = job_id
        self._stage: Stage = stage
        self._max_lines = max_lines
        self._line_max_chars = line_max_chars
        self._pending: deque[str] = deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def write(self, line: str | bytes) -> None:
        """Queue one line (without its newline)."""
        if self._failed:
            return
        if len(self._pending) >= self._max_lines:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append(clean_line(line, self._line_max_chars))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"dockguard-log-{self._job_id}")
        self._wake.set()

    async def aclose(self) -> None:
        """Send what is left (within a few seconds), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(_WRITE_TIMEOUT_S * 2):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                await self._flush()
            if self._closing and not self._pending:
                return
            if not self._closing:
                await asyncio.sleep(_FLUSH_INTERVAL_S)  # let a batch gather

    async def _append(self, *args: str) -> None:
        await cast("Awaitable[object]", self._redis.eval(_APPEND, 2, *args))

    async def _flush(self) -> None:
        lines = list(self._pending)
        self._pending.clear()
        dropped, self._dropped = self._dropped, 0
        if dropped:
            lines.insert(0, f"[dockguard: {dropped} earlier lines were dropped]")
        entries = [entry_data({"stage": self._stage, "line": line}) for line in lines]
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await self._append(
                    logs_key(self._job_id),
                    job_key(self._job_id),
                    str(self._max_lines),
                    LOG_ADDED_CHANNEL,
                    self._job_id,
                    *entries,
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed = True
            self._pending.clear()
            log.warning(
                "could not write the job's log; dropping it", extra={"why": repr(exc)[:300]}
            )


class RedisJobLogs:
    """Makes a job's `LogWriter`s with the operator's caps (`ports.JobLogs`, `Services.logs`)."""

    def __init__(
        self,
        redis: Redis,
        *,
        max_lines: int = DEFAULT_MAX_LINES,
        line_max_chars: int = DEFAULT_LINE_MAX_CHARS,
    ) -> None:
        self.redis = redis
        self.max_lines = max_lines
        self.line_max_chars = line_max_chars

    def writer(self, job_id: str, stage: Stage) -> LogWriter:
        return LogWriter(
            self.redis, job_id, stage, max_lines=self.max_lines, line_max_chars=self.line_max_chars
        )
