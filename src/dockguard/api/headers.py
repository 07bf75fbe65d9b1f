"""The headers every answer carries, and CORS: the one place for both decisions.

Every answer gets `SECURITY_HEADERS` unless it brings its own value of one of them: only docs.py's
do, a Content-Security-Policy each docs page works under and a Cache-Control for their assets.
The API itself answers only JSON, so its policy allows nothing at all. CORS is Starlette's, pure
ASGI (no `BaseHTTPMiddleware`): no extra task per request, and streamed bodies pass untouched.
"""

from __future__ import annotations

from fastapi import FastAPI, Response
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware

from dockguard.errors import ErrorCode

from .problems import problem_response

# Nothing may be loaded, framed, submitted or used as a base URL by a JSON answer.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # job records change and may be private: never kept by a cache
    "Content-Security-Policy": API_CSP,
}
_RAW = [
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in SECURITY_HEADERS.items()
]

CORS_METHODS = ("GET", "POST", "DELETE")
CORS_REQUEST_HEADERS = ("Content-Type", "Idempotency-Key", "X-Request-ID")
CORS_EXPOSED_HEADERS = ("Location", "Retry-After", "X-Request-ID")


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` (ASGI form) plus each security header they do not set themselves."""
    present = {name.lower() for name, _ in headers}
    return [*headers, *((name, value) for name, value in _RAW if name not in present)]


class ProblemCORS(CORSMiddleware):
    """Starlette's CORS, but a refused preflight is a problem document like every other error
    (Starlette answers it in plain text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode("latin-1").removeprefix("Disallowed CORS ")
        problem = problem_response(
            response.status_code,
            ErrorCode.REQUEST_INVALID.value,
            f"CORS preflight refused; not allowed: {refused}",
        )
        for name, value in response.headers.items():
            if name not in ("content-type", "content-length"):
                problem.headers[name] = value
        return problem


def install(app: FastAPI, cors_origins: list[str]) -> None:
    """CORS, only for `cors_origins` (none: off). The security headers are added by the outermost
    layer (context.RequestContext), so that every answer carries them, a preflight's and the
    catch-all 500's included."""
    if cors_origins:
        app.add_middleware(
            ProblemCORS,
            allow_origins=cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
        )
