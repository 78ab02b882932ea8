"""The run lifecycle against a fake Spawner: start, launch, stop, reconcile, the infrastructure page."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from webserver.errors import Conflict, NotAllowed
from webserver.problems import lifecycle, tasks
from webserver.problems.models import ProblemState, Run, RunStatus
from webserver.spawner import RunSpec, ServiceState, SpawnError

pytestmark = pytest.mark.web


@dataclass
class FakeSpawner:
    """Remembers what runs per problem; `crash` makes a service exit the way a backend reports it."""

    name: str = "fake"
    running: dict[int, list[ServiceState]] = field(default_factory=dict)
    specs: list[RunSpec] = field(default_factory=list)
    stops: list[int] = field(default_factory=list)
    fail_with: Exception | None = None
    on_start: Any = None
    restarted: list[tuple[int, str, int]] = field(default_factory=list)
    restart_fails_with: Exception | None = None

    def coordinator_hosts(self, problem_id: int) -> list[str]:
        return [f"coordinator-{problem_id}.internal"]

    def start(self, spec: RunSpec) -> list[ServiceState]:
        self.specs.append(spec)
        if self.on_start is not None:
            self.on_start(spec)
        if self.fail_with is not None:
            self.running.pop(spec.problem_id, None)
            raise self.fail_with
        states = [ServiceState("coordinator", 0, "100", "127.0.0.1:40000", "healthy")]
        states += [
            ServiceState("selector", i, str(101 + i), f"127.0.0.1:{port}", "healthy")
            for i, port in enumerate(spec.selector_ports)
        ]
        self.running[spec.problem_id] = states
        return states

    def status(self, problem_id: int) -> list[ServiceState]:
        return list(self.running.get(problem_id, []))

    def restart(self, problem_id: int, role: str, index: int) -> ServiceState:
        self.restarted.append((problem_id, role, index))
        if self.restart_fails_with is not None:
            raise self.restart_fails_with
        states = self.running[problem_id]
        for i, s in enumerate(states):
            if (s.role, s.index) == (role, index):
                # Same address (ports are kept); a new pid; the engine's count starts again, as Docker's does.
                states[i] = replace(s, handle=f"{s.handle}r", health="healthy", detail="", exit_code=None, restarts=0)
                return states[i]
        raise SpawnError(f"no {role} {index}")

    def engine_restarted(self, problem_id: int, role: str, index: int, count: int) -> None:
        """The backend restarted the service by itself `count` times so far (Docker's RestartCount)."""
        self.running[problem_id] = [
            replace(s, restarts=count) if (s.role, s.index) == (role, index) else s for s in self.running[problem_id]
        ]

    def remove(self, problem_id: int, role: str, index: int) -> None:
        self.running[problem_id] = [s for s in self.running[problem_id] if (s.role, s.index) != (role, index)]

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        self.stops.append(problem_id)
        self.running.pop(problem_id, None)

    def problems(self) -> set[int]:
        return set(self.running)

    def crash(self, problem_id: int, role: str, index: int, *, exit_code: int | None = None) -> None:
        self.running[problem_id] = [
            replace(s, health="exited", detail=f"the process exited with code {exit_code}", exit_code=exit_code)
            if (s.role, s.index) == (role, index)
            else s
            for s in self.running[problem_id]
        ]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSpawner:
    spawner = FakeSpawner()
    monkeypatch.setattr(lifecycle, "get_spawner", lambda: spawner)
    return spawner


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Tasks sent to the broker, as (name, args), instead of sending them."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    for task in (tasks.publish, tasks.stop, tasks.reconcile):
        monkeypatch.setattr(task, "delay", lambda *args, _name=task.name: sent.append((_name, args)))
    return sent


@pytest.fixture
def settings_ports(settings: Any) -> Any:
    settings.FEDOTA_SELECTOR_PORT_BASE = 20000
    settings.FEDOTA_SELECTOR_HOST = "fl.example.org"
    settings.FEDOTA_INTERNAL_URL = "http://web:8000"
    return settings


def _problem(make_problem: Any, owner: Any, run_config: dict[str, Any]) -> Any:
    problem = make_problem(owner)
    problem.run_config = run_config
    problem.save(update_fields=["run_config"])
    return problem


def _started(users: dict[str, Any], make_problem: Any, fake: FakeSpawner, *, selectors: int = 0) -> Run:
    problem = make_problem(users["owner"])
    if selectors:
        problem.run_config = {**problem.run_config, "num_selectors": selectors}
        problem.save(update_fields=["run_config"])
    run = lifecycle.run_start(problem=problem, user=users["owner"])
    lifecycle.run_launch(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, run.status_detail
    return run


# ---- run_start ------------------------------------------------------------------------------


def test_start_numbers_runs_and_enqueues_the_launch_after_commit(
    users: dict[str, Any], make_problem: Any, enqueued: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    problem = make_problem(users["owner"])
    with django_capture_on_commit_callbacks(execute=True):
        first = lifecycle.run_start(problem=problem, user=users["owner"])
    assert (first.number, first.status) == (1, RunStatus.QUEUED)
    assert first.config == {"rounds": 3, "num_selectors": 1}
    assert first.fab_sha256 == problem.fab_sha256
    assert enqueued == [("problems.publish", (first.pk,))]

    Run.objects.filter(pk=first.pk).update(status=RunStatus.FINISHED)
    second = lifecycle.run_start(problem=problem, user=users["admin"])
    assert second.number == 2


def test_start_refuses_while_a_run_is_active(users: dict[str, Any], make_problem: Any, enqueued: list[Any]) -> None:
    problem = make_problem(users["owner"])
    lifecycle.run_start(problem=problem, user=users["owner"])
    with pytest.raises(Conflict, match="run 1 of this problem is still queued"):
        lifecycle.run_start(problem=problem, user=users["owner"])
    assert problem.runs.count() == 1


def test_start_only_by_the_owner_and_only_when_published(
    users: dict[str, Any], make_problem: Any, enqueued: list[Any]
) -> None:
    problem = make_problem(users["owner"])
    for who in ("other_setter", "holder"):
        with pytest.raises(NotAllowed):
            lifecycle.run_start(problem=problem, user=users[who])
    draft = make_problem(users["owner"], state=ProblemState.DRAFT, title="Draft")
    with pytest.raises(Conflict, match="only a published problem can run"):
        lifecycle.run_start(problem=draft, user=users["owner"])
    assert not Run.objects.exists()


# ---- run_launch -----------------------------------------------------------------------------


def test_launch_records_services_and_running(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], settings_ports: Any
) -> None:
    problem = _problem(make_problem, users["owner"], {"rounds": 4, "num_selectors": 2, "min_clients": 1})
    run = lifecycle.run_start(problem=problem, user=users["owner"])

    lifecycle.run_launch(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert run.backend == "fake"
    assert run.started_at is not None
    services = list(run.services.order_by("role", "index").values_list("role", "index", "address", "health"))
    ports = lifecycle.problem_selector_ports(problem)
    assert services == [
        ("coordinator", 0, "127.0.0.1:40000", "healthy"),
        ("selector", 0, f"127.0.0.1:{ports[0]}", "healthy"),
        ("selector", 1, f"127.0.0.1:{ports[1]}", "healthy"),
    ]
    (spec,) = fake.specs
    assert spec.run_config["num-server-rounds"] == 4
    assert spec.num_selectors == 2 and spec.min_clients == 1
    assert spec.report_url == f"http://web:8000/internal/v1/runs/{run.pk}/"
    assert spec.fab_path.read_bytes()[:2] == b"PK"
    # Only the hash of the coordinator's credential is kept.
    assert run.service_token_hash == hashlib.sha256(spec.service_token.encode()).hexdigest()
    assert spec.service_token not in str(Run.objects.filter(pk=run.pk).values().get())

    # A duplicate delivery of the task changes nothing.
    lifecycle.run_launch(run_id=run.pk)
    assert len(fake.specs) == 1


def test_launch_issues_certificates_for_both_links_from_the_problems_ca(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], settings_ports: Any
) -> None:
    from cryptography import x509

    from webserver.problems.models import Problem

    problem = make_problem(users["owner"])
    lifecycle.run_launch(run_id=lifecycle.run_start(problem=problem, user=users["owner"]).pk)

    (spec,) = fake.specs
    problem = Problem.objects.get(pk=problem.pk)
    assert spec.ca_cert_pem == problem.ca_certificate
    ca = x509.load_pem_x509_certificate(spec.ca_cert_pem.encode())

    def names(pem: str) -> list[str]:
        cert = x509.load_pem_x509_certificate(pem.encode())
        cert.verify_directly_issued_by(ca)
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )

    # Clients dial the selectors at FEDOTA_SELECTOR_HOST; selectors dial the coordinator where the backend says.
    assert names(spec.tls_cert_pem) == ["fl.example.org"]
    assert names(spec.coordinator_tls_cert_pem) == fake.coordinator_hosts(problem.pk)
    assert spec.selector_token
    coordinator_env, selector_env = spec.coordinator_tls_env(), spec.selector_tls_env()
    assert coordinator_env["FEDOTA_TLS_CERT"] == spec.coordinator_tls_cert_pem
    assert selector_env["FEDOTA_TLS_CERT"] == spec.tls_cert_pem
    assert selector_env["FEDOTA_COORDINATOR_CA"] == spec.ca_cert_pem
    assert "FEDOTA_INSECURE" not in {**coordinator_env, **selector_env}
    # The CA's key never leaves the database.
    assert problem.ca_private_key not in str(spec)


def test_the_ca_key_is_sealed_at_rest_and_survives_a_secret_key_rotation_with_fallbacks(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], settings_ports: Any, settings: Any
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from webserver.problems.models import Problem
    from webserver.problems.pki import is_sealed

    problem = make_problem(users["owner"])
    settings.SECRET_KEY = "the first secret key, long enough for Django 1234567890"
    lifecycle.run_launch(run_id=lifecycle.run_start(problem=problem, user=users["owner"]).pk)
    stored = Problem.objects.get(pk=problem.pk)
    # A database dump shows only the sealed key.
    assert is_sealed(stored.ca_private_key)
    with pytest.raises(TypeError, match="private key is encrypted"):
        serialization.load_pem_private_key(stored.ca_private_key.encode(), None)
    ca = x509.load_pem_x509_certificate(stored.ca_certificate.encode())

    # Rotated with the old key as a fallback: the next launch opens it and seals it with the new one.
    settings.SECRET_KEY = "the second secret key, long enough for Django 0987654321"
    settings.SECRET_KEY_FALLBACKS = ["the first secret key, long enough for Django 1234567890"]
    lifecycle.run_stop(problem=problem, user=users["owner"])
    lifecycle.run_teardown(problem_id=problem.pk)
    lifecycle.run_launch(run_id=lifecycle.run_start(problem=problem, user=users["owner"]).pk)
    resealed = Problem.objects.get(pk=problem.pk)
    assert resealed.ca_private_key != stored.ca_private_key and resealed.ca_certificate == stored.ca_certificate
    settings.SECRET_KEY_FALLBACKS = []
    lifecycle.run_stop(problem=problem, user=users["owner"])
    lifecycle.run_teardown(problem_id=problem.pk)
    lifecycle.run_launch(run_id=lifecycle.run_start(problem=problem, user=users["owner"]).pk)
    assert len(fake.specs) == 3
    for spec in fake.specs:  # the same CA signed every launch's certificates
        x509.load_pem_x509_certificate(spec.tls_cert_pem.encode()).verify_directly_issued_by(ca)


def test_a_ca_key_sealed_with_an_unknown_secret_key_fails_the_launch_saying_what_to_do(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], settings_ports: Any, settings: Any
) -> None:
    from webserver.problems.models import Problem
    from webserver.problems.pki import ca_certificate

    problem = make_problem(users["owner"])
    settings.SECRET_KEY = "the old secret key, long enough for Django 1234567890"
    lifecycle.run_launch(run_id=lifecycle.run_start(problem=problem, user=users["owner"]).pk)
    sealed = Problem.objects.get(pk=problem.pk).ca_private_key
    lifecycle.run_stop(problem=problem, user=users["owner"])
    lifecycle.run_teardown(problem_id=problem.pk)

    settings.SECRET_KEY = "a new secret key, long enough for Django 0987654321"
    run = lifecycle.run_start(problem=problem, user=users["owner"])
    lifecycle.run_launch(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "cannot be opened with the site's SECRET_KEY" in run.status_detail
    assert "DJANGO_SECRET_KEY_FALLBACKS" in run.status_detail
    # Nothing was lost: the sealed key is untouched, and join bundles (the CA certificate) still work.
    assert Problem.objects.get(pk=problem.pk).ca_private_key == sealed
    assert ca_certificate(problem.pk).startswith("-----BEGIN CERTIFICATE-----")


def test_migration_seals_keys_stored_in_the_clear(users: dict[str, Any], make_problem: Any) -> None:
    import importlib

    from django.apps import apps

    from fedota_common.pki import make_ca
    from webserver.problems.models import Problem
    from webserver.problems.pki import is_sealed, open_key

    cert, key = make_ca("Fedota problem legacy")
    problem = make_problem(users["owner"], ca_certificate=cert, ca_private_key=key)
    migration = importlib.import_module("webserver.problems.migrations.0003_seal_ca_keys")
    migration.seal(apps, None)
    stored = Problem.objects.get(pk=problem.pk).ca_private_key
    assert is_sealed(stored) and open_key(stored) == (key, False)
    migration.unseal(apps, None)
    assert Problem.objects.get(pk=problem.pk).ca_private_key == key


def test_launch_failure_fails_the_run_with_the_reason_and_leaves_nothing(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    fake.fail_with = SpawnError("coordinator exited with code 2 while starting:\nerror: the app is broken")
    problem = make_problem(users["owner"])
    run = lifecycle.run_start(problem=problem, user=users["owner"])

    lifecycle.run_launch(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "error: the app is broken" in run.status_detail
    assert run.finished_at is not None
    assert fake.problems() == set()
    assert problem.pk in fake.stops
    assert not run.services.exclude(health="removed").exists()


def test_publish_task_fails_the_run_on_an_unexpected_error(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    fake.fail_with = RuntimeError("disk full")
    run = lifecycle.run_start(problem=make_problem(users["owner"]), user=users["owner"])

    tasks.publish(run.pk)

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "disk full" in run.status_detail


def test_stop_pressed_during_the_launch_removes_what_started(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    problem = make_problem(users["owner"])
    run = lifecycle.run_start(problem=problem, user=users["owner"])
    fake.on_start = lambda spec: lifecycle.run_stop(problem=problem, user=users["owner"])

    lifecycle.run_launch(run_id=run.pk)

    assert fake.problems() == set()
    lifecycle.run_teardown(problem_id=problem.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.STOPPED


def test_a_start_broken_by_a_stop_ends_stopped_not_failed(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    problem = make_problem(users["owner"])
    run = lifecycle.run_start(problem=problem, user=users["owner"])
    fake.on_start = lambda spec: lifecycle.run_stop(problem=problem, user=users["owner"])
    fake.fail_with = SpawnError("coordinator exited with code -15 while starting")

    lifecycle.run_launch(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == RunStatus.STOPPED
    assert fake.problems() == set()


# ---- stop -----------------------------------------------------------------------------------


def test_stop_then_teardown(users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]) -> None:
    run = _started(users, make_problem, fake)
    problem = run.problem
    with pytest.raises(NotAllowed):
        lifecycle.run_stop(problem=problem, user=users["other_setter"])

    lifecycle.run_stop(problem=problem, user=users["owner"])
    run.refresh_from_db()
    assert run.status == RunStatus.STOPPING

    lifecycle.run_teardown(problem_id=problem.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.STOPPED
    assert run.finished_at is not None
    assert set(run.services.values_list("health", flat=True)) == {"removed"}
    assert fake.problems() == set()
    with pytest.raises(Conflict, match="no run of this problem is active"):
        lifecycle.run_stop(problem=problem, user=users["owner"])
    # Teardown again (a redelivered task) is harmless.
    assert lifecycle.run_teardown(problem_id=problem.pk) is None


def test_teardown_does_not_overwrite_a_finished_run(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    run = _started(users, make_problem, fake)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FINISHED)
    lifecycle.run_teardown(problem_id=run.problem_id)
    run.refresh_from_db()
    assert run.status == RunStatus.FINISHED


# ---- reconcile ------------------------------------------------------------------------------


def _platform_events(run: Run) -> list[str]:
    from webserver.monitoring.models import LogLine

    return list(
        LogLine.objects.filter(run=run, source="platform").order_by("ts", "id").values_list("message", flat=True)
    )


def test_reconcile_restarts_only_the_dead_selector(
    users: dict[str, Any],
    make_problem: Any,
    fake: FakeSpawner,
    enqueued: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = _started(users, make_problem, fake, selectors=2)
    pid = run.problem_id
    before = {(s.role, s.index): s for s in fake.status(pid)}
    fake.crash(pid, "selector", 1)  # killed: no exit code

    with django_capture_on_commit_callbacks(execute=True):
        report = lifecycle.infrastructure_reconcile()

    run.refresh_from_db()
    assert report.restarted == [run.pk] and report.relaunched == [] and report.failed == []
    assert fake.restarted == [(pid, "selector", 1)]
    assert len(fake.specs) == 1 and enqueued == []  # the run was not launched again
    assert run.status == RunStatus.RUNNING
    after = {(s.role, s.index): s for s in fake.status(pid)}
    assert after[("coordinator", 0)] == before[("coordinator", 0)]
    assert after[("selector", 0)] == before[("selector", 0)]
    assert after[("selector", 1)].address == before[("selector", 1)].address
    row = run.services.get(role="selector", index=1)
    assert (row.health, row.handle) == ("healthy", after[("selector", 1)].handle)
    assert [(r["service"], r["reason"]) for r in run.restarts] == [("selector 1", "the process exited with code None")]
    events = _platform_events(run)
    assert events[0].startswith("restarting selector 1") and events[1].startswith("selector 1 restarted")

    # Nothing more to do on the next pass.
    assert lifecycle.infrastructure_reconcile().restarted == []


def test_reconcile_restarts_a_crashed_coordinator_alone(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    run = _started(users, make_problem, fake)
    fake.crash(run.problem_id, "coordinator", 0, exit_code=1)

    report = lifecycle.infrastructure_reconcile()

    run.refresh_from_db()
    assert report.restarted == [run.pk]
    assert fake.restarted == [(run.problem_id, "coordinator", 0)]
    assert len(fake.specs) == 1 and enqueued == []
    assert run.status == RunStatus.RUNNING
    assert run.services.get(role="coordinator").health == "healthy"


def test_a_run_its_coordinator_reported_failed_is_not_restarted(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    """The ServerApp failed: the coordinator says so, then exits 1. That is the run's end, not a crash."""
    import time

    from webserver.monitoring.services import run_event_apply

    run = _started(users, make_problem, fake)
    event = {"kind": "run_finished", "event_id": "e1", "ts": time.time(), "ok": False, "detail": "the ServerApp failed"}
    run_event_apply(run=run, event=event)
    fake.crash(run.problem_id, "coordinator", 0, exit_code=1)

    report = lifecycle.infrastructure_reconcile()

    run.refresh_from_db()
    assert fake.restarted == [] and report.restarted == [] and len(fake.specs) == 1
    assert (run.status, run.status_detail) == (RunStatus.FAILED, "the ServerApp failed")


def test_the_restart_budget_counts_a_window_not_a_runs_life(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], settings: Any
) -> None:
    from datetime import datetime, timedelta

    settings.FEDOTA_RESTART_BUDGET = 3
    settings.FEDOTA_RESTART_WINDOW = 600
    run = _started(users, make_problem, fake, selectors=2)
    pid = run.problem_id
    for _ in range(3):
        fake.crash(pid, "selector", 0, exit_code=1)
        assert lifecycle.infrastructure_reconcile().restarted == [run.pk]

    # Those three were long ago: they no longer count, and the run goes on.
    run.refresh_from_db()
    run.restarts = [
        {**r, "at": (datetime.fromisoformat(r["at"]) - timedelta(seconds=601)).isoformat()} for r in run.restarts
    ]
    run.save(update_fields=["restarts"])
    for _ in range(3):
        fake.crash(pid, "selector", 1, exit_code=1)
        assert lifecycle.infrastructure_reconcile().restarted == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and len(run.restarts) == 6

    # A fourth within the window is one too many.
    fake.crash(pid, "coordinator", 0, exit_code=1)
    report = lifecycle.infrastructure_reconcile()
    run.refresh_from_db()
    assert report.failed == [run.pk] and report.restarted == []
    assert run.status == RunStatus.FAILED
    assert run.status_detail.startswith("gave up: 3 restarts in the last 10 minutes")
    assert "the budget is 3 per 10 minutes" in run.status_detail
    assert run.status_detail.endswith("last failure: coordinator: the process exited with code 1")
    assert fake.problems() == set()
    assert set(run.services.values_list("health", flat=True)) == {"removed"}
    assert _platform_events(run)[-1].startswith("the run failed: gave up")


def test_two_reconcilers_at_once_restart_a_service_once(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _started(users, make_problem, fake, selectors=2)
    fake.crash(run.problem_id, "selector", 1)
    status = fake.status
    others: list[lifecycle.ReconcileReport] = []
    calls: list[int] = []

    def slow_status(problem_id: int) -> list[ServiceState]:
        seen = status(problem_id)  # selector 1 exited ...
        calls.append(problem_id)
        if len(calls) == 1:
            # ... and before this reconciler gets to act on it, another one does.
            others.append(lifecycle.infrastructure_reconcile())
        return seen

    monkeypatch.setattr(fake, "status", slow_status)
    report = lifecycle.infrastructure_reconcile()

    assert others[0].restarted == [run.pk] and report.restarted == []
    assert fake.restarted == [(run.problem_id, "selector", 1)]
    run.refresh_from_db()
    assert len(run.restarts) == 1


def test_restarts_the_engine_made_by_itself_are_shown_and_count(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], settings: Any
) -> None:
    settings.FEDOTA_RESTART_BUDGET = 5
    run = _started(users, make_problem, fake, selectors=2)
    pid = run.problem_id
    fake.engine_restarted(pid, "selector", 0, 2)
    assert lifecycle.infrastructure_reconcile().restarted == []  # nothing for the reconciler to do
    fake.engine_restarted(pid, "selector", 0, 3)
    lifecycle.infrastructure_reconcile()
    lifecycle.infrastructure_reconcile()

    run.refresh_from_db()
    assert [(r["service"], r.get("by"), r.get("count")) for r in run.restarts] == [
        ("selector 0", "engine", 1),
        ("selector 0", "engine", 2),
        ("selector 0", "engine", 3),
    ]
    assert _platform_events(run) == ["selector 0 crashed and the engine restarted it"] * 3
    assert fake.restarted == []

    # The engine gave up; the reconciler starts it, and the engine's count starts again.
    fake.crash(pid, "selector", 0, exit_code=1)
    assert lifecycle.infrastructure_reconcile().restarted == [run.pk]
    fake.engine_restarted(pid, "selector", 0, 1)
    lifecycle.infrastructure_reconcile()
    run.refresh_from_db()
    assert [(r["service"], r.get("by", "reconciler")) for r in run.restarts[3:]] == [
        ("selector 0", "reconciler"),
        ("selector 0", "engine"),
    ]
    assert run.status == RunStatus.RUNNING

    # The sixth within the window is one too many, whoever made it.
    fake.engine_restarted(pid, "selector", 0, 2)
    assert lifecycle.infrastructure_reconcile().failed == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.status_detail.endswith("last failure: selector 0: it crashed and the engine restarted it")


def test_a_service_that_cannot_be_restarted_alone_relaunches_the_run(
    users: dict[str, Any],
    make_problem: Any,
    fake: FakeSpawner,
    enqueued: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = _started(users, make_problem, fake, selectors=2)
    pid = run.problem_id
    fake.crash(pid, "selector", 0)
    fake.restart_fails_with = SpawnError("the selector 0's container fedota-p1-selector-0 is gone")

    with django_capture_on_commit_callbacks(execute=True):
        report = lifecycle.infrastructure_reconcile()

    run.refresh_from_db()
    assert report.relaunched == [run.pk]
    assert run.status == RunStatus.STARTING
    assert run.status_detail.startswith("launched again: selector 0 could not be restarted alone")
    assert enqueued == [("problems.publish", (run.pk,))]
    assert [r["service"] for r in run.restarts] == ["selector 0", "run"]
    lifecycle.run_launch(run_id=run.pk)  # what the enqueued task does
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert len({spec.service_token for spec in fake.specs}) == len(fake.specs) == 2

    # A selector the backend no longer has at all: the run is launched whole straight away.
    fake.restart_fails_with = None
    fake.remove(pid, "selector", 1)
    with django_capture_on_commit_callbacks(execute=True):
        report = lifecycle.infrastructure_reconcile()
    run.refresh_from_db()
    assert report.relaunched == [run.pk] and run.status_detail == "launched again: selector 1 is gone"
    assert fake.restarted == [(pid, "selector", 0)]


def test_a_run_restarted_after_its_problem_changed_app_keeps_its_own_app(
    users: dict[str, Any],
    fake: FakeSpawner,
    enqueued: list[Any],
    tabular_fab: bytes,
    breast_cancer_contract: dict[str, Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Editing the app is for the next run: a crash of the running one must not swap its code (or fail it)."""
    import io
    import zipfile

    from webserver.problems import services

    owner = users["owner"]
    problem = services.problem_create(
        owner=owner, title="Breast cancer", contract=breast_cancer_contract, app_template="tabular"
    )
    run = services.problem_publish(problem=problem, user=owner)
    lifecycle.run_launch(run_id=run.pk)
    v2 = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(tabular_fab)) as old, zipfile.ZipFile(v2, "w") as new:
        for entry in old.infolist():
            new.writestr(entry, old.read(entry))
        new.writestr("CHANGES.md", "a new version")
    problem = services.problem_update(problem=problem, user=owner, fab_bytes=v2.getvalue(), fab_name="v2.fab")
    assert problem.fab_sha256 != run.fab_sha256

    fake.remove(problem.pk, "coordinator", 0)  # gone: the run is launched whole
    with django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.infrastructure_reconcile().relaunched == [run.pk]
    lifecycle.run_launch(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, run.status_detail
    first, restarted = fake.specs
    assert restarted.fab_sha256 == first.fab_sha256 == run.fab_sha256
    assert hashlib.sha256(restarted.fab_path.read_bytes()).hexdigest() == run.fab_sha256
    # The next run has the new app.
    lifecycle.run_stop(problem=problem, user=owner)
    lifecycle.run_teardown(problem_id=problem.pk)
    run2 = services.problem_publish(problem=problem, user=owner)
    lifecycle.run_launch(run_id=run2.pk)
    assert hashlib.sha256(fake.specs[-1].fab_path.read_bytes()).hexdigest() == problem.fab_sha256


def test_reconcile_leaves_a_finished_coordinator_to_monitoring(
    users: dict[str, Any],
    make_problem: Any,
    fake: FakeSpawner,
    enqueued: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = _started(users, make_problem, fake)
    fake.crash(run.problem_id, "coordinator", 0, exit_code=0)

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.infrastructure_reconcile()

    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert run.services.get(role="coordinator").health == "exited"
    assert ("problems.publish", (run.pk,)) not in enqueued

    # Monitoring marks it finished; its selectors are then orphans and go.
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FINISHED)
    report = lifecycle.infrastructure_reconcile()
    assert report.orphans_removed == [run.problem_id]
    assert fake.problems() == set()


def test_a_late_stop_task_leaves_a_newer_run_alone(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    run = _started(users, make_problem, fake)
    assert lifecycle.run_teardown(problem_id=run.problem_id) is None
    assert fake.stops == [] and fake.problems() == {run.problem_id}


def test_reconcile_lets_a_finished_coordinator_deliver_its_final_model(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    from django.utils import timezone

    from webserver.problems.models import Service

    run = _started(users, make_problem, fake)
    # The run-finished event arrived; the coordinator is still uploading the final model.
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FINISHED, finished_at=timezone.now())
    assert lifecycle.infrastructure_reconcile().orphans_removed == []
    assert fake.problems() == {run.problem_id}

    fake.crash(run.problem_id, "coordinator", 0, exit_code=0)  # done: it exits
    assert lifecycle.infrastructure_reconcile().orphans_removed == [run.problem_id]
    assert fake.problems() == set()
    assert set(Service.objects.filter(run=run).values_list("health", flat=True)) == {"removed"}


def test_an_orphan_is_removed_outside_any_transaction(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], monkeypatch: Any
) -> None:
    """On SQLite a transaction holds the one write lock: a slow stop (a swarm's tens of
    seconds) inside one made every coordinator's reports fail meanwhile."""
    from django.db import connection

    run = _started(users, make_problem, fake)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FINISHED)
    fake.crash(run.problem_id, "coordinator", 0, exit_code=0)
    outer = len(connection.atomic_blocks)  # the test's own
    depths: list[int] = []
    stop = fake.stop

    def observed(problem_id: int, **kwargs: Any) -> None:
        depths.append(len(connection.atomic_blocks))
        stop(problem_id, **kwargs)

    monkeypatch.setattr(fake, "stop", observed)
    assert lifecycle.infrastructure_reconcile().orphans_removed == [run.problem_id]
    assert depths == [outer]


def test_reconcile_removes_orphans_and_keeps_active_runs(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    live = _started(users, make_problem, fake)
    fake.running[987654] = [ServiceState("selector", 0, "1", "127.0.0.1:1", "healthy")]  # problem deleted long ago

    report = lifecycle.infrastructure_reconcile()

    assert report.orphans_removed == [987654]
    assert fake.problems() == {live.problem_id}
    live.refresh_from_db()
    assert live.status == RunStatus.RUNNING
    assert report.checked == [live.pk]


def test_reconcile_requeues_a_forgotten_queued_run(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any]
) -> None:
    from django.utils import timezone

    run = lifecycle.run_start(problem=make_problem(users["owner"]), user=users["owner"])
    lifecycle.infrastructure_reconcile()
    assert ("problems.publish", (run.pk,)) not in enqueued
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - 2 * lifecycle.REQUEUE_AFTER)
    assert lifecycle.infrastructure_reconcile().requeued == [run.pk]
    assert enqueued[-1] == ("problems.publish", (run.pk,))


# ---- selector endpoints ---------------------------------------------------------------------


def test_selector_endpoints_are_known_before_a_run_and_survive_new_runs(
    users: dict[str, Any], make_problem: Any, fake: FakeSpawner, enqueued: list[Any], settings_ports: Any
) -> None:
    problem = _problem(make_problem, users["owner"], {"rounds": 3, "num_selectors": 2})
    before = lifecycle.selector_endpoints(problem)
    base = 20000 + (problem.pk % 1000) * 8
    assert before == [f"fl.example.org:{base}", f"fl.example.org:{base + 1}"]

    run = lifecycle.run_start(problem=problem, user=users["owner"])
    lifecycle.run_launch(run_id=run.pk)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FINISHED)
    problem.run_config = {"rounds": 9, "num_selectors": 2, "strategy": "FedProx"}
    problem.save()
    run2 = lifecycle.run_start(problem=problem, user=users["owner"])
    lifecycle.run_launch(run_id=run2.pk)

    assert lifecycle.selector_endpoints(problem) == before
    assert fake.specs[0].selector_ports == fake.specs[1].selector_ports == (base, base + 1)


# ---- infrastructure page ----------------------------------------------------------------------


def test_infrastructure_page_is_for_site_admins(
    users: dict[str, Any],
    make_problem: Any,
    fake: FakeSpawner,
    enqueued: list[Any],
    client: Client,
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = _started(users, make_problem, fake)
    url = reverse("infrastructure")

    assert client.get(url).status_code == 302  # to the login page
    client.force_login(users["owner"])
    assert client.get(url).status_code == 403

    client.force_login(users["admin"])
    page = client.get(url).content.decode()
    assert run.problem.title in page
    assert "Running" in page and "fake" in page
    assert "127.0.0.1:40000" in page and "Healthy" in page
    assert "Reconcile now" in page

    fake.crash(run.problem_id, "coordinator", 0)
    lifecycle.infrastructure_reconcile()
    page = client.get(url).content.decode()
    assert "1 restart;" in page and "coordinator (the process exited with code None)" in page

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, follow=True)
    assert response.status_code == 200
    assert "Reconciliation queued" in response.content.decode()
    assert ("problems.reconcile", ()) in enqueued
