"""Every Redis key dockguard writes, built in one place. (arq adds its own `arq:*` keys for the
queue's jobs and results.)"""

from __future__ import annotations

PREFIX = "dockguard"
QUEUE_NAME = f"{PREFIX}:queue"
DB_REFRESH_LOCK = f"{PREFIX}:scanner:db-refresh-lock"
DEADLINES = f"{PREFIX}:deadlines"  # sorted set: id of each unfinished job → its Unix deadline
CALLBACKS = f"{PREFIX}:callbacks"  # sorted set: id of each job with a webhook to send → when
WORKERS = f"{PREFIX}:workers"  # sorted set: id of each worker → when it was last seen
DEPLOYMENT = f"{PREFIX}:deployment"  # string: this Redis's deployment id, in Docker labels
JOBS = f"{PREFIX}:jobs"  # sorted set: id of every stored job → its creation time in µs
JOB_ENDED_CHANNEL = f"{PREFIX}:job-ended"  # pub/sub: the id of each job that just ended
LOG_ADDED_CHANNEL = f"{PREFIX}:log-added"  # pub/sub: the id of each job whose log just grew


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def attempt_key(job_id: str) -> str:
    """The token of the attempt that holds the job now (jobs.py: `claim`, fenced `update`)."""
    return f"{PREFIX}:attempt:{job_id}"


def lease_key(job_id: str) -> str:
    """The token of the attempt running the job, expiring unless that attempt renews it
    (jobs.py: `claim`, `renew`)."""
    return f"{PREFIX}:lease:{job_id}"


def logs_key(job_id: str) -> str:
    """The job's live log, a stream (logs.py)."""
    return f"{PREFIX}:logs:{job_id}"


def dockerfile_key(job_id: str) -> str:
    return f"{PREFIX}:dockerfile:{job_id}"


def idempotency_key(key_sha256: str) -> str:
    """An Idempotency-Key's record, by the sha256 of the client's key (any length, any text)."""
    return f"{PREFIX}:idempotency:{key_sha256}"


def dockerfile_scan_key(sha256: str, scanner_version: str) -> str:
    return f"{PREFIX}:scan-cache:dockerfile:{sha256}:{scanner_version}"


def image_scan_key(image_id: str, scanner_version: str, db_updated_at: str) -> str:
    return f"{PREFIX}:scan-cache:image:{image_id}:{scanner_version}:{db_updated_at}"
