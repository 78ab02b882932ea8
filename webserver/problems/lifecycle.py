"""The run lifecycle: start, launch, stop and reconcile a problem's infrastructure.

A run moves queued → starting → running → (finished | failed | stopped), with
stopping on the way to stopped. Web requests only write rows and enqueue a
Celery task after commit (`run_start`, `run_stop`); the tasks do the slow work
through the Spawner (`run_launch`, `run_teardown`), and the periodic
`infrastructure_reconcile` makes what runs match what should run.

Concurrency: state changes that race (a launch finishing while the owner
presses stop, two reconcilers) are made under `select_for_update` on the Run
row and re-check the status they expect; the slow Spawner calls happen outside
any transaction, because SQLite would otherwise lock every writer out for the
length of a start.

Credentials: each launch makes a fresh service token (the coordinator reports
with it) and a fresh selector token, hands them to the spawned processes and
stores only the service token's SHA-256 in `Run.service_token_hash`. Neither
crosses the broker or touches the database in plaintext. A service restarted
alone keeps the ones it had (the backend starts it exactly as before); a run
launched whole gets new ones.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Prefetch, QuerySet
from django.utils import timezone
from opentelemetry.trace import SpanKind, StatusCode

from fedota_common import tracing
from fedota_common.pki import issue_server_cert
from webserver.errors import ApplicationError, Conflict, NotAllowed
from webserver.permissions import owns_problem
from webserver.problems.mlflow_export import mlflow_export_enqueue
from webserver.problems.models import (
    ACTIVE_RUN_STATUSES,
    Problem,
    ProblemState,
    Run,
    RunStatus,
    Service,
    ServiceHealth,
)
from webserver.problems.pki import problem_ca
from webserver.problems.runconfig import DEFAULTS, app_overrides, validate_run_config
from webserver.spawner import (
    MAX_SELECTORS,
    RunSpec,
    ServiceState,
    Spawner,
    SpawnError,
    get_spawner,
    selector_ports,
)
from webserver.spawner.addresses import selector_hosts

log = logging.getLogger(__name__)

# A queued run whose publish task has not picked it up by then is enqueued again
# (the broker may have lost the message; launching is idempotent).
# Not shorter: with several workers, a copy and a late original could launch together.
REQUEUE_AFTER = timedelta(minutes=10)
# Active runs that have not been told to stop.
LAUNCHING_OR_RUNNING = (RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING)
# A coordinator whose run has ended keeps running while it delivers its last reports
# (the final model); the reconciler leaves it that long before removing it as an orphan.
FINAL_REPORTS_GRACE = timedelta(minutes=10)
# How many restart records a run keeps (Run.restarts), the latest.
KEPT_RESTARTS = 500


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tracer() -> tracing.Tracer:
    """The website's tracer (the no-op one unless settings name a collector or a trace file)."""
    return tracing.configure(
        "fedota-web", endpoint=settings.FEDOTA_OTLP_ENDPOINT, trace_file=settings.FEDOTA_TRACE_FILE
    )


def _service_trace_env() -> dict[str, str]:
    """What a run's coordinator and selectors need to trace into the current trace ({} when off)."""
    if not tracing.enabled():
        return {}
    env = {
        tracing.OTLP_ENDPOINT.env: settings.FEDOTA_PROBLEM_OTLP_ENDPOINT,
        tracing.TRACE_FILE.env: settings.FEDOTA_TRACE_FILE,
        tracing.TRACEPARENT_ENV: tracing.inject().get("traceparent", ""),
    }
    return {k: v for k, v in env.items() if v}


# ---- reads ------------------------------------------------------------------------------------


def problem_selector_ports(problem: Problem) -> tuple[int, ...]:
    """The host ports of the problem's selectors under its current run config."""
    count = (problem.run_config or {}).get("num_selectors", DEFAULTS["num_selectors"])
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SELECTORS:
        # An invalid config never launches; the default is the best guess of what will.
        count = DEFAULTS["num_selectors"]
    return selector_ports(problem.pk, count, base=settings.FEDOTA_SELECTOR_PORT_BASE)


