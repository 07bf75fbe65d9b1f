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
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dockguard.services import Services

from .routes import metrics_answer

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


class MetricsPortUnavailable(Exception):
    """The port cannot be listened on (in use, or not allowed)."""


def listening_socket(host: str, port: int, *, shared: bool) -> socket.socket:
    """A socket listening on host:port; `shared`: with SO_REUSEPORT, for the several API
    processes of one `serve --workers N`."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise MetricsPortUnavailable(f"cannot serve metrics on {host}:{port} ({exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise MetricsPortUnavailable(f"cannot serve metrics on {host}:{port} ({why})") from exc
    return sock


def check_port(host: str, port: int, *, shared: bool) -> None:
    """At start, before anything runs: can the port be listened on? (`MetricsPortUnavailable`.)"""
    listening_socket(host, port, shared=shared).close()


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
                    raise MetricsPortUnavailable(f"metrics on {host}:{port} did not start")
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
