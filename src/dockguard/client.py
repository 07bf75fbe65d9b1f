"""A typed client of dockguard's v1 HTTP API, on httpx: `Client` (sync) and `AsyncClient`
(async), with the same methods, answers (`dockguard.models.Job`, `JobList`) and errors.

    with Client("http://127.0.0.1:8000") as dg:   # default: $DOCKGUARD_URL, else that URL
        job = dg.wait(dg.submit(dockerfile).id)

Every failure is one exception type, whatever went wrong:

    DockguardError      .code, .status (the HTTP status, or None), .message, .problem
    │   an error answer: the problem document's `code` (job_not_found, dockerfile_forbidden,
    │   queue_full, job_finished, …), `.problem` the document itself; or, without an answer,
    │   connection_failed (no connection, or it broke), timeout (no answer in time),
    │   url_invalid, response_invalid (an answer that is not the API's)
    └── WaitTimeout     wait_timeout: the job had not ended in time; `.job` is the last seen

httpx's exceptions are translated where they enter (`raise DockguardError(...) from exc`): none
escapes. Every call has a timeout, `timeout_s`, plus the wait of a long-poll. (This is the
client's error type, not the server's `dockguard.errors.DockguardError`.)
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel, ValidationError

from dockguard.models import Job, JobList, JobStatus, RequestedLimits

__all__ = [
    "DEFAULT_URL",
    "URL_ENV",
    "AsyncClient",
    "Client",
    "DockguardError",
    "LogEvent",
    "WaitTimeout",
]

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "DOCKGUARD_URL"
MAX_WAIT_S = 60.0  # the server's bound on one long-poll (`?wait=`)
DEFAULT_WAIT_TIMEOUT_S = 1800.0
_STREAM_READ_S = 45.0  # a log stream is pinged every 15 s: three missed pings is a dead stream
_RECONNECTS = 5  # consecutive reconnections of a dropped log stream before giving up
# Idle connections are dropped before the server's keep-alive (uvicorn: 5 s) can end them: a
# request sent on a connection the server is closing fails with no answer.
_LIMITS = httpx.Limits(keepalive_expiry=2.0)
_NO_LONG_POLL_S = 0.5  # poll interval should a server answer a long-poll at once

LimitsArg = RequestedLimits | Mapping[str, float]
_Model = TypeVar("_Model", bound=BaseModel)


class DockguardError(Exception):
    """A call to dockguard failed: an error answer (`status` set) or no answer at all."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
        attempt: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{attempt}: {message} ({code})" if attempt else f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status
        self.problem = problem
        self.attempt = attempt
        self.retry_after_s = retry_after_s  # from `Retry-After` (queue_full)

    @property
    def detail(self) -> str:
        return self.message