def selector_endpoints(problem: Problem) -> list[str]:
    """The `host:port` endpoints data holders' clients dial, known before the first run.

    They depend only on the problem (its id and number of selectors), never on
    a run, so join bundles stay valid when a new run starts.
    """
    hosts = [f"[{host}]" if ":" in host else host for host in selector_hosts()]  # an IPv6 address in brackets
    # Each selector at every host it may run on, its own hosts together (the client tries them in turn).
    return [f"{host}:{port}" for port in problem_selector_ports(problem) for host in hosts]


def infrastructure_overview() -> QuerySet[Problem]:
    """Every problem with its runs (newest first) and their services, for the infrastructure page."""
    runs = Run.objects.order_by("-number").prefetch_related("services")
    return Problem.objects.select_related("owner").prefetch_related(Prefetch("runs", queryset=runs)).order_by("pk")


# ---- start and launch -------------------------------------------------------------------------


def run_start(*, problem: Problem, user: Any) -> Run:
    """Create the problem's next run and enqueue its launch (after commit).

    Only the owner or a site admin may start a run, only of a published
    problem, and only when no other run of it is active.
    """
    from webserver.problems import tasks

    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can start a run")
    with (
        tracer().start_as_current_span("run.start", attributes={"fedota.problem_id": problem.pk}) as span,
        transaction.atomic(),
    ):
        problem = Problem.objects.select_for_update().get(pk=problem.pk)
        if problem.state != ProblemState.PUBLISHED:
            raise Conflict(f"the problem is {problem.get_state_display().lower()}; only a published problem can run")
        active = problem.runs.filter(status__in=ACTIVE_RUN_STATUSES).order_by("-number").first()
        if active is not None:
            raise Conflict(
                f"run {active.number} of this problem is still {active.get_status_display().lower()}; "
                "stop it before starting a new one"
            )
        last = problem.runs.aggregate(last=Max("number"))["last"] or 0
        run = Run.objects.create(
            problem=problem,
            number=last + 1,
            config=dict(problem.run_config or {}),
            fab_sha256=problem.fab_sha256,
            app_version=problem.app_version,
            status=RunStatus.QUEUED,
        )
        span.set_attributes({"fedota.run_id": run.pk, "fedota.run_number": run.number})
        # The launch continues this trace; nothing extra is queued while tracing is off.
        carrier = tracing.inject()
        if carrier:
            tasks.publish.delay_on_commit(run.pk, trace=carrier)
        else:
            tasks.publish.delay_on_commit(run.pk)
    return run


def _run_fab_path(run: Run) -> Path:
    """The stored FAB of the app `run` was created with, even if its problem's app changed since.

    A run keeps its app for good: restarting it after a crash must not swap the
    code its data holders reviewed (their bundles pin it) for an edit meant for
    the next run. FABs are stored under their SHA-256 (with a suffix when the
    name was taken) and a replaced app's file is kept, so it is still there.
    """
    problem = run.problem
    if not problem.fab:
        raise ApplicationError("the problem has no Flower app")
    current = Path(problem.fab.path)
    if problem.fab_sha256 == run.fab_sha256:
        return current
    pinned = sorted(current.parent.glob(f"{run.fab_sha256}*.fab"))
    if not pinned:
        raise ApplicationError(
            f"the app this run was started with (SHA-256 {run.fab_sha256[:12]}…) is no longer stored; start a new run"
        )
    return pinned[0]


