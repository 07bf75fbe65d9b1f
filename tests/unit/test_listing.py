"""The job list's pure parts: cursors (opaque, strict), positions (the index's order) and the
in-memory fake that the pipeline's tests share with the real store's contract."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dockguard.models import Job, JobStatus
from dockguard.store.listing import Position, created_us, decode_cursor, encode_cursor, position
from tests.unit.fakes import FakeDockerfileStore, FakeJobStore

T0 = datetime(2027, 1, 15, 12, 0, 0, 123456, tzinfo=UTC)


def test_cursor_round_trip() -> None:
    at = Position(created_us(T0), "ab" * 16)
    cursor = encode_cursor(at)
    assert decode_cursor(cursor) == at
    assert cursor.isascii() and "=" not in cursor and "ab" * 16 not in cursor


def test_created_us_is_exact() -> None:
    assert created_us(T0) == 1_800_014_400_123_456
    assert created_us(T0 + timedelta(microseconds=1)) == created_us(T0) + 1
    assert created_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64 !",
        "é",
        "A" * 81,
        _b64("2:1:" + "a" * 32),  # another version
        _b64("1:-5:" + "a" * 32),
        _b64("1:12:" + "A" * 32),  # ids are lower-case hex
        _b64("1:12:" + "a" * 31),
        _b64("1:" + "9" * 18 + ":" + "a" * 32),
        _b64("1:12:" + "a" * 32 + "\n"),
        _b64("1:12"),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        decode_cursor(cursor)


def test_positions_order_as_the_index_does() -> None:
    older = Position(10, "f" * 32)
    tie_low, tie_high = Position(20, "0" * 32), Position(20, "1" * 32)
    assert sorted([tie_high, older, tie_low], reverse=True) == [tie_high, tie_low, older]


def _job(at: datetime, status: JobStatus = JobStatus.QUEUED) -> Job:
    job = Job(id=uuid.uuid4().hex, dockerfile_sha256="0" * 64, dockerfile_bytes=1)
    job.created_at, job.status = at, status
    return job


async def test_fake_store_pages_newest_first() -> None:
    store = FakeJobStore(FakeDockerfileStore())
    jobs = [_job(T0 + timedelta(seconds=n)) for n in range(5)]
    jobs.append(_job(T0 + timedelta(seconds=4)))  # a tie: ordered by id
    for job in jobs:
        await store.create(job, "FROM busybox\n", deadline_s=60)
    expected = sorted(jobs, key=position, reverse=True)
    seen: list[Job] = []
    after = None
    while True:
        page = await store.list_jobs(status=None, limit=2, after=after)
        seen += page.jobs
        if page.next is None:
            break
        after = page.next
    assert [j.id for j in seen] == [j.id for j in expected]
    failed = await store.list_jobs(status=JobStatus.FAILED, limit=10, after=None)
    assert failed.jobs == [] and failed.next is None
