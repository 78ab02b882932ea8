"""The website's Prometheus metrics: request latency, Celery task outcomes, and `/metrics`.

Labels are bounded: a request is labelled by its method (one of `METHODS`, else "other"),
its resolved URL name (never the path, which holds ids and tokens) and its status class;
a task by its registered name. Nothing per problem is exported, so no secret can leak.

`/metrics` answers only a request with `Authorization: Bearer <FEDOTA_METRICS_TOKEN>` or
one from an address in FEDOTA_METRICS_NETWORKS; with neither setting it is a 404. With
PROMETHEUS_MULTIPROC_DIR set (prometheus_client's multiprocess mode: a folder shared by
every gunicorn worker and Celery process of this host), it adds up every process's numbers;
otherwise it shows this process's only (docs/metrics.md).
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable
from typing import Any

from celery.signals import task_failure, task_retry, task_success
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNRESOLVED = "unresolved"
STATIC = "static"
OUTCOMES = ("success", "failure", "retry")

HTTP_SECONDS = Histogram(
    "fedota_http_request_duration_seconds",
    "Seconds the website took to answer a request, by method, URL name and status class",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CELERY_TASKS = Counter("fedota_celery_tasks", "Celery tasks that ended, by task name and outcome", ["task", "outcome"])


def route_of(request: HttpRequest) -> str:
    """The request's URL name (`problems:detail`), "static" for static files, else "unresolved"."""
    match = getattr(request, "resolver_match", None)
    if match is not None and match.view_name:
        return str(match.view_name)
    if match is not None:
        return str(match.route) or UNRESOLVED
    static = str(getattr(settings, "STATIC_URL", "") or "")
    if static.startswith("/") and request.path.startswith(static):
        return STATIC
    return UNRESOLVED


class RequestMetricsMiddleware:
    """Times every request (first in MIDDLEWARE, so the time covers the whole stack)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in METHODS else "other"
        HTTP_SECONDS.labels(method, route_of(request), f"{response.status_code // 100}xx").observe(
            time.perf_counter() - start
        )
        return response


def _task_name(sender: Any) -> str:
    from webserver.celery import app

    name = str(getattr(sender, "name", "") or sender or "")
    return name if name in app.tasks else "other"


def _count(outcome: str) -> Callable[..., None]:
    def handler(sender: Any = None, **_kwargs: Any) -> None:
        CELERY_TASKS.labels(_task_name(sender), outcome).inc()

    return handler


# Kept as module attributes: signals hold their receivers weakly.
_on_success = _count("success")
_on_failure = _count("failure")
_on_retry = _count("retry")


def connect_celery() -> None:
    """Count task outcomes in the process that runs them (the worker's pool processes)."""
    task_success.connect(_on_success, weak=False, dispatch_uid="fedota-metrics-success")
    task_failure.connect(_on_failure, weak=False, dispatch_uid="fedota-metrics-failure")
    task_retry.connect(_on_retry, weak=False, dispatch_uid="fedota-metrics-retry")


def _allowed(request: HttpRequest) -> bool:
    token = str(getattr(settings, "FEDOTA_METRICS_TOKEN", "") or "")
    given = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    networks = getattr(settings, "FEDOTA_METRICS_NETWORKS", ()) or ()
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(str(request.META.get("REMOTE_ADDR", "")))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


def registry() -> CollectorRegistry:
    """Every process's numbers in multiprocess mode, else this process's."""
    folder = getattr(settings, "PROMETHEUS_MULTIPROC_DIR", "")
    if not folder:
        return REGISTRY
    from prometheus_client import multiprocess

    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected, path=str(folder))
    return collected


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus's text format, for an allowed scraper only (a 404 to anyone else)."""
    if not _allowed(request):
        raise Http404("not found")
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


@never_cache
@require_safe
def targets_view(request: HttpRequest) -> JsonResponse:
    """Prometheus's HTTP service discovery: every running problem's services that serve metrics.

    For `http_sd_configs` (same access as /metrics). Each target group is one service, labelled
    with its problem, run number, role and index, so a series says which problem it is of.
    """
    from webserver.problems.models import RunStatus, Service, ServiceHealth

    if not _allowed(request):
        raise Http404("not found")
    services = (
        Service.objects.filter(run__status=RunStatus.RUNNING)
        .exclude(metrics="")
        .exclude(health__in=(ServiceHealth.EXITED, ServiceHealth.REMOVED))
        .select_related("run")
        .order_by("run__problem_id", "role", "index")
    )
    groups = [
        {
            "targets": [service.metrics],
            "labels": {
                "fedota_problem": str(service.run.problem_id),
                "fedota_run": str(service.run.number),
                "fedota_role": service.role,
                "fedota_index": str(service.index),
            },
        }
        for service in services
    ]
    return JsonResponse(groups, safe=False)