def build_run_spec(
    run: Run, *, service_token: str, selector_token: str, coordinator_hosts: list[str] | None = None
) -> RunSpec:
    """The backend-neutral description of what to start for `run` (raises ApplicationError if the app is unusable).

    `coordinator_hosts`: the names the backend's selectors dial the coordinator at
    (`Spawner.coordinator_hosts`), which its certificate names; by default 127.0.0.1.
    """
    from fedota_common.fab import FabError, load_app

    problem = run.problem
    fab_path = _run_fab_path(run)
    try:
        app = load_app(fab_path)
    except FabError as exc:
        raise ApplicationError(f"the problem's app cannot be loaded: {exc}") from exc
    if app.sha256 != run.fab_sha256:
        raise ApplicationError(
            "the stored app of this run no longer matches the SHA-256 it was started with; start a new run"
        )
    doc = dict(run.config or {})
    launch = validate_run_config(doc, app.default_config, builtin=bool(problem.app_template))
    num_selectors = int(launch["num_selectors"])
    # Fresh server certificates from the problem's CA: the selectors' for the host clients
    # dial, the coordinator's for the names its selectors dial.
    ca_cert, ca_key = problem_ca(problem.pk)
    tls_cert, tls_key = issue_server_cert(ca_cert, ca_key, selector_hosts())
    coordinator_cert, coordinator_key = issue_server_cert(ca_cert, ca_key, coordinator_hosts or ["127.0.0.1"])
    return RunSpec(
        problem_id=problem.pk,
        run_id=run.pk,
        run_number=run.number,
        fab_path=fab_path,
        fab_sha256=run.fab_sha256,
        run_config=dict(app_overrides(doc, app.default_config)),
        num_selectors=num_selectors,
        round_timeout=float(launch["round_timeout"]),
        min_clients=int(launch["min_clients"]),
        reply_policy=str(launch["reply_policy"]),
        report_url=f"{settings.FEDOTA_INTERNAL_URL}/internal/v1/runs/{run.pk}/",
        service_token=service_token,
        selector_token=selector_token,
        selector_ports=selector_ports(problem.pk, num_selectors, base=settings.FEDOTA_SELECTOR_PORT_BASE),
        tls_cert_pem=tls_cert,
        tls_key_pem=tls_key,
        coordinator_tls_cert_pem=coordinator_cert,
        coordinator_tls_key_pem=coordinator_key,
        ca_cert_pem=ca_cert,
    )


def _record_services(run: Run, states: list[ServiceState]) -> None:
    """Make the run's Service rows say what the backend reported."""
    seen = set()
    for state in states:
        Service.objects.update_or_create(
            run=run,
            role=state.role,
            index=state.index,
            defaults={
                "handle": state.handle,
                "address": state.address,
                "health": state.health,
                "detail": state.detail,
                "metrics": state.metrics,
            },
        )
        seen.add((state.role, state.index))
    for service in run.services.exclude(health=ServiceHealth.REMOVED):
        if (service.role, service.index) not in seen:
            service.health = ServiceHealth.EXITED
            service.detail = "the backend has no such service any more"
            service.save(update_fields=["health", "detail", "updated_at"])


def _mark_removed(run: Run) -> None:
    run.services.exclude(health=ServiceHealth.REMOVED).update(health=ServiceHealth.REMOVED, updated_at=timezone.now())


def run_launch(*, run_id: int, spawner: Spawner | None = None, trace: Mapping[str, str] | None = None) -> Run | None:
    """Start the run's coordinator and selectors; idempotent.

    Does nothing unless the run is queued or starting (a redelivered or
    duplicate task finds it running, stopped, ...). On success the run is
    running with one Service row per process; if the backend cannot start it
    the run is failed with the backend's reason and nothing is left running.
    `trace`: the trace context of the run's start (`run_start`), which the launch continues.
    """
    with tracer().start_as_current_span(
        "run.launch",
        context=tracing.extract(trace) if trace else None,
        kind=SpanKind.CONSUMER,
        attributes={"fedota.run_id": run_id},
    ) as span:
        return _launch(run_id, spawner, span)


