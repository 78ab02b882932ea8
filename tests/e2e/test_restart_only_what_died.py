"""Restart only what died, with a real federation training (issue 15, part 1).

The website (process spawner: real coordinator and selector processes, TLS) runs a long
problem with two selectors; two hospitals train. The selector holding clients is killed.
Its clients fail over to the other selector, the reconciler restarts that selector alone
on its port, and training goes on from where it was: the coordinator keeps its pid, no
round is started over, the run is never launched again.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.test_credentials import _client, _join, _stop, _user, _wait

pytestmark = [pytest.mark.e2e]


@pytest.mark.django_db(transaction=True)
def test_a_killed_selector_is_restarted_alone_and_training_goes_on(
    process_site: str, tmp_path: Path, demo: Path
) -> None:
    from django.utils import timezone

    from webserver.monitoring.models import RoundRecord
    from webserver.problems import lifecycle
    from webserver.problems.models import Problem, ProblemState, Run, RunStatus
    from webserver.problems.services import problem_create
    from webserver.spawner import get_spawner

    contract = json.loads((demo / "breast_cancer" / "contract.json").read_text())
    hospitals = demo / "breast_cancer" / "clients"
    owner = _user("setter", "setter")
    problem = problem_create(
        owner=owner,
        title="Long run",
        description="",
        contract=contract,
        app_template="tabular",
        run_config={
            "rounds": 10_000,
            "min_clients": 2,
            "clients_per_round": 0,
            "round_timeout": 20,
            "num_selectors": 2,
        },
    )
    Problem.objects.filter(pk=problem.pk).update(state=ProblemState.PUBLISHED)
    problem.refresh_from_db()
    run = lifecycle.run_start(problem=problem, user=owner)
    lifecycle.run_launch(run_id=run.pk)
    run = Run.objects.get(pk=run.pk)
    assert run.status == RunStatus.RUNNING, run.status_detail
    spawner = get_spawner("process")
    procs = []
    try:
        for i, name in enumerate(("ada", "bea")):
            _, bundle = _join(problem, _user(name, "holder"), tmp_path)
            procs.append(_client(bundle, hospitals / f"hospital_{i}", tmp_path / f"{name}.log"))
        _wait(lambda: run.rounds.filter(number__gte=3).exists(), 180, "training to reach round 3")

        before = {(s.role, s.index): s for s in spawner.status(problem.pk)}
        counts = dict(run.services.filter(role="selector").values_list("index", "clients_connected"))
        victim = max(counts, key=lambda i: counts[i])  # the selector holding clients
        assert counts[victim] >= 1, counts
        at_kill = run.rounds.order_by("-number").values_list("number", flat=True).first() or 0
        killed_at = timezone.now()
        os.killpg(int(before[("selector", victim)].handle), signal.SIGKILL)
        _wait(
            lambda: {(s.role, s.index): s for s in spawner.status(problem.pk)}[("selector", victim)].health == "exited",
            10,
            "the selector to be seen dead",
        )

        report = lifecycle.infrastructure_reconcile()
        assert report.restarted == [run.pk] and report.relaunched == [], report.summary()
        after = {(s.role, s.index): s for s in spawner.status(problem.pk)}
        assert after[("coordinator", 0)].handle == before[("coordinator", 0)].handle
        assert after[("selector", 1 - victim)].handle == before[("selector", 1 - victim)].handle
        assert after[("selector", victim)].address == before[("selector", victim)].address
        assert after[("selector", victim)].health == "healthy"

        _wait(lambda: run.rounds.filter(number__gte=at_kill + 5).exists(), 240, "five more rounds after the kill")
        # Nothing started over: every round finished since the kill comes after the one before it.
        since = list(
            RoundRecord.objects.filter(run=run, finished_at__gt=killed_at)
            .order_by("number")
            .values_list("number", flat=True)
        )
        assert since and min(since) > at_kill, (at_kill, since)
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING and [r["service"] for r in run.restarts] == [f"selector {victim}"]
        assert all(p.poll() is None for p in procs), "a client gave up"
    finally:
        for proc in procs:
            _stop(proc)
        spawner.stop(problem.pk)
