"""Each request's correlation id and its one access log line (pure ASGI, no BaseHTTPMiddleware).

The id: the client's `X-Request-ID` (1-64 printable ASCII characters), else the trace id of a
valid W3C `traceparent`, else a new one. It is in every log line written while the request is
handled (logs.request_id_var), on every answer (`X-Request-ID`), in every problem document
(`request_id`), and on the job a submission makes (`Job.request_id`), from where the worker
carries it into its log lines, the job's Docker objects' labels and the webhook.

The line, at the end of each request: method, route template (never the raw path: ids and
hostile paths stay out of it), status, duration_ms, request_id, client, and job_id when the
request was about one.

With tracing on (`tracing.py`), the request is also a server span, parented on `traceparent`."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from opentelemetry.trace import SpanKind, StatusCode
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockguard import metrics, tracing
from dockguard.api.headers import with_security_headers
from dockguard.logs import request_id_var

log = logging.getLogger("dockguard.access")

HEADER = "X-Request-ID"
_RAW_HEADER = HEADER.lower().encode("latin-1")
_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,64}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def request_id_of(headers: Headers) -> str:
    given = headers.getlist("x-request-id")
    if len(given) == 1 and _REQUEST_ID.fullmatch(given[0]):
        return given[0]
    parents = headers.getlist("traceparent")
    if len(parents) == 1 and (match := _TRACEPARENT.fullmatch(parents[0].strip())):
        trace_id, parent_id = match.groups()
        if trace_id != "0" * 32 and parent_id != "0" * 16:
            return trace_id
    return uuid.uuid4().hex


class RequestContext:
    """The outermost layer (app.py puts it outside even Starlette's error handler): sets the
    request id for the request's duration, answers it with the security headers (headers.py),
    and logs the request; answers a probe's `/healthz` itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = request_id  # for the catch-all 500
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = with_security_headers(
                    [
                        *(h for h in message.get("headers", []) if h[0].lower() != _RAW_HEADER),
                        (_RAW_HEADER, request_id.encode("latin-1")),
                    ]
                )
            await send(message)

        token = request_id_var.set(request_id)
        try:
            if _is_probe(scope):
                await _healthz(scope, send_with_id)  # no router, no dependencies
            elif tracing.enabled():
                await self._traced(scope, receive, send_with_id, request_id, lambda: status)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            _log(scope, status, started, request_id)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, status: Callable[[], int]
    ) -> None:
        """The request as a server span, a child of the caller's `traceparent` if it sent one;
        named once routing knows its template."""
        parent = tracing.context_from(Headers(scope=scope))
        attributes = {"http.request.method": scope["method"], "dockguard.request_id": request_id}
        with tracing.span(
            scope["method"], parent=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            assert span is not None
            try:
                await self.app(scope, receive, send)
            finally:
                template = _template(scope)
                span.update_name(f"{scope['method']} {template}")
                span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status())
                if (job_id := _job_id(scope)) is not None:
                    span.set_attribute("dockguard.job_id", job_id)
                if status() >= 500:
                    span.set_status(StatusCode.ERROR)


HEALTHZ = "/healthz"
_HEALTHZ_BODY = b'{"status":"ok"}'
_HEALTHZ_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEALTHZ_BODY)).encode()),
]


def _is_probe(scope: Scope) -> bool:
    """`GET /healthz` from a probe; a browser's (it sends `Origin`) goes the way with CORS."""
    if scope["path"] != HEALTHZ or scope["method"] not in ("GET", "HEAD"):
        return False
    return not any(name == b"origin" for name, _ in scope["headers"])


async def _healthz(scope: Scope, send: Send) -> None:
    """`GET /healthz`, answered here, in the outermost layer: liveness needs nothing else (the
    route in routes.py documents it in the OpenAPI schema and answers the same)."""
    scope["healthz"] = True
    await send({"type": "http.response.start", "status": 200, "headers": list(_HEALTHZ_HEADERS)})
    body = b"" if scope["method"] == "HEAD" else _HEALTHZ_BODY
    await send({"type": "http.response.body", "body": body})


def _template(scope: Scope) -> str:
    if scope.get("healthz"):
        return HEALTHZ
    return getattr(scope.get("route"), "path", None) or "unmatched"


def _job_id(scope: Scope) -> str | None:
    """The job the request created (set by the route) or named in its path, if well-formed."""
    job_id = scope.get("state", {}).get("job_id") or scope.get("path_params", {}).get("job_id")
    return job_id if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) else None


def _log(scope: Scope, status: int, started: float, request_id: str) -> None:
    # A probe's `/healthz` (every few seconds, from every orchestrator replica) is counted in the
    # metrics but logged only at DEBUG: its lines would be most of the log and tell nothing.
    access_line(
        method=scope["method"],
        route=_template(scope),
        status=status,
        duration_s=time.perf_counter() - started,
        request_id=request_id,
        client=scope.get("client"),
        job_id=_job_id(scope),
        level=logging.DEBUG if scope.get("healthz") else logging.INFO,
    )


def access_line(
    *,
    method: str,
    route: str,
    status: int,
    duration_s: float | None,
    request_id: str,
    client: tuple[str, int] | None,
    job_id: str | None = None,
    level: int = logging.INFO,
) -> None:
    """The request's one access line, and its count in the metrics (here and for the requests
    the HTTP parser refuses, api/server.py)."""
    extra = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": None if duration_s is None else round(duration_s * 1000, 2),
        "request_id": request_id,
        "client": f"{client[0]}:{client[1]}" if client else None,
        "job_id": job_id,
    }
    log.log(level, "request", extra=extra)
    metrics.http_request(route, method, status, duration_s or 0.0)