def _launch(run_id: int, spawner: Spawner | None, span: tracing.Span) -> Run | None:
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("problem").filter(pk=run_id).first()
        if run is None or run.status not in (RunStatus.QUEUED, RunStatus.STARTING):
            return run
        service_token = secrets.token_urlsafe(32)
        run.service_token_hash = _hash_token(service_token)
        run.status = RunStatus.STARTING
        run.started_at = run.started_at or timezone.now()
        run.save(update_fields=["service_token_hash", "status", "started_at"])

    try:
        spawner = spawner or get_spawner()
        spec = build_run_spec(
            run,
            service_token=service_token,
            selector_token=secrets.token_urlsafe(32),
            coordinator_hosts=spawner.coordinator_hosts(run.problem_id),
        )
        with tracer().start_as_current_span(
            "spawner.start",
            attributes={"fedota.spawner": spawner.name, "fedota.selectors": spec.num_selectors},
        ):
            # The coordinator's run span is a child of this one (FEDOTA_TRACEPARENT).
            spec = replace(spec, extra_env={**spec.extra_env, **_service_trace_env()})
            states = spawner.start(spec)
    except (SpawnError, ApplicationError) as exc:
        span.set_status(StatusCode.ERROR, str(exc))
        run_fail(run_id=run.pk, reason=str(exc), spawner=spawner)
        run.refresh_from_db()
        return run

    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("problem").get(pk=run_id)
        still_wanted = run.status == RunStatus.STARTING
        if still_wanted:
            _record_services(run, states)
            run.status = RunStatus.RUNNING
            run.backend = spawner.name
            run.save(update_fields=["status", "backend"])
    if not still_wanted:
        # Stopped (or failed) while we were starting: what we started must not outlive it.
        log.info("run %s became %s during its launch; removing its services", run.pk, run.status)
        spawner.stop(run.problem_id)
        with transaction.atomic():
            _mark_removed(run)
    return run


def run_fail(*, run_id: int, reason: str, spawner: Spawner | None = None) -> None:
    """Mark an active run failed with `reason` and remove whatever it has running."""
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status not in ACTIVE_RUN_STATUSES:
            return
        if run.status == RunStatus.STOPPING:
            # The owner stopped it while it was starting (which is often why the
            # start broke): it stopped, it did not fail.
            run.status = RunStatus.STOPPED
        else:
            run.status = RunStatus.FAILED
            run.status_detail = reason
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "status_detail", "finished_at"])
        problem_id = run.problem_id
        # Its coordinator may never say so: the MLflow run is closed from here.
        mlflow_export_enqueue(run=run)
    try:
        (spawner or get_spawner()).stop(problem_id)
    except SpawnError as exc:
        # The reconciler removes it later as an orphan; the run's failure stands.
        log.warning("could not remove the services of failed run %s: %s", run_id, exc)
    with transaction.atomic():
        _mark_removed(run)


# ---- stop ---------------------------------------------------------------------------------------


def run_stop(*, problem: Problem, user: Any) -> Run:
    """Mark the problem's active run stopping and enqueue its teardown (after commit)."""
    from webserver.problems import tasks

    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can stop its run")
    with transaction.atomic():
        run = (
            Run.objects.select_for_update()
            .filter(problem=problem, status__in=ACTIVE_RUN_STATUSES)
            .order_by("-number")
            .first()
        )
        if run is None:
            raise Conflict("no run of this problem is active")
        if run.status != RunStatus.STOPPING:
            run.status = RunStatus.STOPPING
            run.save(update_fields=["status"])
        tasks.stop.delay_on_commit(problem.pk)
    return run


def run_teardown(*, problem_id: int, spawner: Spawner | None = None) -> Run | None:
    """Remove the problem's services; its stopping run becomes stopped. Idempotent.

    A late or redelivered stop task finds a newer run queued, starting or running
    and leaves it alone.
    """
    if Run.objects.filter(problem_id=problem_id, status__in=LAUNCHING_OR_RUNNING).exists():
        log.info("not tearing down problem %s: a run of it is active and not stopping", problem_id)
        return None
    (spawner or get_spawner()).stop(problem_id)
    with transaction.atomic():
        run = (
            Run.objects.select_for_update()
            .filter(problem_id=problem_id, status=RunStatus.STOPPING)
            .order_by("-number")
            .first()
        )
        if run is None:
            return None
        _mark_removed(run)
        run.status = RunStatus.STOPPED
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "finished_at"])
        mlflow_export_enqueue(run=run)
    return run


# ---- reconcile ----------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    """What one reconciliation did (run ids, problem ids), for logs and the infrastructure page."""

    checked: list[int] = field(default_factory=list)
    # Runs some of whose services were restarted alone (the run went on).
    restarted: list[int] = field(default_factory=list)
    # Runs launched whole again, because a service could not be restarted alone.
    relaunched: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    orphans_removed: list[int] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.checked)} running checked"]
        for name in ("restarted", "relaunched", "failed", "requeued", "stopped", "orphans_removed"):
            ids = getattr(self, name)
            if ids:
                parts.append(f"{name.replace('_', ' ')}: {', '.join(map(str, ids))}")
        return "; ".join(parts)


