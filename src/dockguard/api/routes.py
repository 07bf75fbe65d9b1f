"""The v1 HTTP API. Handlers are thin: parse, call the store/queue, answer."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from dockguard import dockerfile as dockerfile_parser
from dockguard import submission_policy
from dockguard.errors import (
    ErrorCode,
    JobFailure,
    JobNotFound,
    ServiceUnavailable,
    SubmissionError,
)
from dockguard.jobs.pipeline import queued_deadline_s
from dockguard.jobs.worker import TASK
from dockguard.models import Job, ScannerStatus, SubmitRequest
from dockguard.services import Services

from .problems import problem_response, problem_responses

log = logging.getLogger(__name__)
router = APIRouter()

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_JSON_OVERHEAD = 6  # worst-case JSON escaping: one byte of text can take six (\u0000)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_submission_policy(
    request: Request, services: ServicesDep
) -> submission_policy.SubmissionPolicy:
    """Built from the settings on the first submission, then kept for the app's lifetime."""
    state = request.app.state
    policy: submission_policy.SubmissionPolicy | None = getattr(state, "submission_policy", None)
    if policy is None:
        policy = submission_policy.SubmissionPolicy.from_settings(services.settings)
        state.submission_policy = policy
    return policy


PolicyDep = Annotated[submission_policy.SubmissionPolicy, Depends(get_submission_policy)]

_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The Dockerfile, as JSON or as the plain-text body itself.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SubmitRequest"}},
            "text/plain": {"schema": {"type": "string"}, "example": "FROM busybox\n..."},
        },
    }
}


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=Job,
    summary="Submit a Dockerfile",
    description=(
        "Stores the Dockerfile and queues a job that scans it, builds it, runs the image in the "
        "sandbox and collects `/data/perf.json`. Returns at once; poll the `Location`. "
        "A Dockerfile the submission policy forbids is refused with 400 `dockerfile_forbidden`."
    ),
    openapi_extra=_SUBMIT_BODY,
    responses=problem_responses(400, 413, 415, 422, 503),
)
async def submit_job(request: Request, services: ServicesDep, policy: PolicyDep) -> JSONResponse:
    limit = services.settings.max_dockerfile_bytes
    body = await _dockerfile_bytes(request, limit)
    parsed = dockerfile_parser.parse(body, limit)
    submission_policy.check(parsed, policy)
    job = Job(id=uuid.uuid4().hex, dockerfile_sha256=parsed.sha256, dockerfile_bytes=len(body))
    settings = services.settings
    await services.store.create(job, parsed.text, deadline_s=queued_deadline_s(settings))
    try:
        # A job no worker starts within the queue timeout is dropped by arq, and failed
        # `worker_lost` by the sweeper when its deadline passes.
        await services.redis.enqueue_job(
            TASK, job.id, _job_id=job.id, _expires=settings.queue_timeout_s
        )
    except Exception:  # the store write is undone, so a job is either queued or not stored
        await services.store.delete(job.id)
        raise
    log.info("job queued", extra={"job_id": job.id, "bytes": job.dockerfile_bytes})
    return JSONResponse(
        job.model_dump(mode="json"), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


async def _dockerfile_bytes(request: Request, limit: int) -> bytes:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "text/plain":
        return await _read_capped(request, limit)
    if media_type == "application/json":
        raw = await _read_capped(request, limit * _JSON_OVERHEAD + 1024)
        try:
            submitted = SubmitRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise SubmissionError(
                ErrorCode.REQUEST_INVALID,
                'the body must be a JSON object {"dockerfile": "<text>"}',
            ) from exc
        try:
            return submitted.dockerfile.encode("utf-8")
        except UnicodeEncodeError:
            raise SubmissionError(
                ErrorCode.DOCKERFILE_ENCODING, "the Dockerfile is not valid Unicode text"
            ) from None
    raise SubmissionError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        "send the Dockerfile as text/plain or as application/json",
        http_status=415,
    )


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing to hold more than `limit` bytes of it in memory."""
    too_large = SubmissionError(
        ErrorCode.DOCKERFILE_TOO_LARGE,
        f"the Dockerfile is larger than the {limit}-byte limit",
        http_status=413,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@router.get(
    "/v1/jobs/{job_id}",
    response_model=Job,
    summary="Read a job",
    responses=problem_responses(404),
)
async def get_job(job_id: str, services: ServicesDep) -> Job:
    job = await services.store.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise JobNotFound(job_id[:64])
    return job


@router.get(
    "/v1/scanner",
    response_model=ScannerStatus,
    summary="The scanner and its vulnerability DB",
    description=(
        "Scanner version and backend, the verified scanner image (container backend), the DB's "
        "metadata and age, and whether image scans can run now (`db_usable`)."
    ),
    responses=problem_responses(503),
)
async def scanner_status(services: ServicesDep) -> ScannerStatus:
    try:
        return await services.scanner.status()
    except JobFailure as failure:
        raise ServiceUnavailable(failure.message) from failure


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis and the Docker Engine answer",
    responses=problem_responses(503),
)
async def readyz(services: ServicesDep) -> Response:
    failing = []
    for name, check in (("redis", services.redis.ping()), ("docker", services.sandbox.ping())):
        try:
            async with asyncio.timeout(3):
                await check
        except Exception as exc:  # noqa: BLE001 -- any failure means "not ready"; the cause is logged only
            log.warning("readiness check failed", extra={"dependency": name, "why": repr(exc)})
            failing.append(name)
    if failing:
        return problem_response(
            503, ErrorCode.SERVICE_UNAVAILABLE.value, f"not reachable: {', '.join(failing)}"
        )
    return JSONResponse({"status": "ready"})
