"""The FastAPI application factory. Clients are built in the lifespan, never at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from dockguard import __version__, metrics
from dockguard.jobs.worker import create_worker, serve_jobs, stop_worker
from dockguard.models import SubmitRequest
from dockguard.services import Services
from dockguard.settings import Settings

from . import context, docs, headers, metrics_port, problems, startup
from .routes import router, serve_fast

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, run_worker: bool = False) -> FastAPI:
    """The API; with `run_worker`, an arq worker runs in the same process and event loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                services = await Services.open(settings)
                stack.push_async_callback(services.close)
                app.state.services = services
                if settings.api_metrics_port:
                    await stack.enter_async_context(
                        metrics_port.serving(
                            services,
                            settings.host,
                            settings.api_metrics_port,
                            shared=metrics.in_several_processes(),
                        )
                    )
                if run_worker:  # last: nothing that can still fail to start follows a job
                    await stack.enter_async_context(_worker(services))
            except Exception as exc:
                startup.failed(exc)  # `serve` says why, then exits non-zero
                raise
            log.info("dockguard API started", extra={"worker": run_worker})
            yield

    app = _App(
        title="dockguard",
        version=__version__,
        summary="Scan, build and run untrusted Dockerfiles in a hardened sandbox.",
        lifespan=lifespan,
        docs_url=None,  # docs.py serves both pages without a CDN
        redoc_url=None,
    )
    problems.install(app)
    app.include_router(router)
    serve_fast(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    docs.install(app)
    headers.install(app, settings.cors_origins)
    return app


@asynccontextmanager
async def _worker(services: Services) -> AsyncIterator[None]:
    """An arq worker in this process, taking jobs for as long as the block runs."""
    worker = create_worker(services, handle_signals=False)
    task = asyncio.create_task(serve_jobs(worker))
    try:
        yield
    finally:
        await stop_worker(worker)
        task.cancel()


class _App(FastAPI):
    """FastAPI, with context.RequestContext around its whole stack (outside Starlette's error
    handler and FastAPI's own layers): the request id, the security headers and the access line
    cover every answer, the catch-all 500 too, and a probe's `/healthz` is answered before any of
    the stack runs."""

    def build_middleware_stack(self) -> ASGIApp:
        return context.RequestContext(super().build_middleware_stack())


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the submit body's model (the route reads its body by hand to accept
    two content types, so FastAPI cannot see the model on its own)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        submit = SubmitRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in submit.pop("$defs", {}).items():  # RequestedLimits
            schema["components"]["schemas"].setdefault(name, definition)
        schema["components"]["schemas"]["SubmitRequest"] = submit
        app.openapi_schema = schema
    return app.openapi_schema
