"""Optional OpenTelemetry tracing: with `DOCKGUARD_OTEL_ENDPOINT` set, one span per API request
(parented on the caller's W3C `traceparent`), one per job (parented on the request that
submitted it, carried through the queue) and one per job stage under it, exported over OTLP/HTTP.
Unset, nothing is imported from the SDK and every helper here is a no-op.

The tracer provider is this module's own, not OpenTelemetry's global one: dockguard never
traces libraries behind the operator's back, and tests can install an in-memory exporter."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

log = logging.getLogger(__name__)

SERVICE_NAME = "dockguard"
EXPORT_TIMEOUT_S = 5.0

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP's convention: a base URL gets `/v1/traces`; a URL already ending so is kept."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def shown_url(url: str) -> str:
    """`url` fit for a log line: no user, password or query (a collector's token may be in
    either)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def configure(endpoint: str | None) -> None:
    """Export spans to `endpoint` (once per process; later calls keep the first). None: off."""
    if not endpoint or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=EXPORT_TIMEOUT_S)
    install(BatchSpanProcessor(exporter))
    log.info("tracing on", extra={"endpoint": shown_url(traces_url(endpoint))})


def install(processor: SpanProcessor) -> None:
    """Trace through `processor` (`configure` uses a batching OTLP one; tests an in-memory one)."""
    global _provider, _tracer
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    uninstall()
    _provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("dockguard")


def uninstall() -> None:
    """Flush and stop tracing (at shutdown, and between tests)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, None


def flush(timeout_s: float = EXPORT_TIMEOUT_S) -> None:
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def enabled() -> bool:
    return _tracer is not None


def context_from(headers: Mapping[str, str]) -> Context | None:
    """The caller's span context from a `traceparent` (and `tracestate`) header, if valid."""
    if _tracer is None or "traceparent" not in headers:
        return None
    return _propagator.extract(carrier=dict(headers))


def traceparent() -> str | None:
    """The current span as a `traceparent` value, to carry it where headers do not go."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def span(
    name: str,
    *,
    parent: Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span | None]:
    """A span for the block (the current one inside it), or None when tracing is off. An
    exception escaping the block marks it as an error; the caller records finer outcomes."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=dict(attributes or {})
    ) as current:
        yield current
