"""What `POST /v1/jobs` decides beside the Dockerfile itself: the requested run limits (never
above the operator's), the webhook (only where the operator allows), the Idempotency-Key (a
retried submission gets its first job back) and backpressure (a full queue refuses new jobs)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from dockguard import callbacks, tracing
from dockguard.errors import ErrorCode, LimitsExceedPolicy, QueueFull, SubmissionError
from dockguard.jobs.pipeline import queued_deadline_s, running_deadline_s
from dockguard.jobs.worker import MAX_TRIES, TASK
from dockguard.models import CallbackInfo, Job, RequestedLimits
from dockguard.ports import JobStore
from dockguard.services import Services, serialize
from dockguard.settings import Settings
from dockguard.store.idempotency import Claim, IdempotencyKeys
from dockguard.store.keys import QUEUE_NAME
from dockguard.store.queue import QueueEntry

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
RETRY_AFTER_S = 10  # what a refused client is told to wait; jobs take seconds to minutes
_KEY = re.compile(r"^[\x20-\x7e]{1,200}\Z")  # an HTTP structured-field string's characters


def check_idempotency_key(values: list[str]) -> str | None:
    """The request's Idempotency-Key: None when it has none; 400 `request_invalid` unless it is
    one header of 1-200 printable ASCII characters."""
    if not values:
        return None
    if len(values) > 1:
        raise SubmissionError(ErrorCode.REQUEST_INVALID, "send one Idempotency-Key header")
    if not _KEY.match(values[0]):
        raise SubmissionError(
            ErrorCode.REQUEST_INVALID,
            "the Idempotency-Key must be 1-200 printable ASCII characters",
        )
    return values[0]


def parse_limits(fields: dict[str, object]) -> RequestedLimits | None:
    """The requested limits from form fields or a JSON object: None when there are none; 422
    `request_invalid` unless each is a number above 0."""
    try:
        requested = RequestedLimits.model_validate(fields)
    except ValidationError as exc:
        raise invalid_limits(exc) from None
    return nonempty(requested)


def nonempty(requested: RequestedLimits | None) -> RequestedLimits | None:
    """None for no limits asked for, whether the object was absent, empty or all nulls."""
    if requested is None or not requested.model_dump(exclude_none=True):
        return None
    return requested


def invalid_limits(exc: ValidationError) -> SubmissionError:
    where = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
    )
    return SubmissionError(ErrorCode.REQUEST_INVALID, f"invalid limits: {where}", http_status=422)


def check_limits(requested: RequestedLimits | None, settings: Settings) -> None:
    """400 `limits_exceed_policy` when a requested limit is above the operator's setting."""
    if requested is None:
        return
    for field in ("run_timeout_s", "run_memory_mb", "run_cpus"):
        value = getattr(requested, field)
        maximum = getattr(settings, field)
        if value is not None and value > maximum:
            raise LimitsExceedPolicy(field, value, maximum)


def check_callback(url: str | None, settings: Settings) -> CallbackInfo | None:
    """The job's webhook (None: none asked for); 400 `callback_not_allowed` unless the service
    allows webhooks to that host (see callbacks.py), 422 `request_invalid` for a bad URL."""
    if url is None:
        return None
    allowlist = callbacks.parse_allowlist(settings.callback_allowed_hosts)
    return CallbackInfo(url=callbacks.check_url(url, allowlist).url)


@dataclass(frozen=True)
class Submitted:
    """What a submission sent, whichever way (JSON, text, form): not checked yet."""

    dockerfile: bytes
    limits: RequestedLimits | None = None
    callback_url: str | None = None


