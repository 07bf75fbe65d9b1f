"""Raw Engine API requests for what aiodocker does not cover (build parameters, streamed
archives), with the response always released on exit: aiodocker's `_query` leaves that to the
caller, and an abandoned build only stops when its connection closes."""

from __future__ import annotations

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
    response: aiohttp.ClientResponse = await docker._do_query(
        path, method, params=dict(params), data=data, headers=headers, timeout=STREAMING
    )
    try:
        yield response
    except BaseException:
        response.close()  # drop the connection: the engine then abandons the request
        raise
    response.release()
