"""Schemathesis hooks for scripts/schema-fuzz.sh: half the generated submissions carry a
Dockerfile the default policy accepts, so that jobs are made and the stateful phase can follow
the OpenAPI links from a new job to GET, DELETE and its logs (random text is almost never a
Dockerfile, and every job id would then be a 404)."""

from __future__ import annotations

import zlib
from typing import Any

import schemathesis

VALID = 'FROM busybox:latest\nUSER 1000\nCMD ["true"]\n'


def _submission(ctx: Any) -> bool:
    operation = ctx.operation
    return bool(operation.method.upper() == "POST" and operation.path == "/v1/jobs")


def _keep_generated(text: object) -> bool:
    return zlib.crc32(repr(text).encode()) % 2 == 0


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if not _submission(ctx) or _keep_generated(body):
        return body
    if isinstance(body, dict) and isinstance(body.get("dockerfile"), str | bytes):
        body["dockerfile"] = VALID
        body.pop("callback_url", None)
    elif isinstance(body, str | bytes):
        return VALID
    return body


@schemathesis.hook
def map_query(ctx: Any, query: Any) -> Any:
    """A long-poll waits as long as it is asked to (no worker runs here): a valid `wait` is cut
    to 2 s so it stays inside schemathesis' request timeout. Out-of-range values are kept."""
    if isinstance(query, dict):
        wait = query.get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 2 < wait <= 60:
            query["wait"] = 2
    return query
