"""Rejected replies, rounds without results and the reply policy: reported by the coordinator,
stored by the internal API, shown per round on the dashboard (issue 14: no silent failure)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape

from webserver.monitoring.models import LogLine, RoundRecord, RunReport
from webserver.problems.models import Run

TOKEN = "round-outcomes-service-token"
NAN = "arrays hold NaN or Inf"
DTYPE = "array 0 is float64, the model's is int64"


@pytest.fixture
def run(users: dict[str, Any], make_problem: Callable[..., Any]) -> Run:
    problem = make_problem(users["owner"])
    return Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        config={"reply_policy": "strict"},
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}


def _round(number: int, **extra: Any) -> dict[str, Any]:
    return _event(
        "round_finished",
        round=number,
        seconds=2.0,
        failures=0,
        participants=[{"node_id": 7, "participant": "", "site": "site 7"}],
        train_metrics={"train_loss": 0.3},
        train_loss=0.3,
        **extra,
    )


def _post(client: Client, run: Run, body: Any) -> Any:
    return client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )


def _dashboard(client: Client, run: Run, users: dict[str, Any]) -> tuple[dict[str, Any], str]:
    client.force_login(users["owner"])
    data = client.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    html = client.get(f"/monitoring/problems/{run.problem_id}/").content.decode()
    return data, html


# ---- the internal API stores what the coordinator reports ----------------------------------------


def test_reasons_results_and_the_reply_policy_are_stored(client: Client, run: Run) -> None:
    events = [
        _event("run_started", total_rounds=3, app="fedota-tabular", fab_sha256="x", reply_policy="strict"),
        _round(1, rejected=3, rejected_reasons={NAN: 2, DTYPE: 1}, results=1, no_results=False),
        _round(2, rejected=2, rejected_reasons={NAN: 2}, results=0, no_results=True),
    ]
    assert _post(client, run, events).status_code == 200

    first, second = RoundRecord.objects.filter(run=run).order_by("number")
    assert (first.rejected, first.rejected_reasons, first.results, first.no_results) == (
        3,
        {NAN: 2, DTYPE: 1},
        1,
        False,
    )
    assert (second.rejected, second.rejected_reasons, second.results, second.no_results) == (2, {NAN: 2}, 0, True)
    assert RunReport.objects.get(run=run).reply_policy == "strict"


def test_an_older_coordinator_without_these_fields_still_reports(
    client: Client, run: Run, users: dict[str, Any]
) -> None:
    events = [_event("run_started", total_rounds=2, app="fedota-tabular", fab_sha256="x"), _round(1)]
    assert _post(client, run, events).status_code == 200

    record = RoundRecord.objects.get(run=run, number=1)
    assert (record.rejected, record.rejected_reasons, record.results, record.no_results) == (0, {}, None, False)
    assert not RunReport.objects.filter(run=run).exists()
    data, html = _dashboard(client, run, users)
    shown = data["rounds"][0]
    assert [shown[k] for k in ("rejected", "rejected_reasons", "results", "no_results")] == [0, {}, None, False]
    # The policy the website configured, said to be unconfirmed.
    assert data["run"]["reply_policy"] == {"name": "strict", "reported": False}
    assert "not yet confirmed by the coordinator" in html


@pytest.mark.parametrize(
    ("extra", "field", "why"),
    [
        ({"rejected": 1, "rejected_reasons": [NAN]}, "rejected_reasons", "must be an object"),
        ({"rejected": 1, "rejected_reasons": {NAN: "1"}}, f"rejected_reasons.{NAN}", "from 1 to"),
        ({"rejected": 1, "rejected_reasons": {NAN: 0}}, f"rejected_reasons.{NAN}", "from 1 to"),
        ({"rejected": 1, "rejected_reasons": {NAN: True}}, f"rejected_reasons.{NAN}", "from 1 to"),
        ({"rejected": 1, "rejected_reasons": {NAN: 2**31}}, f"rejected_reasons.{NAN}", "from 1 to"),
        ({"rejected": 1, "rejected_reasons": {"x" * 301: 1}}, "rejected_reasons", "1 to 300 characters"),
        ({"rejected": 1, "rejected_reasons": {"": 1}}, "rejected_reasons", "1 to 300 characters"),
        ({"rejected": 1, "rejected_reasons": {"a\x00b": 1}}, "rejected_reasons", "without NUL"),
        ({"rejected": 11, "rejected_reasons": {f"r{i}": 1 for i in range(11)}}, "rejected_reasons", "at most 10"),
        ({"rejected": 1, "rejected_reasons": {NAN: 2}}, "rejected_reasons", "more than rejected (1)"),
        ({"rejected_reasons": {NAN: 1}}, "rejected_reasons", "more than rejected (0)"),
        ({"results": -1}, "results", "≥ 0"),
        ({"results": 2**31}, "results", "≤ 2147483647"),
        ({"results": 1.5}, "results", "whole number"),
        ({"no_results": "yes"}, "no_results", "true or false"),
        ({"no_results": 1}, "no_results", "true or false"),
        ({"results": 2, "no_results": True}, "no_results", "cannot be true when results is 2"),
    ],
)
def test_a_bad_round_outcome_is_a_clear_400_and_nothing_is_stored(
    client: Client, run: Run, extra: dict[str, Any], field: str, why: str
) -> None:
    resp = _post(client, run, [_round(1), _round(2, **extra)])
    assert resp.status_code == 400
    body = resp.json()
    assert body["field"] == f"events[1].{field}" and why in body["detail"]
    assert not RoundRecord.objects.filter(run=run).exists()


@pytest.mark.parametrize("policy", ["auto", "STRICT", 3, ["strict"]])
def test_an_unknown_reply_policy_is_a_clear_400(client: Client, run: Run, policy: Any) -> None:
    resp = _post(client, run, _event("run_started", total_rounds=2, reply_policy=policy))
    assert resp.status_code == 400
    assert resp.json()["field"] == "events[0].reply_policy"
    assert not RunReport.objects.filter(run=run).exists()


def test_a_restarted_coordinator_reports_the_policy_again(client: Client, run: Run) -> None:
    assert _post(client, run, _event("run_started", reply_policy="flower")).status_code == 200
    assert _post(client, run, _event("run_started", reply_policy="strict")).status_code == 200
    assert _post(client, run, _event("run_started")).status_code == 200  # silent: the last word stands
    assert RunReport.objects.get(run=run).reply_policy == "strict"


# ---- the dashboard shows them ---------------------------------------------------------------------


def test_the_dashboard_shows_reasons_no_results_and_the_policy(client: Client, run: Run, users: dict[str, Any]) -> None:
    warning = f"warning: round 2: 12 replies rejected: {NAN} (x9); {DTYPE} (x2)"
    events = [
        _event("run_started", total_rounds=2, reply_policy="strict"),
        _round(1, rejected=0, rejected_reasons={}, results=2, no_results=False),
        # The coordinator sends its 10 most common reasons: one of the 12 rejections is not listed.
        _round(2, rejected=12, rejected_reasons={DTYPE: 2, NAN: 9}, results=0, no_results=True),
        _event("log", level="WARNING", message=warning, source="rounds"),
    ]
    assert _post(client, run, events).status_code == 200

    data, html = _dashboard(client, run, users)
    one, two = data["rounds"]
    assert (one["results"], one["no_results"], one["rejected_reasons"]) == (2, False, {})
    assert (two["results"], two["no_results"], two["rejected"]) == (0, True, 12)
    assert list(two["rejected_reasons"].items()) == [(NAN, 9), (DTYPE, 2)]  # most common first
    assert data["run"]["reply_policy"] == {"name": "strict", "reported": True}
    assert data["rejected"] == {"replies": 12, "rounds": 1}
    # The rejected-reply warning is in the run's log list, with its reason.
    assert [(line["level"], line["message"]) for line in data["logs"]] == [("WARNING", warning)]
    assert client.get(f"/api/v1/runs/{run.pk}/rounds/").json()[1]["rejected_reasons"] == {NAN: 9, DTYPE: 2}

    # The page: the policy in force in the header, the columns dashboard.js fills, the warning line.
    assert '<p id="reply-policy">Reply policy: <strong>strict</strong>' in html
    assert "not yet confirmed" not in html
    assert ">Results</th>" in html and ">Rejected</th>" in html
    assert f'<li class="log-warning"><span class="log-level">WARNING</span> {escape(warning)}</li>' in html


def test_a_run_in_which_nothing_was_accepted_ends_failed_with_the_reason(
    client: Client, run: Run, users: dict[str, Any]
) -> None:
    reason = f"no round got a single accepted training reply: 4 asked for, 4 rejected: {NAN} (x4)"
    events = [
        _event("run_started", total_rounds=2, reply_policy="strict"),
        _round(1, rejected=2, rejected_reasons={NAN: 2}, results=0, no_results=True),
        _round(2, rejected=2, rejected_reasons={NAN: 2}, results=0, no_results=True),
        _event("run_finished", ok=False, detail=reason, dropped_events=0),
    ]
    assert _post(client, run, events).status_code == 200

    run.refresh_from_db()
    assert (run.status, run.phase, run.status_detail) == ("failed", "failed", reason)
    data, html = _dashboard(client, run, users)
    assert (data["run"]["status"], data["run"]["status_detail"]) == ("failed", reason)
    assert all(r["no_results"] for r in data["rounds"])
    assert f'<p class="error">{escape(reason)}</p>' in html
    assert 'data-run-badge="1">Failed</span>' in html


# ---- the coordinator's own code against the real server ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_coordinator_reports_reasons_and_a_failed_run(
    live_server: Any, users: dict[str, Any], make_problem: Callable[..., Any], tmp_path: Path
) -> None:
    from coordinator.report import Reporter, Target
    from coordinator.rounds import RoundRecord as CoordinatorRound

    problem = make_problem(users["owner"])
    run = Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )
    # A round as the coordinator's tracker closes it: two replies asked for, both rejected.
    record = CoordinatorRound("1", asked=2, rejected=2, finished=time.time())
    record.rejections.update([NAN, "x" * 300])
    reporter = Reporter(Target(f"{live_server.url}/internal/v1/runs/{run.pk}/", TOKEN), spool_dir=tmp_path)
    reporter.start()
    reporter.run_started(total_rounds=1, app="fedota-tabular", fab_sha256=problem.fab_sha256, reply_policy="strict")
    reporter.round_finished(record.as_json())
    reporter.run_finished(ok=False, detail="no round got a single accepted reply")
    assert reporter.close(timeout=20.0)
    assert reporter.refused == 0

    stored = RoundRecord.objects.get(run=run, number=1)
    assert (stored.rejected, stored.rejected_reasons) == (2, {NAN: 1, "x" * 300: 1})
    assert (stored.results, stored.no_results) == (0, True)
    assert RunReport.objects.get(run=run).reply_policy == "strict"
    run.refresh_from_db()
    assert run.status == "failed" and run.status_detail == "no round got a single accepted reply"
    assert not LogLine.objects.filter(run=run).exists()
