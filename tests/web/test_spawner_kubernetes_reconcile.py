"""The website's run lifecycle and reconciler over the kubernetes backend, on the fake API server.

The real services (`run_launch`, `infrastructure_reconcile`) build the run spec from a
published problem (its app, its CA's certificates for the names the backend gives) and
act on what the backend reports; the cluster is tests/unit/test_spawner_kubernetes.py's
FakeCluster, whose kubelet each test steers. No Kubernetes cluster runs (docs/kubernetes.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509

from tests.unit.test_spawner_kubernetes import FakeCluster, crash_looping, evicted, exited
from webserver.problems import lifecycle
from webserver.problems.models import RunStatus
from webserver.spawner import ServiceState
from webserver.spawner.kubernetes import KubernetesConfig, KubernetesSpawner

pytestmark = pytest.mark.web


def _by_service(states: list[ServiceState]) -> dict[tuple[str, int], ServiceState]:
    return {(s.role, s.index): s for s in states}


@pytest.fixture
def launched(
    settings: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> tuple[FakeCluster, KubernetesSpawner, Any]:
    settings.FEDOTA_INTERNAL_URL = "http://fedota-web.fedota.svc:8000"
    settings.FEDOTA_SELECTOR_HOST = "fl.example.org"
    settings.FEDOTA_SELECTOR_PORT_BASE = 30000
    cluster = FakeCluster()
    spawner = KubernetesSpawner(
        # Problem ids keep growing across a PostgreSQL test run: every block of ports is in range.
        KubernetesConfig(selector_host="fl.example.org", node_port_range=(30000, 38007)),
        apis=cluster.apis,
        poll=0.0,
        sleep=lambda _s: None,
    )
    problem = make_problem(users["owner"])
    problem.run_config = {"rounds": 50, "num_selectors": 2}
    problem.save(update_fields=["run_config"])
    run = lifecycle.run_start(problem=problem, user=users["owner"])
    lifecycle.run_launch(run_id=run.pk, spawner=spawner)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, run.status_detail
    return cluster, spawner, run


def test_a_launch_records_the_services_where_the_join_bundles_point(
    launched: tuple[FakeCluster, KubernetesSpawner, Any],
) -> None:
    cluster, spawner, run = launched
    ns = f"fedota-p{run.problem_id}"
    rows = {(s.role, s.index): s for s in run.services.all()}
    assert set(rows) == {("coordinator", 0), ("selector", 0), ("selector", 1)}
    assert all(row.health == "healthy" for row in rows.values())
    # Exactly the endpoints join bundles carry: the public host at the problem's fixed ports.
    assert [rows[("selector", i)].address for i in (0, 1)] == [
        f"fl.example.org:{port}" for port in lifecycle.problem_selector_ports(run.problem)
    ]
    assert run.backend == "kubernetes"
    # The coordinator's certificate names the Service its selectors dial.
    pem = cluster.objects[("Secret", ns, "coordinator")].string_data["tls.crt"]
    names = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "coordinator" in names.value.get_values_for_type(x509.DNSName)
    assert cluster.objects[("Job", ns, "coordinator")].metadata.labels["fedota.run"] == str(run.pk)


def test_the_reconciler_restarts_exactly_the_service_that_died(
    launched: tuple[FakeCluster, KubernetesSpawner, Any],
) -> None:
    cluster, spawner, run = launched
    ns = f"fedota-p{run.problem_id}"
    before = _by_service(spawner.status(run.problem_id))

    cluster.pod_of(ns, "selector", 1).status = evicted("selector")
    report = lifecycle.infrastructure_reconcile(spawner=spawner)

    assert report.restarted == [run.pk] and report.relaunched == [] and report.failed == []
    after = _by_service(spawner.status(run.problem_id))
    assert after[("selector", 1)].handle != before[("selector", 1)].handle
    assert after[("selector", 1)].address == before[("selector", 1)].address
    assert [after[k].handle for k in (("coordinator", 0), ("selector", 0))] == [
        before[k].handle for k in (("coordinator", 0), ("selector", 0))
    ]

    cluster.pod_of(ns, "coordinator").status = exited(1, message="Traceback: killed")("coordinator")
    report = lifecycle.infrastructure_reconcile(spawner=spawner)

    assert report.restarted == [run.pk]
    again = _by_service(spawner.status(run.problem_id))
    assert again[("coordinator", 0)].handle != before[("coordinator", 0)].handle
    assert again[("coordinator", 0)].health == "healthy"
    assert [again[("selector", i)].handle for i in (0, 1)] == [after[("selector", i)].handle for i in (0, 1)]
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert [r["service"] for r in run.restarts] == ["selector 1", "coordinator"]

    # Nothing died: nothing is done.
    assert lifecycle.infrastructure_reconcile(spawner=spawner).restarted == []


def test_restarts_the_kubelet_made_count_against_the_runs_budget(
    settings: Any, launched: tuple[FakeCluster, KubernetesSpawner, Any]
) -> None:
    cluster, spawner, run = launched
    settings.FEDOTA_RESTART_BUDGET = 3
    cluster.pod_of(f"fedota-p{run.problem_id}", "selector", 0).status = crash_looping(1, restarts=2)("selector")
    lifecycle.infrastructure_reconcile(spawner=spawner)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert [(r["service"], r.get("by")) for r in run.restarts] == [("selector 0", "engine")] * 2

    cluster.pod_of(f"fedota-p{run.problem_id}", "selector", 0).status = crash_looping(1, restarts=4)("selector")
    report = lifecycle.infrastructure_reconcile(spawner=spawner)
    run.refresh_from_db()
    assert report.failed == [run.pk] and run.status == RunStatus.FAILED
    assert "selector 0" in run.status_detail
    # A failed run's services are removed: its namespace is gone.
    assert spawner.problems() == set()


def test_a_coordinator_that_finished_is_left_alone_then_removed_as_an_orphan(
    launched: tuple[FakeCluster, KubernetesSpawner, Any],
) -> None:
    from django.utils import timezone

    cluster, spawner, run = launched
    cluster.pod_of(f"fedota-p{run.problem_id}", "coordinator").status = exited(0, reason="Completed")("coordinator")
    report = lifecycle.infrastructure_reconcile(spawner=spawner)
    assert report.restarted == [] and report.relaunched == []
    assert spawner.problems() == {run.problem_id}

    # Its final report marks the run finished (monitoring does that); the rest is an orphan.
    run.status = RunStatus.FINISHED
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "finished_at"])
    report = lifecycle.infrastructure_reconcile(spawner=spawner)
    assert report.orphans_removed == [run.problem_id]
    assert spawner.problems() == set() and cluster.kinds(f"fedota-p{run.problem_id}") == {}