def _service_name(role: str, index: int) -> str:
    return f"selector {index}" if role == "selector" else role


@dataclass(frozen=True)
class _Plan:
    """What a running run needs: some services restarted alone, or a launch of the whole run."""

    dead: list[ServiceState] = field(default_factory=list)
    relaunch: str = ""  # why the run must be launched whole; "" if restarting `dead` will do

    @property
    def restarts(self) -> list[dict[str, Any]]:
        """The restarts this plan makes, as `Run.restarts` records them (without their time)."""
        if self.relaunch:
            return [{"service": "run", "reason": self.relaunch}]
        return [
            {
                "service": _service_name(s.role, s.index),
                "reason": s.detail.splitlines()[0].rstrip(":") if s.detail else "it exited",
            }
            for s in self.dead
        ]


def _plan(run: Run, states: list[ServiceState]) -> _Plan | None:
    """What a running run's services need, or None if nothing."""
    # ServiceState carries the backend's plain strings (the same values as ServiceRole / ServiceHealth).
    if not states:
        return _Plan(relaunch="none of its services exists any more")
    coordinator = next((s for s in states if s.role == "coordinator"), None)
    if coordinator is None:
        return _Plan(relaunch="its coordinator is gone")
    if coordinator.health == "exited" and coordinator.exit_code == 0:
        # The ServerApp completed: monitoring marks the run finished from the
        # coordinator's final report, and its selectors are then orphans. (A run the
        # coordinator reported failed is not running any more either: it is never restarted.)
        return None
    present = {(s.role, s.index) for s in states}
    recorded = run.services.exclude(health=ServiceHealth.REMOVED).values_list("role", "index")
    missing = sorted(index for role, index in recorded if role == "selector" and (role, index) not in present)
    if missing:
        return _Plan(relaunch=f"selector {missing[0]} is gone")
    # The coordinator first: restarted selectors dial it.
    dead = [s for s in states if s.health == "exited"]
    return _Plan(dead=dead) if dead else None


def _when(entry: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(entry["at"]))
    except (KeyError, TypeError, ValueError):
        return None


def _window_text(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 and seconds % 60 == 0 else f"{seconds:g} s"


def _engine_restarts(run: Run, states: list[ServiceState]) -> list[dict[str, Any]]:
    """Restarts the backend made by itself (Docker's restart policy) since the reconciler last looked.

    The engine's count for a container starts again when the reconciler starts it, so it is
    compared with the count the last record of the same container noted.
    """
    out: list[dict[str, Any]] = []
    for state in states:
        if not state.restarts:
            continue
        name = _service_name(state.role, state.index)
        same = [e for e in run.restarts or [] if e.get("service") == name and e.get("handle") == state.handle]
        seen = int(same[-1].get("count") or 0) if same else 0
        reason = "it crashed and the engine restarted it"
        out += [
            {"service": name, "reason": reason, "by": "engine", "handle": state.handle, "count": n}
            for n in range(seen + 1, state.restarts + 1)
        ]
    return out


def _spend(run: Run, restarts: list[dict[str, Any]], now: datetime) -> str:
    """Record `restarts` on the locked `run` if its budget allows them; else the reason it fails ("" if allowed)."""
    budget: int = settings.FEDOTA_RESTART_BUDGET
    window: float = settings.FEDOTA_RESTART_WINDOW
    history = list(run.restarts or [])
    since = now - timedelta(seconds=window)
    recent = [e for e in history if (at := _when(e)) is not None and at > since]
    if len(recent) + len(restarts) > budget:
        service, reason = restarts[-1]["service"], restarts[-1]["reason"]
        last = reason if service == "run" else f"{service}: {reason}"
        return (
            f"gave up: {len(recent)} restart{'s' if len(recent) != 1 else ''} in the last "
            f"{_window_text(window)} and more were needed (the budget is {budget} per {_window_text(window)}); "
            f"last failure: {last}"
        )
    history += [{"at": now.isoformat(), **entry} for entry in restarts]
    # The budget keeps this short in practice; a run that lives for months keeps its latest.
    run.restarts = history[-max(KEPT_RESTARTS, budget + len(restarts)) :]
    run.save(update_fields=["restarts"])
    return ""


def _event(run: Run, message: str, level: str = "WARNING") -> None:
    from webserver.monitoring.services import run_platform_event

    run_platform_event(run=run, message=message, level=level)


def _fail_locked(run: Run, reason: str, report: ReconcileReport) -> None:
    run.status = RunStatus.FAILED
    run.status_detail = reason
    run.phase = "failed"
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "status_detail", "phase", "finished_at"])
    _event(run, f"the run failed: {reason}", level="ERROR")
    report.failed.append(run.pk)
    mlflow_export_enqueue(run=run)


