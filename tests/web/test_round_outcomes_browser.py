"""The dashboard's rounds table in real headless Chromium: dashboard.js shows each round's
results, its rejected replies with their reasons, and a round with no results, from what the
coordinator reported through the internal API. Saves test-artifacts/dashboard-round-outcomes.png."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client

from tests.web.test_dashboard_charts_browser import _event, plotted, wait_for_points
from webserver.monitoring.models import Checkpoint
from webserver.problems.models import Run

REPO = Path(__file__).resolve().parents[2]
TOKEN = "round-outcomes-browser-token"
NAN = "arrays hold NaN or Inf"
DTYPE = "array 0 is float64, the model's is int64"

pytestmark = [pytest.mark.browser]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    yield context
    context.close()


def _round(number: int, train_loss: float = 0.3, **extra: Any) -> dict[str, Any]:
    return _event(
        "round_finished",
        round=number,
        seconds=2.0,
        failures=0,
        participants=[{"node_id": 7, "participant": "", "site": "site 7"}],
        train_loss=train_loss,
        **extra,
    )


def _dashboard(
    live_server: Any, page: Any, owner: Any, make_problem: Callable[..., Any], events: list[dict[str, Any]]
) -> Any:
    """A running run that reported `events` through the internal API; its dashboard open in a tab."""
    problem = make_problem(owner)
    run = Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )
    client = Client()
    resp = client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps(events),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert resp.status_code == 200
    client.force_login(owner)
    host = urlsplit(live_server.url).hostname
    page.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "domain": host, "path": "/"}]
    )  # fmt: skip
    tab = page.new_page()
    tab.goto(f"{live_server.url}/monitoring/problems/{problem.pk}/")
    return tab


@pytest.mark.django_db(transaction=True)
def test_the_rounds_table_shows_reasons_and_rounds_without_results(
    live_server: Any, page: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    events = [
        _event("run_started", total_rounds=3, reply_policy="strict"),
        _round(1, rejected=0, results=2, no_results=False),
        _round(2, rejected=3, rejected_reasons={NAN: 1, DTYPE: 1}, results=1, no_results=False),
        _round(3, rejected=2, rejected_reasons={NAN: 2}, results=0, no_results=True),
        _event("log", level="WARNING", message=f"warning: round 3: 2 replies rejected: {NAN} (x2)", source="rounds"),
        _event("run_finished", ok=False, detail="no round got a single accepted training reply", dropped_events=0),
    ]
    tab = _dashboard(live_server, page, users["owner"], make_problem, events)
    tab.wait_for_selector("#rounds-body tr[data-round='3']")

    row = tab.locator("#rounds-body tr[data-round='3']")
    assert "no-results" in (row.get_attribute("class") or "")
    assert row.locator(".badge.rejected").inner_text() == "no results"
    detail3 = tab.locator("#rounds-body tr[data-detail-of='3']").inner_text()
    assert "Round 3: no results." in detail3 and f"{NAN} ×2" in detail3

    detail2 = tab.locator("#rounds-body tr[data-detail-of='2']").inner_text()
    # Two of the three rejections have a listed reason; the third is counted, not lost.
    assert f"{NAN} ×1" in detail2 and f"{DTYPE} ×1" in detail2 and "other reasons ×1" in detail2
    rejected2 = tab.locator("#rounds-body tr[data-round='2'] td.rejected")
    assert rejected2.inner_text() == "3" and NAN in (rejected2.get_attribute("title") or "")
    assert tab.locator("#rounds-body tr[data-round='2'] td").nth(2).inner_text() == "1"  # results
    assert tab.locator("#rounds-body tr[data-detail-of='1']").count() == 0  # a clean round: no detail

    status = tab.locator("#run-status").inner_text()
    assert "Reply policy: strict" in status and "not yet confirmed" not in status
    assert "no round got a single accepted training reply" in status and "Failed" in status
    assert "warning: round 3: 2 replies rejected" in tab.locator("#log-lines").inner_text()

    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    tab.screenshot(path=str(artifacts / "dashboard-round-outcomes.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
def test_the_rounds_table_marks_where_a_restarted_coordinator_resumed(
    live_server: Any, page: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    events = [_event("run_started", total_rounds=5)]
    events += [_round(n, attempt=1, results=1) for n in (1, 2, 3)]
    # The coordinator was killed during round 4 and resumed after round 3 as attempt 2.
    events += [_event("run_started", total_rounds=5)] + [_round(n, attempt=2, results=1) for n in (4, 5)]
    tab = _dashboard(live_server, page, users["owner"], make_problem, events)
    tab.wait_for_selector("#rounds-body tr[data-round='5']")
    marked = tab.locator("#rounds-body tr[data-attempt]")
    assert marked.count() == 1 and marked.get_attribute("data-round") == "4"
    flag = marked.locator(".badge.resumed")
    assert flag.inner_text() == "resumed (attempt 2)" and "after round 3" in (flag.get_attribute("title") or "")

    # The chart marks it too, at round 4, and the run stays one curve: rounds 1 to 5 in one line.
    wait_for_points(tab, "chart-loss", 5)
    chart = plotted(tab, "chart-loss")
    assert chart["markers"] == ["resumed (attempt 2)"] and chart["marker_xs"] == [4]
    [train] = chart["series"]
    assert train["name"] == "train loss" and train["xs"] == [1, 2, 3, 4, 5] and train["opacity"] == 1
    acc = plotted(tab, "chart-acc")
    # The app reports no accuracy: the chart says so, and still marks the resume.
    assert acc["series"] == [] and acc["notes"] == ["no accuracy reported"]
    assert acc["markers"] == ["resumed (attempt 2)"] and acc["marker_xs"] == [4]


@pytest.mark.django_db(transaction=True)
def test_the_chart_draws_an_attempt_that_restarted_at_round_1_apart_from_the_earlier_one(
    live_server: Any, page: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    events = [_event("run_started", total_rounds=5)]
    events += [_round(n, attempt=1, train_loss=1.0 - n / 10) for n in (1, 2, 3)]
    # Killed during round 4; its app could not resume, so attempt 2 began again at round 1.
    events += [_event("run_started", total_rounds=5)]
    events += [_round(n, attempt=2, train_loss=0.5 - n / 10) for n in (1, 2)]
    tab = _dashboard(live_server, page, users["owner"], make_problem, events)
    wait_for_points(tab, "chart-loss", 2)

    chart = plotted(tab, "chart-loss")
    assert chart["markers"] == ["restarted (attempt 2)"] and chart["marker_xs"] == [1]
    drawn = chart["series"]
    # The latest attempt is the curve, never zig-zagging back to round 1; attempt 1 is a lighter line beside it.
    assert [(s["name"], s["xs"], s["opacity"]) for s in drawn] == [
        ("train loss", [1, 2], 1),
        ("train loss, earlier attempts", [1, 2, 3], 0.4),
    ]
    assert drawn[0]["color"] == drawn[1]["color"]
    assert "train loss, earlier attempts" in chart["legend"]
    assert tab.locator("#rounds-body tr[data-attempt='2']").locator(".badge.resumed").inner_text() == (
        "restarted (attempt 2)"
    )
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    tab.locator("#chart-loss").screenshot(path=str(artifacts / "dashboard-restarted-attempt.png"))


@pytest.mark.django_db(transaction=True)
def test_a_poll_keeps_the_rounds_of_a_restarted_attempt_in_order(
    live_server: Any, page: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    events = [_round(n, attempt=1) for n in range(1, 11)] + [_round(n, attempt=2) for n in range(1, 7)]
    tab = _dashboard(live_server, page, users["owner"], make_problem, events)
    tab.wait_for_selector("#rounds-body tr[data-attempt='2']")
    run = Run.objects.get(problem__owner=users["owner"])
    # With every round's model stored, the next poll asks only for the rounds after 4 (6 - 2),
    # which attempt 1 has too (5 to 10).
    Checkpoint.objects.bulk_create(
        Checkpoint(run=run, attempt=a, round=n, npz=f"checkpoints/a{a}r{n}.npz")
        for a, last in ((1, 10), (2, 6))
        for n in range(1, last + 1)
    )
    tab.wait_for_selector("#rounds-body tr[data-round='10'] a")
    # Each model's link is followed by its signed provenance manifest's.
    hrefs = tab.eval_on_selector_all(
        "#rounds-body tr[data-round='10'] a", "as => as.map((a) => a.getAttribute('href'))"
    )
    base = f"/monitoring/runs/{run.pk}/checkpoints"
    assert hrefs[-2:] == [f"{base}/10.npz", f"{base}/10.npz.manifest.json"]
    resp = Client().post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps([_round(7, attempt=2)]),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert resp.status_code == 200
    tab.wait_for_function("document.querySelectorAll('#rounds-body tr[data-round]').length === 17")
    shown = tab.eval_on_selector_all("#rounds-body tr[data-round]", "rows => rows.map((r) => Number(r.dataset.round))")
    # Newest first: attempt 2's rounds, then attempt 1's.
    assert shown == [7, 6, 5, 4, 3, 2, 1, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
