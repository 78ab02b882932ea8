"""OpenTelemetry tracing of the website, the coordinator and the selectors (off by default).

One trace follows a run from the website (publish, run start, the Celery launch, the
spawner's start) into its coordinator (the run, each round) and its selectors (their part
of each round). docs/tracing.md says what each span is.

Each process calls `configure()` once with its service name. Spans are exported over OTLP
(gRPC) only when an endpoint is set (FEDOTA_OTLP_ENDPOINT, or the standard
OTEL_EXPORTER_OTLP_ENDPOINT); `trace-file` appends them as JSON lines to a file instead,
for debugging and tests. With neither, the tracer is the API's no-op one: a span costs a
function call, and nothing is propagated.

The context crosses process boundaries as W3C trace context (`traceparent`): in the
Celery task's arguments, in the coordinator's environment (FEDOTA_TRACEPARENT), and in each
round's instructions to the selectors (`Instructions.trace_context`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fedota_common.settings import Key

log = logging.getLogger(__name__)

Context = otel_context.Context
Span = trace.Span
Tracer = trace.Tracer

# The settings every problem service takes (coordinator, selector).
OTLP_ENDPOINT = Key(
    "otlp-endpoint",
    str,
    "",
    "OTLP/gRPC collector that receives this service's trace spans, e.g. http://collector:4317 "
    "(empty: OTEL_EXPORTER_OTLP_ENDPOINT, else no export; docs/tracing.md)",
)
TRACE_FILE = Key("trace-file", str, "", "append finished trace spans here as JSON lines (debugging, tests)")
TRACEPARENT = Key("traceparent", str, "", "W3C traceparent of the span that started this service (the website sets it)")
# The environment variable that carries the spawn's trace context to a problem's services.
TRACEPARENT_ENV = TRACEPARENT.env

_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def otlp_endpoint(configured: str, environ: Mapping[str, str]) -> str:
    """The collector to export to: the service's own setting, else OpenTelemetry's standard variables."""
    return (
        configured
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    ).strip()


def build_provider(service: str, *, endpoint: str = "", trace_file: str = "") -> TracerProvider | None:
    """A TracerProvider exporting to `endpoint` (OTLP) and/or `trace_file`; None when neither is set."""
    if not endpoint and not trace_file:
        return None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # Batched in a thread of its own: a slow or absent collector never holds up a round.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
    return provider


def configure(service: str, *, endpoint: str = "", trace_file: str = "") -> Tracer:
    """This process's tracer, set up on the first call (later calls get the same one).

    The SDK's when `endpoint` or `trace_file` is set, else the API's no-op tracer.
    """
    global _tracer, _provider
    with _lock:
        if _tracer is None:
            _provider = build_provider(service, endpoint=endpoint, trace_file=trace_file)
            _tracer = _provider.get_tracer("fedota") if _provider is not None else trace.NoOpTracer()
            if _provider is not None:
                log.info(
                    "tracing on",
                    extra={"service": service, "otlp_endpoint": endpoint, "trace_file": trace_file},
                )
        return _tracer


def install(provider: TracerProvider | None) -> None:
    """Use `provider`'s tracer from now on (tests: an in-memory exporter); None: back to unconfigured."""
    global _tracer, _provider
    with _lock:
        _provider = provider
        _tracer = provider.get_tracer("fedota") if provider is not None else None


def tracer() -> Tracer:
    """The tracer `configure` (or `install`) set up; the no-op tracer before that."""
    return _tracer if _tracer is not None else trace.NoOpTracer()


def enabled() -> bool:
    return _provider is not None


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered now (before a process ends by other means than returning)."""
    provider = _provider
    if provider is not None:
        provider.force_flush(timeout_millis)


def inject(parent: Span | Context | None = None) -> dict[str, str]:
    """The W3C trace context of `parent` (a span, a context, or the current one) as a dict.

    Empty when there is no recording span: tracing off adds nothing to any message.
    """
    ctx = trace.set_span_in_context(parent) if isinstance(parent, Span) else parent
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context:
    """The context a carrier made by `inject` names as parent (an empty context if none)."""
    return _propagator.extract(dict(carrier or {}), context=Context())


def from_traceparent(traceparent: str) -> Context:
    """The context of a `traceparent` value (FEDOTA_TRACEPARENT); an empty context if blank or invalid."""
    return extract({"traceparent": traceparent} if traceparent else {})


class JsonLinesExporter(SpanExporter):
    """Appends each finished span as one JSON line to a file several processes may share.

    Each span is one write to a file opened for appending, so lines from different
    processes do not interleave. Meant for debugging and tests; a file that cannot be
    written is said once and spans are dropped, the service goes on.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._failed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), sort_keys=True) + "\n" for s in spans)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot write trace spans", extra={"path": self.path, "error": str(exc)})
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, object]:
    """A finished span as plain JSON: ids in W3C hex, times in ns since the epoch."""
    ctx = span.get_span_context()
    parent = span.parent
    attributes = dict(span.attributes or {})
    return {
        "name": span.name,
        "service": str(span.resource.attributes.get("service.name", "")),
        "trace_id": trace.format_trace_id(ctx.trace_id) if ctx else "",
        "span_id": trace.format_span_id(ctx.span_id) if ctx else "",
        "parent_id": trace.format_span_id(parent.span_id) if parent is not None else "",
        "remote_parent": bool(parent is not None and parent.is_remote),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in attributes.items()},
    }
