"""The v1 HTTP API. Handlers are thin: parse, call the store/queue, answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any

from arq.jobs import Job as ArqJob
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import AfterValidator, TypeAdapter, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.routing import Match, Route
from starlette.types import Scope

from dockguard import dockerfile as dockerfile_parser
from dockguard import metrics, submission_policy
from dockguard.errors import (
    ErrorCode,
    JobFailure,
    JobNotFound,
    ServiceUnavailable,
    SubmissionError,
)
from dockguard.jobs import pipeline
from dockguard.logs import request_id_var
from dockguard.models import (
    Job,
    JobList,
    JobStatus,
    Readiness,
    ReadinessChecks,
    ReadinessExclusion,
    RuntimeReport,
    ScannerDbCheck,
    ScannerStatus,
    SubmitRequest,
)
from dockguard.sandbox.engine import EngineRuntimes
from dockguard.services import Services, deserialize
from dockguard.store import listing, logs
from dockguard.store.keys import QUEUE_NAME
from dockguard.store.workers import Heartbeats

from . import multipart, submissions
from .problems import problem_responses

log = logging.getLogger(__name__)
router = APIRouter()

_JOB_ID = re.compile(r"[0-9a-f]{32}")  # fullmatch: `$` would allow a final newline
MAX_WAIT_S = 60.0
_ABORT_POLL_S = 0.01
_JSON_OVERHEAD = 6  # worst-case JSON escaping: one byte of text can take six (\u0000)
DEFAULT_PAGE = 20
MAX_PAGE = 100


async def get_services(request: Request) -> Services:
    """(async: FastAPI runs a plain `def` dependency in a thread, a hop on every request)"""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_submission_policy(
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
        "description": (
            "The Dockerfile: as JSON, as the plain-text body itself, or as the one field "
            "`dockerfile` of a form (`curl -F dockerfile=@Dockerfile`)."
        ),
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SubmitRequest"}},
            "text/plain": {"schema": {"type": "string"}, "example": "FROM busybox\n..."},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [multipart.FIELD],
                    "properties": {
                        multipart.FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "The Dockerfile (a file or a plain field).",
                        },
                        **{
                            name: {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "description": f"Optional: as `limits.{name}` in JSON.",
                            }
                            for name in multipart.LIMIT_FIELDS
                        },
                        multipart.CALLBACK_FIELD: {
                            "type": "string",
                            "maxLength": 2048,
                            "description": "Optional: as `callback_url` in JSON.",
                        },
                    },
                    "additionalProperties": False,
                }
            },
        },
    },
    "parameters": [
        {
            "name": submissions.IDEMPOTENCY_KEY_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": (
                "1-200 printable ASCII characters. Submitting again with the same key and the "
                "same Dockerfile within the job TTL answers 200 with the first job instead of "
                "making another; with another Dockerfile, 422 `idempotency_key_reused`."
            ),
        }
    ],
}
# OpenAPI links: what a client (and schemathesis' stateful phase) can do next with a new job.
_JOB_LINKS: dict[str, Any] = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in (
        ("GetJob", "getJob"),
        ("CancelJob", "cancelJob"),
        ("GetJobLogs", "getJobLogs"),
    )
}
_REPLAYED: dict[int | str, dict[str, Any]] = {
    202: {"description": "The job, queued.", "links": _JOB_LINKS},
    200: {
        "model": Job,
        "description": "The job an earlier submission with this key made.",
        "links": _JOB_LINKS,
    },
}


WaitQuery = Annotated[
    float | None,
    Query(
        gt=0,
        le=MAX_WAIT_S,
        description=(
            f"Long-poll: answer as soon as the job has ended, or after this many seconds "
            f"(0 < wait ≤ {MAX_WAIT_S:g}) with the job as it is then. Without it: at once."
        ),
    ),
]


@router.post(
    "/v1/jobs",
    operation_id="submitJob",
    status_code=202,
    response_model=Job,
    summary="Submit a Dockerfile",
    description=(
        "Stores the Dockerfile and queues a job that scans it, builds it, runs the image in the "
        "sandbox and collects `/data/perf.json`. Returns at once (poll the `Location`), or, "
        "with `wait`, as soon as the job has ended. "
        "A Dockerfile the submission policy forbids is refused with 400 `dockerfile_forbidden`; "
        "run limits (`limits`) above the service's with 400 `limits_exceed_policy`. "
        "While `DOCKGUARD_MAX_QUEUED` jobs are in the queue: 429 `queue_full` with "
        "`Retry-After`, and nothing is stored."
    ),
    openapi_extra=_SUBMIT_BODY,
    responses={**_REPLAYED, **problem_responses(400, 413, 415, 422, 429, 503)},
)
async def submit_job(
    request: Request, services: ServicesDep, policy: PolicyDep, wait: WaitQuery = None
) -> Response:
    headers = request.headers.getlist(submissions.IDEMPOTENCY_KEY_HEADER)
    key = submissions.check_idempotency_key(headers)
    limit = services.settings.max_dockerfile_bytes
    submitted = await _submission(request, limit)
    parsed = dockerfile_parser.parse(submitted.dockerfile, limit)
    submission_policy.check(parsed, policy)
    settings = services.settings
    submissions.check_limits(submitted.limits, settings)
    job = Job(
        id=uuid.uuid4().hex,
        dockerfile_sha256=parsed.sha256,
        dockerfile_bytes=len(submitted.dockerfile),
        request_id=request_id_var.get(),
        requested_limits=submitted.limits,
        callback=submissions.check_callback(submitted.callback_url, settings),
    )
    once = submissions.idempotency(services, key, job)
    if once is not None and (earlier := await once.earlier_job()) is not None:
        return _job_response(earlier, 200)
    if (earlier := await submissions.store_and_queue(services, job, parsed.text, once)) is not None:
        return _job_response(earlier, 200)  # a concurrent submission with the key came first
    request.state.job_id = job.id  # for the request's log line (context.py)
    log.debug("job queued", extra={"job_id": job.id, "bytes": job.dockerfile_bytes})
    if wait is not None:  # long-poll the new job, as GET ?wait= does
        job = await _read_job(services, job.id, wait) or job
    return _job_response(job, 202)


def _job_response(job: Job, status: int) -> Response:
    return Response(
        job.model_dump_json(),
        status_code=status,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


async def _submission(request: Request, limit: int) -> submissions.Submitted:
    """The Dockerfile's bytes and the submission's parameters, however they were sent."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "text/plain":
        return submissions.Submitted(await _read_capped(request, limit))
    if media_type == "multipart/form-data":
        form = await multipart.read_form(request, limit)
        return submissions.Submitted(
            form.dockerfile, submissions.parse_limits(dict(form.limits)), form.callback_url
        )
    if media_type == "application/json":
        raw = await _read_capped(request, limit * _JSON_OVERHEAD + 1024)
        try:
            sent = SubmitRequest.model_validate_json(raw)
        except ValidationError as exc:
            if all(err["loc"][:1] == ("limits",) for err in exc.errors()):
                raise submissions.invalid_limits(exc) from exc
            raise SubmissionError(
                ErrorCode.REQUEST_INVALID,
                'the body must be a JSON object {"dockerfile": "<text>", "limits": {...}, '
                '"callback_url": "<url>"}',
            ) from exc
        try:
            dockerfile = sent.dockerfile.encode("utf-8")
        except UnicodeEncodeError:
            raise SubmissionError(
                ErrorCode.DOCKERFILE_ENCODING, "the Dockerfile is not valid Unicode text"
            ) from None
        return submissions.Submitted(
            dockerfile, submissions.nonempty(sent.limits), sent.callback_url
        )
    raise SubmissionError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        "send the Dockerfile as text/plain, application/json or multipart/form-data",
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
    operation_id="getJob",
    response_model=Job,
    summary="Read a job",
    description=(
        "The job as it is now; with `wait`, as soon as it has ended (or when `wait` seconds "
        "have passed), without polling: the answer comes within milliseconds of the end."
    ),
    responses=problem_responses(404, 422),
)
async def get_job(job_id: str, services: ServicesDep, wait: WaitQuery = None) -> Response:
    if wait is None and _JOB_ID.fullmatch(job_id):
        # The record is the job's API JSON (the store writes `Job.model_dump_json()`): sent as
        # it is stored, neither parsed nor validated again.
        raw = await services.store.get_json(job_id)
        if raw is None:
            raise JobNotFound(job_id)
        return Response(raw, media_type="application/json")
    job = await _read_job(services, job_id, wait)
    if job is None:
        raise JobNotFound(job_id[:64])
    return Response(job.model_dump_json(), media_type="application/json")