class WaitTimeout(DockguardError):
    """The job had not ended within the wait; `job` is how it was last seen."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(
            "wait_timeout",
            f"job {job.id} is still {job.status.value} after {timeout_s:g} s",
            attempt=f"waiting for job {job.id}",
        )
        self.job = job


@dataclass(frozen=True)
class LogEvent:
    """One event of a job's log: a line (`log`), a status change (`status`), or the `end`.

    `stage` and `line` are set for `log`; `status` for `status` and `end` (None at the end of a
    job that no longer exists). `id` is the event's id, to resume after (`last_event_id`);
    None for lines read from the plain-text log (`follow=False`)."""

    kind: Literal["log", "status", "end"]
    id: str | None = None
    stage: str | None = None
    line: str | None = None
    status: JobStatus | None = None

    @property
    def at(self) -> datetime | None:
        """When the server stored the event (its id is `<unix ms>-<seq>`)."""
        ms, _, _ = (self.id or "").partition("-")
        return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms.isdigit() else None

    def __str__(self) -> str:
        if self.kind == "log":
            return f"{self.stage} | {self.line}"
        return f"{self.kind}: {self.status.value if self.status else None}"


# --- what each call sends, and how its answer is read (shared by both clients) -------------------


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    attempt: str  # what is being attempted, for error messages: "reading job …"
    params: dict[str, str | int | float] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    wait_s: float = 0.0  # a long-poll: added to the timeout


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def _submit_call(
    dockerfile: str | bytes,
    limits: LimitsArg | None,
    idempotency_key: str | None,
    wait: float | None,
    callback_url: str | None,
) -> _Call:
    if idempotency_key is not None and not (
        idempotency_key.isascii() and idempotency_key.isprintable()
    ):
        # What a header cannot carry; the server checks the rest (1-200 characters).
        raise DockguardError(
            "request_invalid",
            "an Idempotency-Key is printable ASCII characters",
            attempt="submitting a job",
        )
    headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
    params: dict[str, str | int | float] = {} if wait is None else {"wait": wait}
    text = _text(dockerfile)
    if text is None:
        # Sent as it is, so that the server refuses it with its own code (dockerfile_encoding).
        assert isinstance(dockerfile, bytes)
        return _Call(
            "POST",
            "/v1/jobs",
            "submitting a job",
            params=params,
            content=dockerfile,
            headers=headers | {"Content-Type": "text/plain"},
            wait_s=wait or 0.0,
        )
    body: dict[str, Any] = {"dockerfile": text}
    if limits is not None:
        requested = limits if isinstance(limits, RequestedLimits) else None
        body["limits"] = requested.model_dump(exclude_none=True) if requested else dict(limits)
    if callback_url is not None:
        body["callback_url"] = callback_url
    return _Call(
        "POST",
        "/v1/jobs",
        "submitting a job",
        params=params,
        # ASCII JSON: a lone surrogate travels as `\udXXX`, for the server to refuse by its code.
        content=json.dumps(body).encode("ascii"),
        headers=headers | {"Content-Type": "application/json"},
        wait_s=wait or 0.0,
    )


def _text(dockerfile: str | bytes) -> str | None:
    if isinstance(dockerfile, str):
        return dockerfile
    try:
        return dockerfile.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _get_call(job_id: str, wait: float | None) -> _Call:
    params: dict[str, str | int | float] = {} if wait is None else {"wait": wait}
    return _Call("GET", _job_path(job_id), f"reading job {job_id}", params, wait_s=wait or 0.0)


def _cancel_call(job_id: str) -> _Call:
    return _Call("DELETE", _job_path(job_id), f"cancelling job {job_id}")


def _list_call(status: JobStatus | str | None, limit: int | None, cursor: str | None) -> _Call:
    params: dict[str, str | int | float] = {}
    if status is not None:
        params["status"] = str(status)
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    return _Call("GET", "/v1/jobs", "listing jobs", params)


def _text_call(job_id: str) -> _Call:
    return _Call("GET", f"{_job_path(job_id)}/logs", f"reading the log of job {job_id}")


def _base_url(url: str | None) -> str:
    return (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def _transport_error(exc: Exception, attempt: str, url: str) -> DockguardError:
    code = "connection_failed"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        message = f"cannot connect to {url}: {exc}"
    elif isinstance(exc, httpx.TimeoutException):
        code, message = "timeout", f"{url} did not answer in time"
    elif isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        code, message = "url_invalid", f"{url!r} is not an http(s) URL: {exc}"
    elif isinstance(exc, httpx.LocalProtocolError):
        code, message = "request_invalid", f"the request cannot be sent: {exc}"
    elif isinstance(exc, httpx.TransportError):
        message = f"the connection to {url} failed: {exc}"
    else:  # decoding errors, too many redirects: not the API's answer
        code, message = "response_invalid", f"unreadable answer from {url}: {exc}"
    return DockguardError(code, message, attempt=attempt)


def _error_answer(response: httpx.Response, attempt: str) -> DockguardError:
    """A non-2xx answer; a problem document (application/problem+json) gives its code."""
    try:
        body = response.json()
    except ValueError:
        body = None
    retry_after = response.headers.get("retry-after", "")
    retry_after_s = float(retry_after) if retry_after.isdigit() else None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        message = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
        return DockguardError(
            body["code"],
            message,
            status=response.status_code,
            problem=body,
            attempt=attempt,
            retry_after_s=retry_after_s,
        )
    return DockguardError(
        "http_error",
        f"HTTP {response.status_code}: {response.text[:200]}",
        status=response.status_code,
        attempt=attempt,
        retry_after_s=retry_after_s,
    )


def _checked(response: httpx.Response, attempt: str) -> httpx.Response:
    if not response.is_success:
        raise _error_answer(response, attempt)
    return response


def _model(response: httpx.Response, model: type[_Model], attempt: str) -> _Model:
    try:
        return model.model_validate_json(_checked(response, attempt).content)
    except ValidationError as exc:
        raise DockguardError(
            "response_invalid",
            f"the answer is not a {model.__name__} ({exc.error_count()} errors)",
            status=response.status_code,
            attempt=attempt,
        ) from exc


def _sse_event(sse: ServerSentEvent, attempt: str) -> LogEvent | None:
    """The event, or None for a kind this client does not know (a newer server's)."""
    if sse.event not in ("log", "status", "end"):
        return None
    try:
        data = json.loads(sse.data)
        if sse.event == "log":
            return LogEvent("log", sse.id or None, str(data["stage"]), str(data["line"]))
        status = None if data.get("status") is None else JobStatus(data["status"])
        return LogEvent("end" if sse.event == "end" else "status", sse.id or None, status=status)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DockguardError(
            "response_invalid", f"unreadable {sse.event} event: {sse.data[:200]!r}", attempt=attempt
        ) from exc


def _text_events(text: str) -> Iterator[LogEvent]:
    # split("\n"), not splitlines(): a line may hold other characters splitlines() cuts at.
    for entry in text.split("\n"):
        if entry:
            stage, _, line = entry.partition(" | ")
            yield LogEvent("log", stage=stage, line=line)


class _Follow:
    """A followed log stream's place: where to resume it, and whether to try again."""

    def __init__(self, job_id: str, after: str | None) -> None:
        self.path = f"{_job_path(job_id)}/logs"
        self.attempt = f"following the log of job {job_id}"
        self.after = after
        self.connected = False  # a first connection that fails is an error, not a drop
        self.failures = 0

    def headers(self) -> dict[str, str]:
        return {} if self.after is None else {"Last-Event-ID": self.after}

    def opened(self, response: httpx.Response) -> None:
        """Raises the error answer (read already) instead of a stream."""
        if not response.is_success:
            raise _error_answer(response, self.attempt)
        self.connected = True

    def seen(self, event: LogEvent) -> None:
        self.failures = 0
        if event.id is not None:
            self.after = event.id

    def retry_in(self, why: DockguardError) -> float:
        """Seconds to wait before resuming after `why`; raises it when not to resume."""
        if not self.connected or self.failures >= _RECONNECTS:
            raise why
        self.failures += 1
        return float(min(0.25 * 2 ** (self.failures - 1), 4.0))

    def cut(self) -> DockguardError:
        return DockguardError(
            "connection_failed", "the log stream closed before its end", attempt=self.attempt
        )


def _next_wait(left_s: float) -> float | None:
    """The next long-poll's wait: at most the server's bound, never past the deadline."""
    return min(MAX_WAIT_S, left_s) if left_s > 0 else None


def _answered_early(wait_s: float | None, took_s: float) -> bool:
    """A long-poll of a job still going that came back well before its wait: the server does
    not long-poll (it answers at once), so poll it gently instead."""
    return wait_s is not None and took_s < wait_s / 2


def _stream_timeout(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, read=max(timeout_s, _STREAM_READ_S))


# --- the clients ---------------------------------------------------------------------------------


class Client:
    """dockguard's API, synchronously. A context manager; or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = _base_url(url)
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout_s,
            limits=_LIMITS,
            transport=transport,
            headers={"User-Agent": "dockguard-client", **(headers or {})},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        try:
            return self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.content,
                headers=call.headers,
                timeout=self.timeout_s + call.wait_s,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, call.attempt, self.url) from exc

    def submit(
        self,
        dockerfile: str | bytes,
        *,
        limits: LimitsArg | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Submit a Dockerfile (`POST /v1/jobs`); with `wait` (≤ 60 s), answer once it has ended
        or that wait has passed. `bytes` must be UTF-8 (else the server refuses them:
        dockerfile_encoding)."""
        call = _submit_call(dockerfile, limits, idempotency_key, wait, callback_url)
        return _model(self._send(call), Job, call.attempt)

    def get(self, job_id: str, *, wait: float | None = None) -> Job:
        """The job now; with `wait` (≤ 60 s), as soon as it has ended or that wait has passed."""
        call = _get_call(job_id, wait)
        return _model(self._send(call), Job, call.attempt)

    def wait(self, job_id: str, *, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> Job:
        """The job once it has ended (long-polls, each at most 60 s); `WaitTimeout` if it has not
        within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            started = time.monotonic()
            wait_s = _next_wait(deadline - started)
            job = self.get(job_id, wait=wait_s)
            if job.status.terminal:
                return job
            if (left := deadline - time.monotonic()) <= 0:
                raise WaitTimeout(job, timeout_s)
            if _answered_early(wait_s, time.monotonic() - started):
                time.sleep(min(_NO_LONG_POLL_S, left))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (`DELETE`); one that has already ended: job_finished (409)."""
        call = _cancel_call(job_id)
        return _model(self._send(call), Job, call.attempt)

    def list(
        self,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next."""
        call = _list_call(status, limit, cursor)
        return _model(self._send(call), JobList, call.attempt)

    def iter_jobs(
        self, *, status: JobStatus | str | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """Every stored job (with `status`), newest first, page after page."""
        cursor = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def logs_text(self, job_id: str) -> str:
        """The job's log so far, one `<stage> | <line>` per line."""
        call = _text_call(job_id)
        return _checked(self._send(call), call.attempt).text

    def logs(
        self, job_id: str, *, follow: bool = True, last_event_id: str | None = None
    ) -> Iterator[LogEvent]:
        """The job's log events as they happen, up to and including `end` (a dropped connection
        is resumed after the last event, without loss or repeats). `follow=False`: the lines
        so far (kind `log`, no ids), from the plain-text log."""
        if not follow:
            yield from _text_events(self.logs_text(job_id))
            return
        place = _Follow(job_id, last_event_id)
        while True:
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    place.path,
                    headers=place.headers(),
                    timeout=_stream_timeout(self.timeout_s),
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                    place.opened(source.response)
                    for sse in source.iter_sse():
                        if (event := _sse_event(sse, place.attempt)) is not None:
                            place.seen(event)
                            yield event
                            if event.kind == "end":
                                return
                why = place.cut()
            except SSEError as exc:
                raise DockguardError("response_invalid", str(exc), attempt=place.attempt) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                why = _transport_error(exc, place.attempt, self.url)
                why.__cause__ = exc
            time.sleep(place.retry_in(why))


class AsyncClient:
    """dockguard's API, asynchronously: `Client`'s methods, awaited (`logs`: `async for`)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = _base_url(url)
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout_s,
            limits=_LIMITS,
            transport=transport,
            headers={"User-Agent": "dockguard-client", **(headers or {})},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        try:
            return await self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.content,
                headers=call.headers,
                timeout=self.timeout_s + call.wait_s,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, call.attempt, self.url) from exc

    async def submit(
        self,
        dockerfile: str | bytes,
        *,
        limits: LimitsArg | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """As `Client.submit`."""
        call = _submit_call(dockerfile, limits, idempotency_key, wait, callback_url)
        return _model(await self._send(call), Job, call.attempt)

    async def get(self, job_id: str, *, wait: float | None = None) -> Job:
        """As `Client.get`."""
        call = _get_call(job_id, wait)
        return _model(await self._send(call), Job, call.attempt)

    async def wait(self, job_id: str, *, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> Job:
        """As `Client.wait`."""
        deadline = time.monotonic() + timeout_s
        while True:
            started = time.monotonic()
            wait_s = _next_wait(deadline - started)
            job = await self.get(job_id, wait=wait_s)
            if job.status.terminal:
                return job
            if (left := deadline - time.monotonic()) <= 0:
                raise WaitTimeout(job, timeout_s)
            if _answered_early(wait_s, time.monotonic() - started):
                await asyncio.sleep(min(_NO_LONG_POLL_S, left))

    async def cancel(self, job_id: str) -> Job:
        """As `Client.cancel`."""
        call = _cancel_call(job_id)
        return _model(await self._send(call), Job, call.attempt)

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """As `Client.list`."""
        call = _list_call(status, limit, cursor)
        return _model(await self._send(call), JobList, call.attempt)

    async def iter_jobs(
        self, *, status: JobStatus | str | None = None, page_size: int = 100
    ) -> AsyncGenerator[Job, None]:
        """As `Client.iter_jobs`."""
        cursor = None
        while True:
            page = await self.list(status=status, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def logs_text(self, job_id: str) -> str:
        """As `Client.logs_text`."""
        call = _text_call(job_id)
        return _checked(await self._send(call), call.attempt).text

    async def logs(
        self, job_id: str, *, follow: bool = True, last_event_id: str | None = None
    ) -> AsyncGenerator[LogEvent, None]:
        """As `Client.logs`. Leaving the loop early closes the connection once the iterator is
        closed (`contextlib.aclosing`) or collected."""
        if not follow:
            for entry in _text_events(await self.logs_text(job_id)):
                yield entry
            return
        place = _Follow(job_id, last_event_id)
        while True:
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    place.path,
                    headers=place.headers(),
                    timeout=_stream_timeout(self.timeout_s),
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                    place.opened(source.response)
                    async for sse in source.aiter_sse():
                        if (event := _sse_event(sse, place.attempt)) is not None:
                            place.seen(event)
                            yield event
                            if event.kind == "end":
                                return
                why = place.cut()
            except SSEError as exc:
                raise DockguardError("response_invalid", str(exc), attempt=place.attempt) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                why = _transport_error(exc, place.attempt, self.url)
                why.__cause__ = exc
            await asyncio.sleep(place.retry_in(why))
