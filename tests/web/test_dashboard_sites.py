"""A run with many sites (issue 16: 1,000 clients in a round): the round report is written in a
few queries, the dashboard lists the most recently active sites and counts the rest, and the
participants CSV has them all."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from webserver.monitoring.queries import PARTICIPANTS_SHOWN
from webserver.participation.models import Contribution
from webserver.problems.models import Run, Service

TOKEN = "many-sites-token"


@pytest.fixture
def run(users: dict[str, Any], make_problem: Callable[..., Any]) -> Run:
    problem = make_problem(users["owner"])
    run = Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )
    Service.objects.create(run=run, role="coordinator", index=0, health="healthy")
    return run


def _report_round(client: Client, run: Run, number: int, sites: list[str]) -> int:
    """Post one round's report naming `sites`; returns the SQL queries it took."""
    who = [{"node_id": i, "participant": "", "site": s} for i, s in enumerate(sites)]
    event = {
        "event_id": uuid.uuid4().hex,
        "ts": time.time(),
        "kind": "round_finished",
        "round": number,
        "started": 1_700_000_000.0,
        "finished": 1_700_000_001.0,
        "seconds": 1.0,
        "failures": 0,
        "participants": who,
        "eval_participants": [],
        "train_metrics": {},
        "eval_metrics": {},
    }
    with CaptureQueriesContext(connection) as captured:
        resp = client.post(
            f"/internal/v1/runs/{run.pk}/events",
            data=json.dumps([event]),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
        )
    assert resp.status_code == 200, resp.content
    return len(captured)


def test_a_round_of_many_sites_is_recorded_in_batches_not_a_query_per_site(client: Client, run: Run) -> None:
    few = _report_round(client, run, 1, [f"site {i}" for i in range(3)])
    many = _report_round(client, run, 2, [f"site {i}" for i in range(300)])
    # One INSERT per batch of rows (SQLite bounds a statement's parameters), not two queries per site.
    assert many <= few + 2
    assert Contribution.objects.filter(run=run, round=2).count() == 300
    # The same round reported again (a resumed coordinator) keeps its rows and adds none.
    _report_round(client, run, 2, [f"site {i}" for i in range(300)])
    assert Contribution.objects.filter(run=run).count() == 303


def test_the_dashboard_lists_the_latest_sites_and_counts_the_rest(
    client: Client, run: Run, users: dict[str, Any]
) -> None:
    sites = [f"site {i:03d}" for i in range(120)]
    _report_round(client, run, 1, sites)
    _report_round(client, run, 2, sites[:70])
    client.force_login(users["owner"])

    doc = client.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    assert len(doc["participants"]) == PARTICIPANTS_SHOWN
    assert all(p["last_round"] == 2 for p in doc["participants"])  # most recently active first
    assert doc["participants_summary"] == {
        "total": 120,
        "shown": PARTICIPANTS_SHOWN,
        "latest_round": 2,
        "in_latest_round": 70,
        "never": 0,
    }
    page = client.get(f"/monitoring/problems/{run.problem_id}/").content.decode()
    assert f"The {PARTICIPANTS_SHOWN} most recently active of 120 sites; 70 contributed to round 2" in page

    resp = client.get(doc["run"]["participants_csv"])
    assert resp.status_code == 200
    rows = list(csv.DictReader(io.StringIO(resp.content.decode())))
    assert len(rows) == 120
    last = {r["site"]: (r["last_round"], r["rounds"]) for r in rows}
    assert last["site 000"] == ("2", "2") and last["site 119"] == ("1", "1")


def test_a_run_with_few_sites_lists_them_all_without_a_summary_line(
    client: Client, run: Run, users: dict[str, Any]
) -> None:
    _report_round(client, run, 1, ["a", "b"])
    client.force_login(users["owner"])
    doc = client.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    assert [p["site"] for p in doc["participants"]] == ["a", "b"]
    assert doc["participants_summary"]["total"] == doc["participants_summary"]["shown"] == 2
    page = client.get(f"/monitoring/problems/{run.problem_id}/").content.decode()
    assert 'id="participants-summary" class="muted" hidden' in page


def test_the_participants_csv_is_for_those_who_may_see_the_run(client: Client, run: Run, users: dict[str, Any]) -> None:
    _report_round(client, run, 1, ["a"])
    client.force_login(users["other_setter"])
    assert client.get(f"/monitoring/runs/{run.pk}/participants.csv").status_code in (403, 404)