def _relaunch_locked(run: Run, reason: str, report: ReconcileReport) -> None:
    from webserver.problems import tasks

    log.warning("launching run %s whole again: %s", run.pk, reason)
    run.status = RunStatus.STARTING
    run.status_detail = f"launched again: {reason}"
    run.save(update_fields=["status", "status_detail"])
    _event(run, f"the run is launched again as a whole: {reason}")
    tasks.publish.delay_on_commit(run.pk)
    report.relaunched.append(run.pk)


def _give_up(spawner: Spawner, run: Run) -> None:
    try:
        spawner.stop(run.problem_id)
    except SpawnError as exc:
        log.warning("could not remove the services of failed run %s: %s", run.pk, exc)
    with transaction.atomic():
        _mark_removed(run)


def _reconcile_running(spawner: Spawner, run: Run, report: ReconcileReport) -> None:
    observed = timezone.now()
    states = spawner.status(run.problem_id)
    with transaction.atomic():
        locked = Run.objects.select_for_update().filter(pk=run.pk, status=RunStatus.RUNNING).first()
        if locked is None:
            return
        report.checked.append(run.pk)
        _record_services(locked, states)
        plan = _plan(locked, states)
        engine = _engine_restarts(locked, states)
        if plan is None and not engine:
            return
        if any((at := _when(e)) is not None and at >= observed for e in locked.restarts or []):
            return  # another reconciler acted on what we saw, after we looked
        failure = _spend(locked, engine + (plan.restarts if plan else []), timezone.now())
        if failure:
            _fail_locked(locked, failure, report)
        else:
            for entry in engine:
                _event(locked, f"{entry['service']} crashed and the engine restarted it")
            if plan is not None and plan.relaunch:
                _relaunch_locked(locked, plan.relaunch, report)
            elif plan is not None:
                for entry in plan.restarts:
                    log.warning("restarting %s of run %s: %s", entry["service"], run.pk, entry["reason"])
                    _event(locked, f"restarting {entry['service']}: {entry['reason']}")
    if failure:
        _give_up(spawner, run)
        return
    if plan is None or plan.relaunch:
        return
    report.restarted.append(run.pk)
    for dead in plan.dead:
        name = _service_name(dead.role, dead.index)
        try:
            state = spawner.restart(run.problem_id, dead.role, dead.index)
        except SpawnError as exc:
            log.warning("cannot restart %s of run %s: %s", name, run.pk, exc)
            with transaction.atomic():
                locked = Run.objects.select_for_update().filter(pk=run.pk, status=RunStatus.RUNNING).first()
                if locked is None:
                    return
                why = f"{name} could not be restarted alone: {exc}"
                failure = _spend(locked, [{"service": "run", "reason": why}], timezone.now())
                if failure:
                    _fail_locked(locked, failure, report)
                else:
                    _relaunch_locked(locked, why, report)
            if failure:
                _give_up(spawner, run)
            return
        with transaction.atomic():
            locked = Run.objects.select_for_update().get(pk=run.pk)
            for entry in reversed(locked.restarts or []):
                if entry.get("service") == name:
                    # Where the engine's own restart count of this container stands now (see _engine_restarts).
                    entry.update(handle=state.handle, count=state.restarts)
                    break
            locked.save(update_fields=["restarts"])
            Service.objects.filter(run=run, role=dead.role, index=dead.index).update(
                handle=state.handle,
                address=state.address,
                health=state.health,
                detail=state.detail,
                metrics=state.metrics,
                updated_at=timezone.now(),
            )
            _event(run, f"{name} restarted ({state.handle}, {state.address or 'no address'})", level="INFO")


