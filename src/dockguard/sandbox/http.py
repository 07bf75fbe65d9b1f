"""Raw Engine API requests for what aiodocker does not cover (build parameters, streamed
archives), sent on the client's own session through aiodocker's public API only, with the
response always released on exit: an abandoned build only stops when its connection closes.
Errors are aiodocker's: a 4xx/5xx response or a failed connection is an `aiodocker.DockerError`,
as from any other aiodocker call."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp

# Streams are bounded by the caller's asyncio.timeout, not by a read timeout.
STREAMING = aiohttp.ClientTimeout(total=None, sock_read=None, connect=10)


@asynccontextmanager
async def stream(
    docker: aiodocker.Docker,
    path: str,
    method: str,
    *,
    params: Mapping[str, str],
    data: Any = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The engine's response to `method` on the versioned API `path`, body unread. Closed (the
    connection dropped, so the engine abandons the request) when the body raises, else released.
    """
    response = await _request(docker, path, method, params=params, data=data, headers=headers)
    try:
        yield response
    except BaseException:
        response.close()  # drop the connection: the engine then abandons the request
        raise
    response.release()


async def _request(
    docker: aiodocker.Docker,
    path: str,
    method: str,
    *,
    params: Mapping[str, str],
    data: Any,
    headers: Mapping[str, str] | None,
) -> aiohttp.ClientResponse:
    """The request as aiodocker sends its own: versioned URL, JSON content type unless told
    otherwise, params as given (aiodocker's `httpize` leaves str values as they are)."""
    if docker.api_version == "auto":
        await docker.version()  # any aiodocker call first resolves "auto" from the engine
    url = f"{docker.docker_host}/{docker.api_version}/{path}"
    request_headers = dict(headers or {})
    if not any(name.lower() == "content-type" for name in request_headers):
        request_headers["Content-Type"] = "application/json"
    try:
        response = await docker.session.request(
            method,
            url,
            params=dict(params),
            headers=request_headers,
            data=data,
            timeout=STREAMING,
        )
    except TimeoutError:
        raise  # aiohttp's connect timeout is a ClientConnectionError too: it stays a timeout
    except aiohttp.ClientConnectionError as exc:
        # Like aiodocker's message, but naming its public `docker_host` (`unix://localhost` for a
        # socket) instead of the socket path; the `://` keeps build.py's _client_safe_error from
        # showing it to the client.
        raise aiodocker.DockerError(
            900, f"Cannot connect to Docker Engine via {docker.docker_host} [{exc}]"
        ) from exc
    if response.status // 100 in (4, 5):
        raise await _error(response)
    return response


async def _error(response: aiohttp.ClientResponse) -> aiodocker.DockerError:
    """aiodocker's error for a 4xx/5xx response: the JSON body's `message`, else the body text;
    the response closed."""
    text = (await response.read()).decode("utf-8", "replace")
    content_type = response.headers.get("content-type", "")
    response.close()
    if content_type == "application/json":
        with contextlib.suppress(ValueError, TypeError, KeyError):
            return aiodocker.DockerError(response.status, str(json.loads(text)["message"]))
    return aiodocker.DockerError(response.status, text)
