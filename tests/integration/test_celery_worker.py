"""A real Celery worker against Redis publishes, restarts and stops a problem's processes."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from fedota_common.fab import load_app
from fedota_common.grpcutil import check_health
from tests.integration.conftest import make_user
from tests.ports import free_port_pair
from webserver.problems import lifecycle
from webserver.problems.models import Problem, ProblemState, Run, RunStatus
from webserver.spawner.process import ProcessSpawner, tagged_pids

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def _status(run: Run) -> str:
    run.refresh_from_db()
    return run.status


def _problem(owner: Any) -> Problem:
    from scripts.make_demo_data import breast_cancer_contract

    fab = load_app(REPO / "apps" / "tabular").content
    problem = Problem(
        owner=owner,
        title="Breast cancer",
        contract=breast_cancer_contract([f"f{i}" for i in range(30)]),
        app_template="tabular",
        fab_sha256=hashlib.sha256(fab).hexdigest(),
        fab_name="tabular.fab",
        run_config={"rounds": 3, "num_selectors": 2, "min_clients": 1, "clients_per_round": 1},
        state=ProblemState.PUBLISHED,
    )
    problem.fab.save("tabular.fab", ContentFile(fab), save=False)
    problem.save()
    return problem


def _port_base_for(problem_id: int) -> int:
    """A selector port base that puts this problem's two selectors on free loopback ports."""
    for _ in range(50):
        base = free_port_pair() - (problem_id % 1000) * 8
        if base > 1024:
            return base
    raise AssertionError("no free pair of loopback ports gives a usable port base")


def test_worker_publishes_restarts_and_stops_a_run(
    settings: Any, tmp_path: Path, celery_worker_process: Callable[..., Any]
) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FEDOTA_STATE_DIR = tmp_path / "problems"
    owner = make_user("owner", "setter")
    problem = _problem(owner)
    settings.FEDOTA_SELECTOR_PORT_BASE = _port_base_for(problem.pk)
    endpoints = lifecycle.selector_endpoints(problem)
    celery_worker_process(
        FEDOTA_MEDIA_ROOT=str(settings.MEDIA_ROOT),
        FEDOTA_STATE_DIR=str(settings.FEDOTA_STATE_DIR),
        FEDOTA_SPAWNER="process",
        FEDOTA_SELECTOR_HOST="127.0.0.1",
        FEDOTA_SELECTOR_PORT_BASE=str(settings.FEDOTA_SELECTOR_PORT_BASE),
        FEDOTA_INTERNAL_URL="http://127.0.0.1:9",
    )
    spawner = ProcessSpawner(settings.FEDOTA_STATE_DIR)
    try:
        # Publish: the web side only writes the run and enqueues problems.publish.
        run = lifecycle.run_start(problem=problem, user=owner)
        assert run.status == RunStatus.QUEUED
        _wait_for("the run to be running", lambda: _status(run) in (RunStatus.RUNNING, RunStatus.FAILED))
        assert run.status == RunStatus.RUNNING, run.status_detail
        assert run.backend == "process"
        selectors = list(run.services.filter(role="selector").order_by("index").values_list("address", flat=True))
        assert selectors == endpoints
        coordinator = run.services.get(role="coordinator")
        ca = Problem.objects.get(pk=problem.pk).ca_certificate.encode()
        # Selectors serve clients, and the coordinator its selectors, over TLS with the problem's own CA only.
        assert all(_serving_tls(address, ca) for address in [*selectors, coordinator.address])
        assert not any(check_health(address, timeout=2) for address in selectors), "plaintext reached a selector"
        assert not check_health(coordinator.address, timeout=2), "plaintext reached the coordinator"
        assert coordinator.health == "healthy"  # asked on its plaintext loopback health port

        # A selector dies: the reconciler (run by the worker) restarts it alone, on its port.
        first_handle = run.services.get(role="selector", index=1).handle
        others = {(s.role, s.index): s.handle for s in run.services.exclude(role="selector", index=1)}
        os.killpg(int(first_handle), signal.SIGKILL)
        from webserver.problems import tasks

        tasks.reconcile.delay()

        def restarted() -> bool:
            return (
                _status(run) == RunStatus.RUNNING and run.services.get(role="selector", index=1).handle != first_handle
            )

        _wait_for("the run to be restarted", restarted)
        assert [r["service"] for r in run.restarts] == ["selector 1"]
        assert {(s.role, s.index): s.handle for s in run.services.exclude(role="selector", index=1)} == others
        assert all(_serving_tls(address, ca) for address in endpoints)

        # Stop: the worker tears everything down.
        lifecycle.run_stop(problem=problem, user=owner)
        _wait_for("the run to be stopped", lambda: _status(run) == RunStatus.STOPPED, timeout=30)
        assert tagged_pids(spawner.tag(problem.pk)) == []
        assert set(run.services.values_list("health", flat=True)) == {"removed"}
        assert not any(_serving_tls(address, ca, timeout=0.5) for address in endpoints)
    finally:
        spawner.stop(problem.pk)


def _serving_tls(address: str, ca: bytes, timeout: float = 5.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedota_common.grpcutil import channel

    with channel(address, ca) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
