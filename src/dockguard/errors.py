"""The errors dockguard reports, each with a stable snake_case code.

    DockguardError                 code, message, http_status
    ├── SubmissionError            the request itself is unacceptable (HTTP 4xx at submission)
    │     dockerfile_empty, dockerfile_encoding, dockerfile_invalid, dockerfile_too_large,
    │     dockerfile_forbidden, unsupported_media_type, request_invalid,
    │     idempotency_key_reused (422: the Idempotency-Key came with another Dockerfile)
    ├── LimitsExceedPolicy         limits_exceed_policy (400): a requested run limit is above
    │                              the operator's setting; nothing was stored
    ├── QueueFull                  queue_full (429, with Retry-After): DOCKGUARD_MAX_QUEUED
    ├── JobNotFound                job_not_found (404)
    ├── JobFinished                job_finished (409): a cancel of a job that has already ended
    ├── ServiceUnavailable         service_unavailable (503): a dependency cannot answer
    │   (the API also answers not_found 404, method_not_allowed 405 and internal_error 500 as
    │    problem documents; see api/problems.py)
    └── JobFailure                 a job ended as `failed` or `rejected`; recorded in `Job.error`
          dockerfile_rejected, image_rejected, scanner_failed, scanner_db_stale,
          scanner_db_missing, scanner_untrusted, base_image_forbidden, build_failed,
          build_timeout, user_invalid, data_dir_invalid, run_start_failed, run_timeout,
          run_oom, run_nonzero_exit, result_missing, result_invalid, result_too_large,
          result_not_regular_file, job_timeout, worker_lost, engine_unavailable, job_cancelled,
          internal_error
          (base_image_forbidden: a base image has ONBUILD triggers, which would run unscanned;
           job_timeout: the whole job outlived its deadline; worker_lost: no worker finished the
           job by its deadline, found by the sweeper; engine_unavailable: the worker's connection
           to the Docker Engine failed mid-job, so no verdict could be reached)
          (user_invalid: the image's USER cannot be used; data_dir_invalid: the image's /data is
           not a directory; run_start_failed: the engine refused to create or start the run's
           container because of the image's configuration, e.g. a CMD that does not exist)

Third-party errors (aiodocker, redis, subprocess) are translated at the boundary of the module
that calls them (`raise JobFailure(...) from exc`), with a message that says what was being
attempted and never the raw daemon text.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    DOCKERFILE_EMPTY = "dockerfile_empty"
    DOCKERFILE_ENCODING = "dockerfile_encoding"
    DOCKERFILE_INVALID = "dockerfile_invalid"
    DOCKERFILE_TOO_LARGE = "dockerfile_too_large"
    DOCKERFILE_FORBIDDEN = "dockerfile_forbidden"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    REQUEST_INVALID = "request_invalid"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    LIMITS_EXCEED_POLICY = "limits_exceed_policy"
    CALLBACK_NOT_ALLOWED = "callback_not_allowed"
    QUEUE_FULL = "queue_full"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    JOB_NOT_FOUND = "job_not_found"
    SERVICE_UNAVAILABLE = "service_unavailable"
    DOCKERFILE_REJECTED = "dockerfile_rejected"
    IMAGE_REJECTED = "image_rejected"
    SCANNER_FAILED = "scanner_failed"
    SCANNER_DB_STALE = "scanner_db_stale"
    SCANNER_DB_MISSING = "scanner_db_missing"
    SCANNER_UNTRUSTED = "scanner_untrusted"
    BASE_IMAGE_FORBIDDEN = "base_image_forbidden"
    BUILD_FAILED = "build_failed"
    BUILD_TIMEOUT = "build_timeout"
    USER_INVALID = "user_invalid"
    DATA_DIR_INVALID = "data_dir_invalid"
    RUN_START_FAILED = "run_start_failed"
    RUN_TIMEOUT = "run_timeout"
    RUN_OOM = "run_oom"
    RUN_NONZERO_EXIT = "run_nonzero_exit"
    RESULT_MISSING = "result_missing"
    RESULT_INVALID = "result_invalid"
    RESULT_TOO_LARGE = "result_too_large"
    RESULT_NOT_REGULAR_FILE = "result_not_regular_file"
    JOB_TIMEOUT = "job_timeout"
    WORKER_LOST = "worker_lost"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    JOB_CANCELLED = "job_cancelled"
    JOB_FINISHED = "job_finished"
    INTERNAL_ERROR = "internal_error"


class DockguardError(Exception):
    """Base of every error dockguard reports to a client."""

    http_status = 500

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def headers(self) -> dict[str, str]:
        """HTTP headers the problem response carries (none but for a few errors)."""
        return {}


class SubmissionError(DockguardError):
    """The submitted request cannot become a job."""

    def __init__(self, code: ErrorCode, message: str, http_status: int = 400) -> None:
        super().__init__(code, message)
        self.http_status = http_status


class LimitsExceedPolicy(DockguardError):
    """A submission asked for more than the service allows; nothing was stored."""

    http_status = 400

    def __init__(self, field: str, value: float, maximum: float) -> None:
        super().__init__(
            ErrorCode.LIMITS_EXCEED_POLICY,
            f"{field} {_number(value)} is above this service's maximum, {_number(maximum)}",
        )
        self.field = field


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


class JobNotFound(DockguardError):
    http_status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(ErrorCode.JOB_NOT_FOUND, f"no job with id {job_id!r} (unknown or expired)")


class JobFinished(DockguardError):
    http_status = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            ErrorCode.JOB_FINISHED, f"job {job_id} has already ended ({status}); nothing to cancel"
        )


class QueueFull(DockguardError):
    """Backpressure: the queue holds DOCKGUARD_MAX_QUEUED jobs; nothing was stored."""

    http_status = 429

    def __init__(self, max_queued: int, retry_after_s: int) -> None:
        super().__init__(
            ErrorCode.QUEUE_FULL,
            f"{max_queued} jobs are waiting already; submit again in {retry_after_s} s",
        )
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ServiceUnavailable(DockguardError):
    http_status = 503

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.SERVICE_UNAVAILABLE, message)


class JobFailure(DockguardError):
    """A pipeline step ended the job; `rejected` marks a policy verdict rather than a failure."""

    def __init__(self, code: ErrorCode, message: str, *, rejected: bool = False) -> None:
        super().__init__(code, message)
        self.rejected = rejected
