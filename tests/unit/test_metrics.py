"""The coordinator's and selector's Prometheus metrics (fedota_common/metrics.py).

Each test builds its own registry, so none sees another's counts. The HTTP endpoint is
served on loopback port 0 and read back as a scraper would.
"""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.hub import Hub
from fedota_common.metrics import REASONS, CoordinatorMetrics, SelectorMetrics, reason_label, serve, start


def _value(metrics: CoordinatorMetrics | SelectorMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def test_a_finished_round_counts_and_its_duration_is_observed() -> None:
    metrics = CoordinatorMetrics()
    metrics.round_finished(1.5)
    metrics.round_finished(40.0)
    assert _value(metrics, "fedota_coordinator_rounds_completed_total") == 2
    assert _value(metrics, "fedota_coordinator_round_duration_seconds_count") == 2
    assert _value(metrics, "fedota_coordinator_round_duration_seconds_sum") == 41.5
    assert _value(metrics, "fedota_coordinator_round_duration_seconds_bucket", le="2.5") == 1


def test_registries_are_independent() -> None:
    first, second = CoordinatorMetrics(), CoordinatorMetrics()
    first.round_finished(1.0)
    assert _value(second, "fedota_coordinator_rounds_completed_total") == 0


def test_rejection_reasons_stay_a_fixed_set_whatever_text_comes_in() -> None:
    metrics = SelectorMetrics()
    metrics.reject("not-finite")
    for i in range(50):
        metrics.reject(f"hostile reason {i} " + "x" * 1000)
    assert _value(metrics, "fedota_selector_replies_rejected_total", reason="not-finite") == 1
    assert _value(metrics, "fedota_selector_replies_rejected_total", reason="other") == 50
    reasons = {
        s.labels["reason"]
        for family in metrics.registry.collect()
        if family.name == "fedota_selector_replies_rejected"
        for s in family.samples
    }
    assert reasons == set(REASONS)
    assert reason_label("shape") == "shape" and reason_label("") == "other"


def test_the_coordinator_counts_a_reply_its_hub_rejects() -> None:
    hub = Hub()
    metrics = CoordinatorMetrics()
    hub.on_reject = metrics.reject
    metrics.watch(lambda: len(hub.nodes), lambda: len(hub.selectors))
    hub.attach("s1", [(7, "site a"), (8, "site b")])
    assert _value(metrics, "fedota_coordinator_clients_connected") == 2
    assert _value(metrics, "fedota_coordinator_selectors_connected") == 1
    assert hub.on_reject is not None
    hub.on_reject("weight")
    assert _value(metrics, "fedota_coordinator_replies_rejected_total", reason="weight") == 1


def test_the_endpoint_serves_prometheus_text_with_process_metrics() -> None:
    metrics = SelectorMetrics()
    metrics.received.inc(1234)
    metrics.watch(lambda: 3, lambda: 1)
    server = serve("127.0.0.1:0", metrics.registry)
    try:
        assert server.address.startswith("127.0.0.1:") and not server.address.endswith(":0")
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert samples["fedota_selector_received_bytes_total"] == 1234
    assert samples["fedota_selector_clients_connected"] == 3
    assert samples["fedota_selector_coordinator_connected"] == 1
    # A restart shows as a new process start time.
    assert samples["process_start_time_seconds"] > 0


def test_a_bad_listen_address_is_an_error() -> None:
    with pytest.raises(OSError):
        serve("nonsense", SelectorMetrics().registry)


def test_a_service_starts_metrics_only_when_asked_and_stops_on_a_bad_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert start("", CoordinatorMetrics().registry) is None
    with pytest.raises(SystemExit) as stopped:
        start("nowhere", CoordinatorMetrics().registry)
    assert stopped.value.code == 2
    assert "cannot serve metrics on nowhere" in capsys.readouterr().err
