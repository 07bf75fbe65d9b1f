"""Listing jobs newest first, a page at a time (`GET /v1/jobs`).

`RedisJobStore.create` adds each job's id to one sorted set (`keys.JOBS`), scored by its
creation time in microseconds, in the same transaction as the record. A page walks that index
from a position — the (creation time, id) of the last entry the previous page looked at — so
it never repeats or skips a job however many are created meanwhile; equal times are ordered by
id. An id whose record has expired (or was deleted) is skipped and removed from the index, and
`create` trims every entry older than the job TTL, so the index holds about one TTL of jobs.

A page looks at `SCAN_MAX` entries at most: with a status filter it may hold fewer jobs than
asked (even none) while `next` is not None. The cursor is this module's opaque encoding of a
position."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from dockguard.models import Job, JobStatus
from dockguard.store.keys import JOBS, job_key

SCAN_MAX = 1000  # index entries one page looks at, at most, so a request's work is bounded
_BATCH = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"1:([0-9]{1,17}):([0-9a-f]{32})")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,80}")


@dataclass(frozen=True, order=True)
class Position:
    """Where a job stands in the index: ordered as the index orders it (newest = largest)."""

    created_us: int
    job_id: str


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next: Position | None  # None: the index has nothing after this page


def position(job: Job) -> Position:
    return Position(created_us(job.created_at), job.id)


def created_us(at: datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding): the job's index score."""
    return (at - _EPOCH) // timedelta(microseconds=1)


def encode_cursor(at: Position) -> str:
    raw = f"1:{at.created_us}:{at.job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position `encode_cursor` made; ValueError for anything else."""
    if not _BASE64URL.fullmatch(cursor):
        raise ValueError("not a cursor from this API")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not a cursor from this API") from None
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise ValueError("not a cursor from this API")
    return Position(int(match[1]), match[2])


class _Status(BaseModel):
    """The one field a status filter needs, without validating the whole record."""

    model_config = ConfigDict(extra="ignore")
    status: JobStatus


async def page(
    redis: Redis, *, status: JobStatus | None, limit: int, after: Position | None
) -> Page:
    """Up to `limit` jobs (with `status`, if given) that come after `after`, newest first."""
    jobs: list[Job] = []
    at = after
    looked = 0
    while looked < SCAN_MAX:
        entries = await _entries_after(redis, at, min(_BATCH, SCAN_MAX - looked))
        if not entries:
            return Page(jobs, None)
        records = await redis.mget([job_key(entry.job_id) for entry in entries])
        gone = []
        for entry, raw in zip(entries, records, strict=True):
            looked += 1
            at = entry
            if raw is None:
                gone.append(entry.job_id)
            elif status is None or _Status.model_validate_json(raw).status == status:
                jobs.append(Job.model_validate_json(raw))
                if len(jobs) == limit:
                    break
        if gone:
            await redis.zrem(JOBS, *gone)
        if len(jobs) == limit:
            return Page(jobs, at if await _entries_after(redis, at, 1) else None)
    return Page(jobs, at)


async def _entries_after(redis: Redis, at: Position | None, count: int) -> list[Position]:
    """The next `count` index entries after `at` (None: from the newest), newest first."""
    top: float | str = "+inf" if at is None else at.created_us
    skip = 0
    while True:
        rows = await redis.zrevrangebyscore(
            JOBS, top, "-inf", start=skip, num=count, withscores=True
        )
        entries = [Position(int(score), _text(member)) for member, score in rows]
        after = [entry for entry in entries if at is None or entry < at]
        # Only entries with at's own time can come first and be dropped; when a whole batch
        # of them was, look further (rare: it takes `count` jobs created in one microsecond).
        if after or len(rows) < count:
            return after
        skip += count


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
