"""Every error response is `application/problem+json` (RFC 9457) with dockguard's stable `code`.
No stack trace or third-party text ever reaches a client."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount, Route

from dockguard.errors import DockguardError, ErrorCode
from dockguard.logs import request_id_var
from dockguard.models import Problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    *,
    request_id: str | None = None,
) -> JSONResponse:
    """The problem document, with the request's id (the current one unless given)."""
    problem = Problem(
        type=f"urn:dockguard:error:{code}",
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        code=code,
        request_id=request_id or request_id_var.get(),
    )
    return JSONResponse(
        problem.model_dump(), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the problem documents a route can return."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


def _allowed(request: Request, exc: StarletteHTTPException) -> str:
    """The methods of every route at the request's path, for a 405's `Allow` (RFC 9110):
    Starlette's own header names only the first matching route's."""
    methods = {m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()}
    for route in _routes(request.app.router.routes):
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def _routes(routes: Iterable[BaseRoute]) -> Iterator[Route]:
    for route in routes:
        if isinstance(route, Route):
            yield route
        # FastAPI wraps an included router (`original_router`); a Mount has `routes`.
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is None and isinstance(route, Mount):
            inner = route.routes
        yield from _routes(inner or [])


def install(app: FastAPI) -> None:
    @app.exception_handler(DockguardError)
    async def _dockguard(_: Request, exc: DockguardError) -> JSONResponse:
        return problem_response(exc.http_status, exc.code.value, exc.message, exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
            for err in exc.errors()[:5]
        )
        return problem_response(422, ErrorCode.REQUEST_INVALID.value, f"invalid request: {where}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.REQUEST_INVALID)
        headers = {"Allow": _allowed(request, exc)} if exc.status_code == 405 else None
        return problem_response(exc.status_code, code.value, str(exc.detail), headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("redis unavailable", extra={"why": repr(exc)[:300]})
        return problem_response(
            503, ErrorCode.SERVICE_UNAVAILABLE.value, "the job store is unavailable; try again"
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Sent from Starlette's outermost layer, after the request's context has ended.
        request_id = getattr(request.state, "request_id", None)
        log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        return problem_response(
            500,
            ErrorCode.INTERNAL_ERROR.value,
            "an internal error occurred",
            {"X-Request-ID": request_id} if request_id else None,
            request_id=request_id,
        )
