"""The website's /metrics: who may read it, request latency by URL name, Celery task outcomes."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from webserver.celery import app

pytestmark = [pytest.mark.web, pytest.mark.django_db]

TOKEN = "s3cret-metrics-token-for-tests"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _routes(text: str) -> set[str]:
    return {
        s.labels["route"]
        for family in text_string_to_metric_families(text)
        if family.name == "fedota_http_request_duration_seconds"
        for s in family.samples
    }


def test_metrics_is_a_404_unless_a_token_or_network_is_configured(settings: Any) -> None:
    settings.FEDOTA_METRICS_TOKEN = ""
    settings.FEDOTA_METRICS_NETWORKS = []
    assert Client().get("/metrics").status_code == 404
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


def test_metrics_answers_the_right_bearer_token_only(settings: Any) -> None:
    settings.FEDOTA_METRICS_TOKEN = TOKEN
    settings.FEDOTA_METRICS_NETWORKS = []
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    assert Client().get("/metrics", HTTP_AUTHORIZATION=TOKEN).status_code == 404
    resp = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200
    assert resp["Content-Type"].startswith("text/plain")
    assert TOKEN not in resp.content.decode()
    assert Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_metrics_answers_addresses_in_the_configured_networks(settings: Any) -> None:
    settings.FEDOTA_METRICS_TOKEN = ""
    settings.FEDOTA_METRICS_NETWORKS = ["10.0.0.0/8"]
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 404
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200


def test_requests_are_timed_by_url_name_never_by_path(settings: Any) -> None:
    settings.FEDOTA_METRICS_TOKEN = TOKEN
    before = _sample("fedota_http_request_duration_seconds_count", method="GET", route="healthz", status="2xx")
    Client().get("/healthz")
    Client().get("/no-such-page/0123456789abcdef")
    Client().generic("BREW", "/healthz")
    after = _sample("fedota_http_request_duration_seconds_count", method="GET", route="healthz", status="2xx")
    assert after == before + 1
    assert _sample("fedota_http_request_duration_seconds_count", method="GET", route="unresolved", status="4xx") >= 1
    assert _sample("fedota_http_request_duration_seconds_count", method="other", route="healthz", status="4xx") >= 1
    text = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    routes = _routes(text)
    assert "healthz" in routes and "unresolved" in routes
    assert not any("/" in route or "0123456789abcdef" in route for route in routes), routes


def test_celery_task_outcomes_are_counted_by_task_name() -> None:
    @app.task(name="tests.metrics.ok")
    def ok() -> int:
        return 1

    @app.task(name="tests.metrics.broken")
    def broken() -> None:
        raise RuntimeError("boom")

    succeeded = _sample("fedota_celery_tasks_total", task="tests.metrics.ok", outcome="success")
    failed = _sample("fedota_celery_tasks_total", task="tests.metrics.broken", outcome="failure")
    assert ok.apply().get() == 1
    assert broken.apply().failed()
    assert _sample("fedota_celery_tasks_total", task="tests.metrics.ok", outcome="success") == succeeded + 1
    assert _sample("fedota_celery_tasks_total", task="tests.metrics.broken", outcome="failure") == failed + 1


def test_targets_list_running_problems_services_that_serve_metrics_for_prometheus_discovery(
    settings: Any, users: dict[str, Any], make_problem: Any
) -> None:
    from webserver.problems.models import Run, RunStatus, Service, ServiceHealth

    settings.FEDOTA_METRICS_TOKEN = TOKEN
    settings.FEDOTA_METRICS_NETWORKS = []
    running = Run.objects.create(problem=make_problem(users["owner"]), number=2, status=RunStatus.RUNNING)
    Service.objects.create(run=running, role="coordinator", health=ServiceHealth.HEALTHY, metrics="127.0.0.1:9301")
    Service.objects.create(
        run=running, role="selector", index=1, health=ServiceHealth.STARTING, metrics="127.0.0.1:9302"
    )
    # Not listed: a dead service, one without metrics, and the services of a run that ended.
    Service.objects.create(run=running, role="selector", index=0, health=ServiceHealth.EXITED, metrics="127.0.0.1:9303")
    Service.objects.create(run=running, role="selector", index=2, health=ServiceHealth.HEALTHY)
    ended = Run.objects.create(problem=make_problem(users["owner"]), number=1, status=RunStatus.FINISHED)
    Service.objects.create(run=ended, role="coordinator", health=ServiceHealth.HEALTHY, metrics="127.0.0.1:9304")

    assert Client().get("/metrics/targets").status_code == 404
    assert Client().get("/metrics/targets", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    resp = Client().get("/metrics/targets", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200 and resp["Content-Type"] == "application/json"
    problem = str(running.problem_id)
    assert resp.json() == [
        {
            "targets": ["127.0.0.1:9301"],
            "labels": {"fedota_problem": problem, "fedota_run": "2", "fedota_role": "coordinator", "fedota_index": "0"},
        },
        {
            "targets": ["127.0.0.1:9302"],
            "labels": {"fedota_problem": problem, "fedota_run": "2", "fedota_role": "selector", "fedota_index": "1"},
        },
    ]
