"""How uvicorn serves the API (`dockguard serve`, and the end-to-end tests' servers): uvloop and
httptools (uvicorn's fastest loop and parser), and a parser that refuses malformed HTTP with a
problem document like every other error, instead of uvicorn's plain text.

One process (`serve`): `Server`, uvicorn's own, which also tells the in-process worker about a
stop signal. Several (`serve --workers N`): uvicorn's supervisor, which starts N processes on one
socket, starts a new one when one dies, and on SIGTERM stops them all (each finishing its open
requests within DOCKGUARD_API_SHUTDOWN_GRACE_S); each builds its app with `app_from_env`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dockguard import logs, metrics
from dockguard.api.app import create_app
from dockguard.api.context import access_line
from dockguard.api.headers import with_security_headers
from dockguard.api.problems import PROBLEM_JSON
from dockguard.errors import ErrorCode
from dockguard.jobs.worker import request_stop_all
from dockguard.models import Problem
from dockguard.settings import Settings

UNPARSED_ROUTE = "unparsed"  # the route and method labels of a request the parser refused
UNPARSED_METHOD = "OTHER"
_DETAIL = "the request is not valid HTTP/1.1 (its request line or a header is malformed)"


def malformed_request_answer(request_id: str) -> bytes:
    """The whole HTTP answer to a request the parser refused (the connection is closed after it:
    nothing more can be read from it safely)."""
    body = Problem(
        type=f"urn:dockguard:error:{ErrorCode.REQUEST_INVALID.value}",
        title="Bad Request",
        status=400,
        detail=_DETAIL,
        code=ErrorCode.REQUEST_INVALID.value,
        request_id=request_id,
    ).model_dump_json()
    headers = with_security_headers(
        [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ]
    )
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"HTTP/1.1 400 Bad Request\r\n" + head + b"\r\n" + body.encode()


class ProblemHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request its parser refuses (a method it does not know, a
    control character in a header, a broken request line, a bad chunk) gets
    `malformed_request_answer`."""

    def send_400_response(self, msg: str) -> None:
        request_id = uuid.uuid4().hex
        self.transport.write(malformed_request_answer(request_id))
        self.transport.close()
        # Seen like every answer: an access line and the request counters (no route, no method).
        access_line(
            method=UNPARSED_METHOD,
            route=UNPARSED_ROUTE,
            status=400,
            duration_s=None,
            request_id=request_id,
            client=self.client,
        )


# For `uvicorn.run` / `uvicorn.Config`, besides the app, host and port. The loop is uvicorn's
# "auto": uvloop (a dependency). Logging is dockguard's own (logs.py); its access line is
# context.py's, so uvicorn's is off.
UVICORN_OPTIONS: dict[str, Any] = {
    "http": ProblemHttpTools,
    "log_config": None,
    "access_log": False,
    "proxy_headers": False,
    "timeout_graceful_shutdown": 10,
}
# The import string of `app_from_env`, for uvicorn's worker processes (they import it).
APP_FACTORY = "dockguard.api.server:app_from_env"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """`UVICORN_OPTIONS` with the settings' grace: on SIGTERM uvicorn stops accepting, lets the
    open requests (a long-poll, a log stream) finish for that long, cancels the rest, then runs
    the app's shutdown."""
    return {**UVICORN_OPTIONS, "timeout_graceful_shutdown": settings.api_shutdown_grace_s}


class Server(uvicorn.Server):
    """uvicorn's server (one process). A stop signal also reaches this process's worker at once
    (`request_stop_all`): it takes no new job while the open requests finish, its jobs' grace
    runs from the signal, and a second signal hands them back."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        request_stop_all()
        super().handle_exit(sig, frame)


def app_from_env() -> FastAPI:
    """The API of one of `serve --workers N`'s processes, from the settings of the environment
    (the parent checked them): API only, its jobs are `dockguard worker`'s. uvicorn calls it once
    in each process it starts."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings, run_worker=False)
    lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def with_metrics_released(app: FastAPI) -> AsyncIterator[Any]:
        try:
            async with lifespan(app) as state:
                yield state
        finally:
            metrics.process_exiting()

    app.router.lifespan_context = with_metrics_released
    return app
