"""Spans reach an OTLP collector over gRPC when one is configured.

The collector is OpenTelemetry's own OTLP trace service (its generated gRPC stubs),
served in this process on 127.0.0.1:0; it stands in for Jaeger or an OpenTelemetry
Collector, which are not installed here. A whole federation (`coordinator.local`: a
coordinator, two selectors and two clients, each its own process) runs one round with
FEDOTA_OTLP_ENDPOINT set, and every service's spans arrive, batched, before it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps what it is sent: (service name, span) pairs, ids as hex."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - the generated servicer's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "service": attrs.get("service.name", ""),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex(),
                            }
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_a_federation_exports_its_spans_to_an_otlp_collector(collector: tuple[Collector, str], tmp_path: Path) -> None:
    from scripts.make_demo_data import make_breast_cancer

    servicer, endpoint = collector
    make_breast_cancer(tmp_path / "demo", 2, seed=0)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FEDOTA_OTLP_ENDPOINT": endpoint,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.local",
            "--out",
            str(tmp_path / "out"),
            "--app",
            "apps/tabular",
            "--data-dir",
            str(tmp_path / "demo" / "breast_cancer" / "clients"),
            "--selectors",
            "2",
            "--rounds",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with servicer.lock:
        spans = list(servicer.spans)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (run,) = by_name["coordinator.run"]
    (round_1,) = by_name["coordinator.round"]
    assert run["service"] == "fedota-coordinator" and run["parent_id"] == ""
    assert round_1["parent_id"] == run["span_id"]
    parts = by_name["selector.round"]
    # Two selectors, each with its part of the round's training and of its evaluation.
    assert len(parts) == 4 and {p["service"] for p in parts} == {"fedota-selector"}
    assert {p["parent_id"] for p in parts} == {round_1["span_id"]}
    assert {s["trace_id"] for s in spans} == {run["trace_id"]}
