"""What `RedisJobStore.create` does with the Dockerfile when the script that stores the job
fails: removed only when the job is certainly not stored (the queue was full, or Redis refused
the script); kept when it is unknown (a cancel or a broken connection while the script was on
its way: the job may be stored, and a job without its Dockerfile could only fail). No Redis
server: the script is replaced."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dockguard.models import Job
from dockguard.store import RedisJobStore
from dockguard.store.queue import QueueEntry
from tests.unit.fakes import FakeDockerfileStore

JOB = Job(id="c" * 32, dockerfile_sha256="0" * 64, dockerfile_bytes=13)


def _store(outcome: Any) -> tuple[RedisJobStore, FakeDockerfileStore]:
    dockerfiles = FakeDockerfileStore()
    store = RedisJobStore(Redis(), 100, dockerfiles)

    async def script(**_: Any) -> int:
        if isinstance(outcome, BaseException):
            raise outcome
        return int(outcome)

    store._create_queued = script  # type: ignore[assignment]
    return store, dockerfiles


def _entry() -> QueueEntry:
    return QueueEntry.of(
        "run_job", JOB.id, {}, expires_s=60, max_queued=10, serializer=lambda _: b"{}"
    )


async def test_a_full_queue_keeps_nothing() -> None:
    store, dockerfiles = _store(0)
    assert not await store.create(JOB, "FROM busybox\n", deadline_s=60, queue=_entry())
    assert JOB.id not in dockerfiles.texts


@pytest.mark.parametrize(
    "refused",
    [
        ResponseError("NOSCRIPT"),
        RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
        RedisTimeoutError("Timeout connecting to server"),
    ],
)
async def test_a_refused_or_unsent_script_keeps_nothing(refused: Exception) -> None:
    store, dockerfiles = _store(refused)
    with pytest.raises(type(refused)):
        await store.create(JOB, "FROM busybox\n", deadline_s=60, queue=_entry())
    assert JOB.id not in dockerfiles.texts


@pytest.mark.parametrize("unknown", [asyncio.CancelledError(), RedisConnectionError("reset")])
async def test_an_unknown_outcome_keeps_the_dockerfile(unknown: BaseException) -> None:
    store, dockerfiles = _store(unknown)
    with pytest.raises(type(unknown)):
        await store.create(JOB, "FROM busybox\n", deadline_s=60, queue=_entry())
    assert dockerfiles.texts[JOB.id] == "FROM busybox\n"


async def test_a_stored_job_keeps_its_dockerfile() -> None:
    store, dockerfiles = _store(1)
    assert await store.create(JOB, "FROM busybox\n", deadline_s=60, queue=_entry())
    assert dockerfiles.texts[JOB.id] == "FROM busybox\n"
