"""A job's entry in arq's queue, written by the job store in the same Redis script as the job's
record (jobs.py `create`): a submission is one round trip once its Dockerfile is stored, a job is
never stored without being queued (nor queued without its record), and the queue's bound is a
reservation made in that script, exact under any number of concurrent submissions.

The entry is what arq's own `enqueue_job` writes (its job key, with the payload from arq's public
`serialize_job`, and the job's id in the queue's sorted set), so arq's workers read it as theirs;
tests/e2e/test_submission.py runs such jobs through a real worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.typing import EncodableT

from dockguard.store.keys import QUEUE_NAME


@dataclass(frozen=True)
class QueueEntry:
    """arq's job `function(job_id, **kwargs)`, to be queued unless `max_queued` jobs already are
    (waiting, or taken by a worker and not finished: arq keeps both in the sorted set)."""

    job_id: str
    payload: bytes
    enqueued_ms: int
    expires_ms: int  # arq drops the entry if no worker has started it by then
    max_queued: int

    @classmethod
    def of(
        cls,
        function: str,
        job_id: str,
        kwargs: dict[str, Any],
        *,
        expires_s: float,
        max_queued: int,
        serializer: Callable[[dict[str, Any]], bytes],
    ) -> QueueEntry:
        now = timestamp_ms()
        payload = serialize_job(function, (job_id,), kwargs, None, now, serializer=serializer)
        return cls(job_id, payload, now, max(int(expires_s * 1000), 1), max_queued)

    @property
    def keys(self) -> list[str]:
        return [QUEUE_NAME, job_key_prefix + self.job_id]

    @property
    def args(self) -> list[EncodableT]:
        return [self.max_queued, self.job_id, self.payload, self.expires_ms, self.enqueued_ms]


# The queue's part of a script. KEYS[1], KEYS[2]: the queue, arq's job key. ARGV[1..5]: the
# bound, the job id, the payload, its expiry in ms, its score (when it was queued, in ms).
# RESERVE returns 0, having written nothing, when the queue is full; the rest of the script
# follows it, and ENQUEUE ends it (returning 1).
RESERVE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
"""
ENQUEUE = """
redis.call('PSETEX', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[2])
return 1
"""
