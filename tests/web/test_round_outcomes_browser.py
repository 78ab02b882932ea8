"""The dashboard's rounds table in real headless Chromium: dashboard.js shows each round's
results, its rejected replies with their reasons, and a round with no results, from what the
coordinator reported through the internal API. Saves test-artifacts/dashboard-round-outcomes.png."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client

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


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}


def _round(number: int, **extra: Any) -> dict[str, Any]:
    return _event(
        "round_finished",
        round=number,
        seconds=2.0,
        failures=0,
        participants=[{"node_id": 7, "participant": "", "site": "site 7"}],
        train_loss=0.3,
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