def fingerprint(
    dockerfile_sha256: str, limits: RequestedLimits | None = None, callback_url: str | None = None
) -> str:
    """What a repeated submission must match: the Dockerfile (whichever way it was sent) and the
    submission's parameters (the requested limits and the webhook, whichever way sent)."""
    parameters: dict[str, object] = {}
    if limits is not None:
        parameters["limits"] = limits.model_dump(exclude_none=True)
    if callback_url is not None:
        parameters["callback_url"] = callback_url
    canonical = json.dumps({"dockerfile_sha256": dockerfile_sha256, "parameters": parameters})
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Idempotency:
    """One submission's Idempotency-Key: `claim` is its fingerprint and its (new) job's id."""

    keys: IdempotencyKeys
    store: JobStore
    key: str
    claim: Claim

    async def earlier_job(self) -> Job | None:
        """The job an earlier submission with this key made, or None when there is none (any
        longer). 422 `idempotency_key_reused` when that submission was another one."""
        earlier = await self.keys.get(self.key)
        return None if earlier is None else await self._job_of(earlier)

    async def claim_or_earlier(self) -> Job | None:
        """Claim the key for our job (stored, not queued yet): None when claimed. Else the job
        of the submission that claimed it first, ours deleted (as on a 422)."""
        try:
            while (earlier := await self.keys.claim(self.key, self.claim)) is not None:
                if (job := await self._job_of(earlier)) is not None:
                    await self.store.delete(self.claim.job_id)
                    return job
        except BaseException:
            await self.store.delete(self.claim.job_id)
            raise
        return None

    async def release(self) -> None:
        """Our job could not be queued: the key is free again."""
        await self.keys.release(self.key, self.claim)

    async def _job_of(self, earlier: Claim) -> Job | None:
        if earlier.fingerprint != self.claim.fingerprint:
            raise SubmissionError(
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key came with another submission; use a new key",
                http_status=422,
            )
        job = await self.store.get(earlier.job_id)
        if job is None:  # it expired, or could not be queued: the key is free
            await self.keys.release(self.key, earlier)
        return job


def idempotency(services: Services, key: str | None, job: Job) -> Idempotency | None:
    if key is None:
        return None
    keys = IdempotencyKeys(services.redis, services.settings.job_ttl_s)
    callback_url = None if job.callback is None else job.callback.url
    claim = Claim(fingerprint(job.dockerfile_sha256, job.requested_limits, callback_url), job.id)
    return Idempotency(keys, services.store, key, claim)


async def store_and_queue(
    services: Services, job: Job, dockerfile: str, once: Idempotency | None
) -> Job | None:
    """Store the new job and queue it. Returns, instead, the job of a concurrent submission with
    the same Idempotency-Key that came first (ours is not kept). 429 `queue_full` while the queue
    holds `max_queued` jobs (waiting, or taken and not finished), and nothing is kept.

    Without a key: one script stores and queues the job (jobs.py, queue.py), the queue's bound a
    reservation made in it, exact however many submissions race. With one: stored, the key
    claimed, then queued, so that two submissions with one key never queue two jobs."""
    settings = services.settings
    full = QueueFull(settings.max_queued, RETRY_AFTER_S)
    entry = QueueEntry.of(
        TASK,
        job.id,
        {"trace_parent": tracing.traceparent()},  # the job's span is this request's child
        expires_s=queue_entry_ttl_s(settings),
        max_queued=settings.max_queued,
        serializer=serialize,
    )
    deadline_s = queued_deadline_s(settings)
    if once is None:
        if not await services.store.create(job, dockerfile, deadline_s=deadline_s, queue=entry):
            raise full
        return None
    if await services.redis.zcard(QUEUE_NAME) >= settings.max_queued:
        raise full  # (refused before anything is stored, as a keyless submission would be)
    await services.store.create(job, dockerfile, deadline_s=deadline_s)
    if (earlier := await once.claim_or_earlier()) is not None:
        return earlier
    try:
        queued = await services.store.enqueue(entry)
    except BaseException:  # undone (a cancel too): a job is either queued or not stored
        await asyncio.shield(_forget(services, job, once))
        raise
    if not queued:
        await _forget(services, job, once)
        raise full
    return None


def queue_entry_ttl_s(settings: Settings) -> float:
    """How long arq keeps a job's entry: through the queue timeout and every delivery it may
    get (`MAX_TRIES` attempts, each at most `running_deadline_s`), so that a job retried after
    its worker died is still there to be taken. That no worker took a job within the queue
    timeout is the pipeline's check (and the reaper's, at the job's deadline)."""
    return settings.queue_timeout_s + MAX_TRIES * running_deadline_s(settings) + 60


async def _forget(services: Services, job: Job, once: Idempotency) -> None:
    """(If the entry was written after all, the worker finds no record and drops it.)"""
    await services.store.delete(job.id)
    await once.release()
