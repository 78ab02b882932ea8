"""Tracing settings: off unless a collector or a trace file is named; W3C context round-trips."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coordinator.main import Settings as CoordinatorSettings
from fedota_common import tracing
from protos.coordinator.v1 import coordinator_pb2 as cpb
from selector.main import Settings as SelectorSettings

COORDINATOR = {"FEDOTA_APP": "app", "FEDOTA_INSECURE": "1"}
SELECTOR = {"FEDOTA_COORDINATOR": "127.0.0.1:9091", "FEDOTA_INSECURE": "1"}


@pytest.fixture(autouse=True)
def unconfigured() -> Iterator[None]:
    tracing.install(None)
    yield
    tracing.install(None)


def test_tracing_is_off_by_default() -> None:
    coordinator = CoordinatorSettings.from_env(COORDINATOR, [])
    selector = SelectorSettings.from_env(SELECTOR, [])
    assert (coordinator.otlp_endpoint, coordinator.trace_file, coordinator.traceparent) == ("", "", "")
    assert (selector.otlp_endpoint, selector.trace_file) == ("", "")
    assert tracing.build_provider("fedota-coordinator") is None
    tracer = tracing.configure("fedota-coordinator")
    assert isinstance(tracer, trace.NoOpTracer) and not tracing.enabled()
    # Nothing recorded, and nothing added to the instructions or the environment.
    with tracer.start_as_current_span("coordinator.run") as span:
        assert not span.is_recording()
        assert tracing.inject() == {} and tracing.inject(span) == {}


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({"FEDOTA_OTLP_ENDPOINT": "http://collector:4317"}, [], "http://collector:4317"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317"}, [], "http://otel:4317"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317"}, [], "http://traces:4317"),
        (
            {"FEDOTA_OTLP_ENDPOINT": "http://ours:4317", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317"},
            [],
            "http://ours:4317",
        ),
        ({}, ["--otlp-endpoint", "http://flag:4317"], "http://flag:4317"),
    ],
)
def test_an_otlp_endpoint_turns_export_on(env: dict[str, str], flags: list[str], expected: str) -> None:
    assert CoordinatorSettings.from_env({**COORDINATOR, **env}, flags).otlp_endpoint == expected
    assert SelectorSettings.from_env({**SELECTOR, **env}, flags).otlp_endpoint == expected
    provider = tracing.build_provider("fedota-selector", endpoint=expected)
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "fedota-selector"
    provider.shutdown()


def test_configure_keeps_the_first_setup(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = tracing.configure("fedota-selector", trace_file=str(path))
    assert tracing.enabled()
    assert tracing.configure("fedota-selector") is tracer
    with tracer.start_as_current_span("selector.round", attributes={"fedota.batch": "b1"}):
        pass
    (line,) = path.read_text().splitlines()
    doc = json.loads(line)
    assert doc["name"] == "selector.round" and doc["service"] == "fedota-selector"
    assert doc["attributes"] == {"fedota.batch": "b1"} and doc["parent_id"] == ""
    assert len(doc["trace_id"]) == 32 and len(doc["span_id"]) == 16 and doc["end"] >= doc["start"]


def test_an_unwritable_trace_file_does_not_stop_the_service(tmp_path: Path) -> None:
    tracer = tracing.configure("fedota-coordinator", trace_file=str(tmp_path / "missing" / "spans.jsonl"))
    with tracer.start_as_current_span("coordinator.round"):
        pass  # the span is dropped, said once in the log


def test_context_crosses_a_dict_an_environment_variable_and_the_instructions() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    tracer = tracing.tracer()
    with tracer.start_as_current_span("spawner.start") as spawn:
        carrier = tracing.inject()
    assert set(carrier) == {"traceparent"}
    run = tracer.start_span("coordinator.run", context=tracing.from_traceparent(carrier["traceparent"]))
    # The round's context as the selector gets it: a map field of the instructions, over the wire.
    ins = cpb.Instructions(batch_id="b1", trace_context=tracing.inject(run))
    received = cpb.Instructions.FromString(ins.SerializeToString())
    part = tracer.start_span("selector.round", context=tracing.extract(received.trace_context))
    part.end()
    run.end()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["coordinator.run"].parent.span_id == spawn.get_span_context().span_id  # type: ignore[union-attr]
    assert spans["selector.round"].parent.span_id == run.get_span_context().span_id  # type: ignore[union-attr]
    assert len({s.context.trace_id for s in spans.values()}) == 1  # type: ignore[union-attr]
    # No parent given: a new trace, not an error.
    assert tracing.from_traceparent("") == tracing.extract({})
    assert not trace.get_current_span(tracing.from_traceparent("not a traceparent")).get_span_context().is_valid
