"""`DOCKGUARD_API_METRICS_PORT`: the API's `/metrics` on a port of its own as well, with nothing
else on it. dockguard has no authentication (the gateway in front does it): a network policy
that lets Prometheus reach the API's port lets it submit and read jobs too, one that lets it
reach this port only lets it scrape.

It is a second uvicorn server in the API's event loop, started and stopped by the app's
lifespan, answering `GET /metrics` exactly as the API's port does (the same gauges read from
Redis, the same exposition) and 404 to anything else. uvicorn's own server handles the signals;
this one only follows. With `serve --workers N` each process serves it on one port
(SO_REUSEPORT, which Linux allows only to the same user): whichever answers adds up all of
their metrics (metrics.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dockguard.services import Services

from .routes import metrics_answer
from .sockets import listening_socket

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


def metrics_only_app(services: Services) -> Starlette:
    async def scrape(request: Request) -> Response:
        return await metrics_answer(services)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])


class _Follower(uvicorn.Server):
    """A uvicorn server that leaves the signals to the API's: it stops when told to."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(services: Services, host: str, port: int, *, shared: bool) -> AsyncIterator[None]:
    """`GET /metrics` on host:port for as long as the block runs."""
    sock = listening_socket(host, port, shared=shared)
    config = uvicorn.Config(
        metrics_only_app(services),
        lifespan="off",
        ws="none",  # a WebSocket upgrade is a 404 like any other request but a scrape
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )
    server = _Follower(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()  # its error, if it had one
                    raise RuntimeError(f"metrics on {host}:{port} did not start")
                await asyncio.sleep(0.01)
        log.info("API metrics served", extra={"host": host, "port": port})
        yield
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sock.close()
