"""Tracing is off and free when no endpoint is set; the endpoint follows OTLP/HTTP's convention;
a span context crosses the queue as a `traceparent` string and comes back the same."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dockguard import tracing

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.uninstall()


def test_without_an_endpoint_nothing_is_traced() -> None:
    tracing.configure(None)
    tracing.configure("")
    assert not tracing.enabled()
    assert tracing.traceparent() is None
    assert tracing.context_from({"traceparent": PARENT}) is None
    with tracing.span("scan") as span:
        assert span is None


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
    ],
)
def test_the_endpoint_is_a_base_url_as_otlp_http_has_it(endpoint: str, url: str) -> None:
    assert tracing.traces_url(endpoint) == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:s3cret@collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("https://token@otel.example/v1/traces?key=s3cret", "https://otel.example/v1/traces"),
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
    ],
)
def test_the_logged_endpoint_has_no_credentials(url: str, shown: str) -> None:
    assert tracing.shown_url(url) == shown


def test_a_traceparent_carries_the_span_across_the_queue(spans: InMemorySpanExporter) -> None:
    with tracing.span("POST /v1/jobs", parent=tracing.context_from({"traceparent": PARENT})):
        carried = tracing.traceparent()
    assert carried is not None and carried.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    parent = tracing.context_from({"traceparent": carried})
    with tracing.span("job", parent=parent), tracing.span("scan"):
        pass
    request, scan, job = spans.get_finished_spans()  # in the order they ended
    assert (request.name, scan.name, job.name) == ("POST /v1/jobs", "scan", "job")
    assert request.context is not None and job.context is not None
    assert request.parent is not None and request.parent.span_id == 0x00F067AA0BA902B7
    assert job.parent is not None and job.parent.span_id == request.context.span_id
    assert scan.parent is not None and scan.parent.span_id == job.context.span_id
    assert {s.context.trace_id for s in (scan, job, request) if s.context} == {
        0x4BF92F3577B34DA6A3CE929D0E0E4736
    }


def test_an_invalid_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with tracing.span("GET", parent=tracing.context_from({"traceparent": "00-zz-yy-01"})):
        pass
    (span,) = spans.get_finished_spans()
    assert span.parent is None