_WAIT = TypeAdapter(WaitQuery)


async def _serve_get_job(request: Request) -> Response:
    """`get_job` as served: the call clients repeat (polling) skips FastAPI's per-request
    parameter and dependency machinery, ~60 µs of each answer (bench/api.py). The parameters
    are read here as FastAPI reads them (the same type, the same errors: tests/unit/
    test_fast_routes.py compares the answers); the route above documents the call."""
    services: Services = request.app.state.services
    try:
        wait = _WAIT.validate_python(request.query_params.get("wait"))
    except ValidationError as exc:
        where = [{**error, "loc": ("query", "wait", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(where) from None
    return await get_job(request.path_params["job_id"], services, wait)


class _PlainRoute(Route):
    """A Starlette route that names itself in the scope as FastAPI's routes do: the access line
    and the metrics read the route's template from there."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def serve_fast(app: FastAPI) -> None:
    """Put the plain routes in front of the documented ones they serve (after `include_router`)."""
    route = _PlainRoute(
        "/v1/jobs/{job_id}", _serve_get_job, methods=["GET"], include_in_schema=False
    )
    route.methods = {"GET"}  # as the documented route: no HEAD (Starlette adds it to a GET)
    app.router.routes.insert(0, route)


async def _read_job(services: Services, job_id: str, wait_s: float | None) -> Job | None:
    if not _JOB_ID.fullmatch(job_id):
        return None
    if wait_s is None or services.events is None:
        return await services.store.get(job_id)
    return await services.events.wait_ended(job_id, wait_s, lambda: services.store.get(job_id))


@router.delete(
    "/v1/jobs/{job_id}",
    operation_id="cancelJob",
    status_code=202,
    response_model=Job,
    summary="Cancel a job",
    description=(
        "Ends the job as `cancelled` (`error.code` `job_cancelled`) at once. A queued job never "
        "starts; a running scan, build or container is stopped within seconds and everything "
        "the job created in the engine is removed. A job that has already ended: 409 "
        "`job_finished`."
    ),
    responses=problem_responses(404, 409),
)
async def cancel_job(job_id: str, services: ServicesDep) -> JSONResponse:
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(job_id[:64])
    job = await pipeline.cancel(services, job_id)
    # arq's abort: a queued arq job is dropped before it starts, a running one's task cancelled
    # (the worker's `finally` then cleans up). Not waited for: the job has ended already.
    arq_job = ArqJob(job_id, services.redis, _queue_name=QUEUE_NAME, _deserializer=deserialize)
    with contextlib.suppress(TimeoutError):
        await arq_job.abort(timeout=0, poll_delay=_ABORT_POLL_S)
    return JSONResponse(job.model_dump(mode="json"), status_code=202)


def _check_cursor(cursor: str | None) -> str | None:
    if cursor is not None:
        listing.decode_cursor(cursor)  # ValueError: a 422 `request_invalid`, like the others
    return cursor


StatusQuery = Annotated[
    JobStatus | None, Query(description="Only jobs with this status (a page may then be short).")
]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most jobs on the page.")]
CursorQuery = Annotated[
    str | None,
    Query(
        description="`next_cursor` of the previous page; none: the newest jobs.",
        pattern=r"^[A-Za-z0-9_-]{1,128}$",
    ),
    AfterValidator(_check_cursor),
]


@router.get(
    "/v1/jobs",
    operation_id="listJobs",
    response_model=JobList,
    summary="List jobs, newest first",
    description=(
        "A page of jobs still stored (within the job TTL), newest first. Follow `next_cursor` "
        "until it is null: no job is repeated or skipped, however many are submitted meanwhile."
    ),
    responses=problem_responses(422),
)
async def list_jobs(
    services: ServicesDep,
    status: StatusQuery = None,
    limit: LimitQuery = DEFAULT_PAGE,
    cursor: CursorQuery = None,
) -> JobList:
    after = None if cursor is None else listing.decode_cursor(cursor)
    page = await services.store.list_jobs(status=status, limit=limit, after=after)
    next_cursor = None if page.next is None else listing.encode_cursor(page.next)
    return JobList(jobs=page.jobs, next_cursor=next_cursor)


@router.get(
    "/v1/scanner",
    operation_id="getScanner",
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


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    description=(
        "Prometheus text format: HTTP requests, jobs, stages, the queue and the workers alive "
        "(read from Redis at each scrape), sandbox kills, scan cache hits, sweeper removals, "
        "the scanner DB's age, and (with `serve`'s own worker) that worker's. See the README's "
        '"Operating dockguard" section.'
    ),
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics_endpoint(services: ServicesDep) -> Response:
    return await metrics_answer(services)


async def metrics_answer(services: Services) -> Response:
    """A scrape's answer, on the API's port and on DOCKGUARD_API_METRICS_PORT alike."""
    await _refresh_gauges(services)
    # The 0.0.4 text format: what every Prometheus 2 (Debian's included) reads.
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)


async def _refresh_gauges(services: Services) -> None:
    """What lives outside this process, read now: the queue (Redis), the scanner's DB. A part
    that cannot be read keeps its last value (the failure is logged), and the scrape goes on."""
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            await metrics.refresh_queue(services.redis)
            metrics.WORKERS_ALIVE.set(await Heartbeats(services.redis).alive())
    except Exception as exc:  # noqa: BLE001 -- a scrape must answer whatever is down
        log.warning("metrics: queue not read", extra={"why": repr(exc)[:300]})
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            status = await services.scanner.status()
        metrics.SCANNER_DB_AGE.set(-1 if status.db_age_h is None else status.db_age_h * 3600)
    except Exception as exc:  # noqa: BLE001 -- as above
        log.warning("metrics: scanner DB not read", extra={"why": repr(exc)[:300]})


@router.get("/healthz", operation_id="healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


_CHECK_TIMEOUT_S = 3.0


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: Redis, the Docker Engine and a live worker",
    description=(
        "Every check by name: `redis` and `docker` (`ok` or `failed`: answered within 3 s), "
        "`workers` (workers seen in the last 30 s, a stopping one not; `serve`'s own counts), "
        "`scanner_db` (`ok`, `stale`, `missing`, or `not_checked` when image scans are off or the "
        "scanner did not answer; informative only). 503 `not_ready` when Redis or the engine "
        "failed or no worker is alive. `exclude` (repeatable: `docker`, `workers`) leaves a check "
        "out of the verdict, the way Kubernetes' own `/readyz?exclude=` does: an API with no "
        "engine socket whose workers scale to zero probes `/readyz?exclude=docker&exclude=workers` "
        "(ready when it can store jobs). An excluded `docker` is not even tried (`not_checked`); "
        "the workers are still counted. DOCKGUARD_READYZ_EXCLUDE (e.g. `docker`) excludes checks "
        "from every request's verdict."
    ),
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the checks say why."}},
)
async def readyz(
    services: ServicesDep,
    exclude: Annotated[
        list[ReadinessExclusion] | None,
        Query(description="A check to leave out of the verdict; repeat for several."),
    ] = None,
) -> JSONResponse:
    excluded = sorted({*services.settings.readyz_exclude, *(exclude or ())})
    check_docker = "docker" not in excluded
    engine: list[EngineRuntimes] = []  # what the engine said, when it was asked and answered
    redis_ok, docker_ok = await asyncio.gather(
        _check("redis", services.redis.ping()),
        _check("docker", _runtimes(services, engine)) if check_docker else _skipped(),
    )
    runtime = RuntimeReport(
        run=services.settings.runtime or (engine[0].default if engine else None),
        build=engine[0].default if engine else None,
    )
    workers = await _workers_alive(services) if redis_ok else 0
    checks = ReadinessChecks(
        redis="ok" if redis_ok else "failed",
        docker=("ok" if docker_ok else "failed") if check_docker else "not_checked",
        workers=workers,
        scanner_db=await _scanner_db(services),
    )
    failing = [name for name, ok in (("redis", redis_ok), ("docker", docker_ok)) if not ok]
    if workers == 0 and "workers" not in excluded:
        failing.append("workers")
    if not failing:
        ready = Readiness(status="ready", checks=checks, runtime=runtime, excluded=excluded)
        return JSONResponse(ready.model_dump())
    body = Readiness(
        status="not_ready",
        checks=checks,
        runtime=runtime,
        excluded=excluded,
        code=ErrorCode.SERVICE_UNAVAILABLE.value,
        detail=f"not ready: {', '.join(failing)}",
    )
    return JSONResponse(body.model_dump(), status_code=503)


async def _skipped() -> bool:
    return True


async def _runtimes(services: Services, into: list[EngineRuntimes]) -> None:
    """The engine check: its runtimes (an answer is the check), kept in `into`."""
    into.append(await services.sandbox.runtimes())


async def _check(name: str, call: Awaitable[object]) -> bool:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            await call
    except Exception as exc:  # noqa: BLE001 -- any failure means "not ready"; the cause is logged only
        log.warning("readiness check failed", extra={"dependency": name, "why": repr(exc)[:300]})
        return False
    return True


async def _workers_alive(services: Services) -> int:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            return await Heartbeats(services.redis).alive()
    except Exception:  # noqa: BLE001 -- Redis failed between the two checks: none known alive
        return 0


async def _scanner_db(services: Services) -> ScannerDbCheck:
    if not services.settings.scan_image:
        return "not_checked"
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            status = await services.scanner.status()
    except Exception:  # noqa: BLE001 -- the scanner's own endpoint reports why
        return "not_checked"
    if status.db is None:
        return "missing"
    return "ok" if status.db_usable else "stale"


# --- live logs ---------------------------------------------------------------------------------

_LOG_WAKE_S = 5.0  # re-read at least this often, should a wake-up be missed (Redis reconnecting)
_SSE_PING_S = 15


@router.get(
    "/v1/jobs/{job_id}/logs",
    operation_id="getJobLogs",
    summary="Watch a job's build and run output",
    description=(
        "With `Accept: text/event-stream`: Server-Sent Events as they happen, each with an `id`. "
        '`event: log` (`data: {"stage": "build"|"run", "line": …}`) for each line the build or '
        'the container prints, `event: status` (`data: {"status": …}`) for each status the job '
        'moves to, then `event: end` (`data: {"status": <terminal>}`), after which the stream '
        "closes. A reconnecting client sends `Last-Event-ID` and receives what followed it, "
        "without loss or repeats. Otherwise: `text/plain`, the stored log so far, one "
        "`<stage> | <line>` per line. Lines are cleaned (terminal escapes and control characters "
        "removed, invalid UTF-8 replaced, at most DOCKGUARD_LOG_LINE_MAX_CHARS characters); a "
        "job keeps its last DOCKGUARD_LOG_MAX_LINES entries, for as long as the job itself."
    ),
    responses={
        200: {
            "description": "The log, as events or as text",
            "content": {"text/event-stream": {}, "text/plain": {}},
        },
        **problem_responses(404, 422),
    },
    response_class=Response,
)
async def job_logs(job_id: str, request: Request, services: ServicesDep) -> Response:
    if not _JOB_ID.fullmatch(job_id) or await services.store.get(job_id) is None:
        raise JobNotFound(job_id[:64])
    redis = services.redis
    if "text/event-stream" not in request.headers.get("accept", ""):
        text = "".join(
            f"{event.data.get('stage', '?')} | {event.data.get('line', '')}\n"
            for event in await logs.lines(redis, job_id)
        )
        return PlainTextResponse(text, media_type="text/plain; charset=utf-8")
    after = request.headers.get("last-event-id") or None
    if after is not None and not logs.valid_id(after):
        raise SubmissionError(
            ErrorCode.REQUEST_INVALID,
            "Last-Event-ID must be the id of an event this endpoint sent (<ms>-<seq>)",
            http_status=422,
        )
    return EventSourceResponse(
        _log_events(services, job_id, after),
        ping=_SSE_PING_S,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _log_events(
    services: Services, job_id: str, after: str | None
) -> AsyncIterator[ServerSentEvent]:
    """The job's log entries after `after`, as they are added, up to and including `end`."""
    events = services.events
    if events is not None:
        await events.subscribed()
    while True:
        with events.log_added(job_id) if events is not None else contextlib.nullcontext() as added:
            batch = await logs.read(services.redis, job_id, after)
            for entry in batch:
                yield ServerSentEvent(
                    data=json.dumps(entry.data, ensure_ascii=False), event=entry.kind, id=entry.id
                )
                after = entry.id
                if entry.kind == "end":
                    return
            if batch:
                continue
            if not await logs.exists(services.redis, job_id):
                # No stream: the job expired, or it predates live logs. Say how it ended.
                job = await services.store.get(job_id)
                if job is None or job.status.terminal:
                    status = None if job is None else job.status.value
                    yield ServerSentEvent(data=json.dumps({"status": status}), event="end")
                    return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LOG_WAKE_S):
                    if added is None:
                        await asyncio.sleep(_LOG_WAKE_S)
                    else:
                        await added.wait()
