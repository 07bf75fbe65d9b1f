"""OpenTelemetry tracing, through HTTP and a real worker: the caller's `traceparent` parents the
request's span, the job's span is that request's child (carried through the arq queue), and each
stage is a span under the job; a failed stage is an error span with its code. The OTLP/HTTP
exporter really sends its spans, to a receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dockguard import tracing
from tests.e2e.conftest import Dockguard, Instances

FAST: dict[str, Any] = {"run_timeout_s": 30, "build_timeout_s": 60, "build_network": "none"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
HAPPY = (
    f"FROM busybox:latest\nUSER 1000\nCMD {json.dumps(['sh', '-c', 'echo {} > /data/perf.json'])}\n"
)
FAILING = "FROM busybox:latest\nUSER 1000\nRUN exit 3\n"


@pytest_asyncio.fixture
async def dg(instances: Instances) -> Dockguard:
    return await instances.get(**FAST)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.uninstall()


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def trace_of(
    spans: InMemorySpanExporter, trace_id: str, *, until: str, timeout_s: float = 10
) -> list[ReadableSpan]:
    """The finished spans of `trace_id`, once one named `until` is among them."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            s
            for s in spans.get_finished_spans()
            if s.context is not None and _hex(s.context.trace_id, 32) == trace_id
        ]
        if any(s.name == until for s in found):
            return found
        assert time.monotonic() < deadline, [s.name for s in found]
        await asyncio.sleep(0.05)


def only(found: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in found if s.name == name]
    return span


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return _hex(span.context.span_id, 16)


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else _hex(span.parent.span_id, 16)


async def submit(dg: Dockguard, dockerfile: str) -> dict[str, Any]:
    response = await dg.client.post(
        "/v1/jobs",
        content=dockerfile,
        headers={"Content-Type": "text/plain", "traceparent": PARENT},
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    dg.submitted.append(job["id"])
    return job


async def test_a_job_is_one_span_tree_under_the_callers_traceparent(
    dg: Dockguard, spans: InMemorySpanExporter
) -> None:
    job = await submit(dg, HAPPY)
    assert (await dg.wait(job["id"]))["status"] == "succeeded"
    found = await trace_of(spans, TRACE_ID, until="job")

    request = only(found, "POST /v1/jobs")
    assert request.kind is SpanKind.SERVER
    assert parent_id(request) == CALLER_SPAN
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/v1/jobs"
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["dockguard.job_id"] == job["id"]

    job_span = only(found, "job")
    assert job_span.kind is SpanKind.CONSUMER
    assert parent_id(job_span) == span_id(request)
    assert job_span.attributes is not None
    assert job_span.attributes["dockguard.status"] == "succeeded"

    stages = [s for s in found if parent_id(s) == span_id(job_span)]
    names = [s.name for s in stages]
    assert {"scan", "build", "prepare", "run", "collect", "cleanup"} <= set(names), names
    assert len(names) == len(set(names)), names  # each stage once
    for stage in stages:
        assert stage.attributes is not None and stage.attributes["dockguard.outcome"] == "ok"
        assert stage.start_time is not None and job_span.start_time is not None
        assert stage.end_time is not None and job_span.end_time is not None
        assert job_span.start_time <= stage.start_time <= stage.end_time <= job_span.end_time
    # The client's polls are spans of their own traces, not of the caller's.
    assert all(s.name != "GET /v1/jobs/{job_id}" for s in found)


async def test_a_failed_stage_is_an_error_span_with_the_jobs_code(
    dg: Dockguard, spans: InMemorySpanExporter
) -> None:
    job = await submit(dg, FAILING)
    final = await dg.wait(job["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "build_failed"
    found = await trace_of(spans, TRACE_ID, until="job")
    build = only(found, "build")
    assert build.status.status_code is StatusCode.ERROR
    assert build.attributes is not None
    assert build.attributes["dockguard.outcome"] == "failed"
    assert build.attributes["dockguard.code"] == "build_failed"
    assert only(found, "job").attributes == {
        "dockguard.job_id": job["id"],
        "dockguard.status": "failed",
    }


async def test_without_a_traceparent_the_request_starts_a_trace_of_its_own(
    dg: Dockguard, spans: InMemorySpanExporter
) -> None:
    answer = await dg.client.get("/v1/jobs/" + "0" * 32)
    assert answer.status_code == 404
    (span,) = [s for s in spans.get_finished_spans() if s.name == "GET /v1/jobs/{job_id}"]
    assert span.parent is None
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 404


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps each export request it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        return web.Response(status=200)


@pytest_asyncio.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    received = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", received.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield received, f"http://127.0.0.1:{port}"
    finally:
        tracing.uninstall()
        await runner.cleanup()


async def test_spans_are_exported_over_otlp_http_to_the_endpoint(
    collector: tuple[Collector, str],
) -> None:
    received, endpoint = collector
    tracing.configure(endpoint)
    assert tracing.enabled()
    with tracing.span("probe", attributes={"dockguard.stage": "scan"}):
        pass
    await asyncio.to_thread(tracing.flush)  # the exporter posts from a thread of its own
    assert received.content_types == ["application/x-protobuf"]
    (export,) = received.requests
    (resource_spans,) = export.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "dockguard"
    (probe,) = [s for scoped in resource_spans.scope_spans for s in scoped.spans]
    assert probe.name == "probe"
