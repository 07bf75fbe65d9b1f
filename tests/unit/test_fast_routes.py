"""Differential: `GET /v1/jobs/{id}` is served by a plain Starlette route in front of the
documented FastAPI one (routes.py `serve_fast`); for every id and `wait` a client can send, both
must answer the same (status, body but the request id, headers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute, Route

from dockguard import metrics
from dockguard.api import create_app
from dockguard.models import Job
from tests.unit.fakes import fakes

KNOWN = "a" * 32
JOB_PATH = "/v1/jobs/{job_id}"
WAITS = ["", "abc", "0", "-1", "0.5", "60", "60.0001", "61", "nan", "inf", "-inf", "1e400"]
WAITS += [" 1", "1_0", "0x10", "\uff11", "true", "1,2", "\x00"]
IDS = [KNOWN, "b" * 32, "A" * 32, "a" * 31, "a" * 33, "not-a-job", "é" * 32, "%00", "a" * 200]


def _app(*, fast: bool) -> FastAPI:
    app = create_app(fakes().services.settings)
    app.state.services = fakes().services
    if not fast:  # only the documented route is left
        app.router.routes = [r for r in app.router.routes if not _is_fast(r)]
    return app


def _is_fast(route: BaseRoute) -> bool:
    return isinstance(route, Route) and not route.include_in_schema and route.path == JOB_PATH


_APPS = (_app(fast=True), _app(fast=False))


@asynccontextmanager
async def _clients() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    job = Job(id=KNOWN, dockerfile_sha256="0" * 64, dockerfile_bytes=10)
    for app in _APPS:
        await app.state.services.store.create(job, "FROM busybox\n", deadline_s=60)
    transports = [httpx.ASGITransport(app=app, raise_app_exceptions=False) for app in _APPS]
    async with (
        httpx.AsyncClient(transport=transports[0], base_url="http://t") as fast,
        httpx.AsyncClient(transport=transports[1], base_url="http://t") as documented,
    ):
        yield fast, documented


@pytest.fixture
async def clients() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with _clients() as both:
        yield both


def _seen(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json"):
        body = response.json()
        if isinstance(body, dict):
            body.pop("request_id", None)
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    return response.status_code, body, headers


async def _compare(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], path: str, params: Any
) -> None:
    fast, documented = clients
    answers = [await client.get(path, params=params) for client in (fast, documented)]
    assert _seen(answers[0]) == _seen(answers[1]), (path, params)


@pytest.mark.parametrize("job_id", IDS)
@pytest.mark.parametrize("wait", [None, *WAITS])
async def test_the_fast_route_answers_as_the_documented_one(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], job_id: str, wait: str | None
) -> None:
    await _compare(clients, f"/v1/jobs/{job_id}", None if wait is None else {"wait": wait})


async def test_a_repeated_wait_is_read_as_fastapi_reads_it(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    for params in ([("wait", "abc"), ("wait", "0.01")], [("wait", "0.01"), ("wait", "abc")]):
        await _compare(clients, f"/v1/jobs/{KNOWN}", params)


async def test_the_known_job_is_its_stored_json(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    answer = await clients[0].get(f"/v1/jobs/{KNOWN}")
    assert answer.status_code == 200 and answer.json()["id"] == KNOWN
    assert answer.headers["content-type"] == "application/json"


def test_the_fast_route_is_in_front() -> None:
    assert _is_fast(_APPS[0].router.routes[0])
    assert not any(_is_fast(route) for route in _APPS[1].router.routes)


@settings(max_examples=200, deadline=None)
@given(wait=st.text(max_size=12))
def test_any_wait_text_gets_the_same_answer(wait: str) -> None:
    async def compare() -> None:
        async with _clients() as both:
            await _compare(both, f"/v1/jobs/{KNOWN}", {"wait": wait})

    asyncio.run(compare())


async def test_the_fast_route_is_counted_under_its_template(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    counter = metrics.HTTP_REQUESTS.labels(JOB_PATH, "GET", "200")
    before = counter._value.get()
    assert (await clients[0].get(f"/v1/jobs/{KNOWN}")).status_code == 200
    assert counter._value.get() == before + 1
