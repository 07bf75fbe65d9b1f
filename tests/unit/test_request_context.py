"""Where a request's id comes from (api/context.py) and how it reaches Docker labels
(sandbox/names.py), where it is written into the build's LABEL instruction."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from dockguard.api.context import RequestContext, request_id_of
from dockguard.logs import request_id_var
from dockguard.sandbox import names

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("x-request-id", "abc-123")], "abc-123"),
        ([("x-request-id", "a" * 64)], "a" * 64),
        ([("traceparent", PARENT)], "4bf92f3577b34da6a3ce929d0e0e4736"),
        ([("x-request-id", "mine"), ("traceparent", PARENT)], "mine"),
        ([("x-request-id", "a" * 65), ("traceparent", PARENT)], "4bf92f3577b34da6a3ce929d0e0e4736"),
    ],
)
def test_the_given_id_or_the_trace_id(headers: list[tuple[str, str]], expected: str) -> None:
    assert request_id_of(Headers(raw=[(k.encode(), v.encode()) for k, v in headers])) == expected


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("x-request-id", "")],
        [("x-request-id", "a" * 65)],
        [("x-request-id", "new\nline")],
        [("x-request-id", "caf\xe9")],
        [("x-request-id", "one"), ("x-request-id", "two")],
        [("traceparent", PARENT.replace("4bf9", "0000").replace("2f35", "0000"))],
        [("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01")],
        [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01")],
        [("traceparent", PARENT.upper())],
        [("traceparent", PARENT + "-extra")],
    ],
)
def test_otherwise_a_new_one(headers: list[tuple[str, str]]) -> None:
    raw = [(k.encode(), v.encode("latin-1")) for k, v in headers]
    request_id = request_id_of(Headers(raw=raw))
    assert len(request_id) == 32 and all(c in "0123456789abcdef" for c in request_id)


def test_labels_carry_the_request_id_with_nothing_that_could_break_a_label_instruction() -> None:
    assert names.REQUEST_LABEL not in names.labels("j" * 32)
    token = request_id_var.set('ok-1.2:3@x+y=z "quote" $HOME \\ `tick`')
    try:
        label = names.labels("j" * 32)[names.REQUEST_LABEL]
    finally:
        request_id_var.reset(token)
    assert label == "ok-1.2:3@x+y=z__quote___HOME____tick_"


async def test_a_probe_is_answered_in_the_outermost_layer_with_its_id_and_a_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a probe must not reach the app")

    app = RequestContext(inner)
    caplog.set_level(logging.DEBUG, logger="dockguard.access")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        answer = await client.get("/healthz", headers={"X-Request-ID": "probe-1"})
        head = await client.head("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    assert answer.headers["X-Request-ID"] == "probe-1"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert head.status_code == 200 and head.content == b""
    lines = [r for r in caplog.records if r.name == "dockguard.access"]
    assert [(r.route, r.status) for r in lines] == [("/healthz", 200), ("/healthz", 200)]  # type: ignore[attr-defined]
    # Probes' lines are DEBUG: at the default INFO they are not written (the metrics count them).
    assert {r.levelno for r in lines} == {logging.DEBUG}