def _delivering_final_reports(spawner: Spawner, problem_id: int) -> bool:
    """Is the problem's coordinator still up shortly after its run ended (uploading the final model)?"""
    recent = Run.objects.filter(problem_id=problem_id, finished_at__gt=timezone.now() - FINAL_REPORTS_GRACE)
    if not recent.exists():
        return False
    return any(s.role == "coordinator" and s.health != "exited" for s in spawner.status(problem_id))


def _remove_orphan(spawner: Spawner, problem_id: int) -> bool:
    if _delivering_final_reports(spawner, problem_id):
        return False
    if Run.objects.filter(problem_id=problem_id, status__in=ACTIVE_RUN_STATUSES).exists():
        return False
    # Outside any transaction, as run_teardown's: on SQLite a transaction holds the one write
    # lock, and a swarm takes tens of seconds to remove services, during which every other
    # run's reports would fail with "database is locked" (and a coordinator at its run's end
    # could give up on its final ones). A run of this problem published meanwhile is not
    # lost: its launch fails with the backend's reason if its services went during its
    # start, and the reconciler launches it again if they went after.
    spawner.stop(problem_id, remove_data=False)
    with transaction.atomic():
        # The ended runs' service rows said what ran; now nothing does.
        Service.objects.filter(run__problem_id=problem_id).exclude(run__status__in=ACTIVE_RUN_STATUSES).exclude(
            health=ServiceHealth.REMOVED
        ).update(health=ServiceHealth.REMOVED, updated_at=timezone.now())
    return True


def infrastructure_reconcile(*, spawner: Spawner | None = None) -> ReconcileReport:
    """Make what runs match what should run; safe to run at any time, and twice at once.

    - a running run: record each service's health; restart each service that exited
      unexpectedly, alone, as it was (the others go on; a coordinator resumes from its
      checkpoint); launch the run whole only when a service cannot be restarted alone
      (it was removed); fail the run when more restarts than FEDOTA_RESTART_BUDGET
      would fall within FEDOTA_RESTART_WINDOW. A coordinator that exited with code 0
      finished its run and is left to monitoring, as is a run it reported failed;
    - a queued run nobody picked up: enqueue its launch again;
    - a stopping run: tear it down (in case its stop task was lost);
    - anything the backend runs for a problem with no active run (or no problem): remove it.
    """
    from webserver.problems import tasks

    spawner = spawner or get_spawner()
    report = ReconcileReport()

    for run in Run.objects.filter(status=RunStatus.RUNNING).order_by("pk"):
        try:
            _reconcile_running(spawner, run, report)
        except SpawnError as exc:
            log.warning("cannot inspect run %s: %s", run.pk, exc)

    stale = timezone.now() - REQUEUE_AFTER
    for run in Run.objects.filter(status=RunStatus.QUEUED, created_at__lt=stale).order_by("pk"):
        tasks.publish.delay(run.pk)
        report.requeued.append(run.pk)

    for problem_id in Run.objects.filter(status=RunStatus.STOPPING).values_list("problem_id", flat=True).distinct():
        if run_teardown(problem_id=problem_id, spawner=spawner) is not None:
            report.stopped.append(problem_id)

    active = set(Run.objects.filter(status__in=ACTIVE_RUN_STATUSES).values_list("problem_id", flat=True))
    for problem_id in sorted(spawner.problems() - active):
        try:
            if _remove_orphan(spawner, problem_id):
                report.orphans_removed.append(problem_id)
        except SpawnError as exc:
            log.warning("cannot remove the orphaned services of problem %s: %s", problem_id, exc)
    if len(report.summary().split("; ")) > 1:
        log.info("reconciled: %s", report.summary())
    return report
