"""A run that fails keeps its last completed model downloadable and says why; restarts are shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.test import Client

from webserver.monitoring.models import Checkpoint
from webserver.problems.models import Run

pytestmark = pytest.mark.web

WHY = "gave up: 5 restarts in the last 10 minutes and more were needed; last failure: selector 0: was killed"


def _run(make_problem: Callable[..., Any], owner: Any, status: str, rounds: int) -> Run:
    problem = make_problem(owner)
    run = Run.objects.create(
        problem=problem, number=1, fab_sha256="x", status=status, current_round=rounds, total_rounds=10
    )
    for rnd in range(1, rounds + 1):
        checkpoint = Checkpoint.objects.create(run=run, round=rnd)
        checkpoint.npz.save(f"r{rnd}.npz", ContentFile(f"npz of round {rnd}".encode()))
    return run


def test_a_failed_run_offers_its_last_completed_model_and_says_why(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    run = _run(make_problem, users["owner"], "failed", rounds=3)
    Run.objects.filter(pk=run.pk).update(status_detail=WHY)
    client.force_login(users["owner"])

    data = client.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    assert data["final_model"] == {
        "npz": f"/monitoring/runs/{run.pk}/checkpoints/3.npz",
        "pt": None,
        "npz_manifest": f"/monitoring/runs/{run.pk}/checkpoints/3.npz.manifest.json",
        "pt_manifest": None,
        "round": 3,
    }
    assert data["run"]["status_detail"] == WHY

    page = client.get(f"/monitoring/problems/{run.problem_id}/").content.decode()
    assert "last completed model (round 3; the run failed before its final model)" in page
    assert WHY in page

    # The final model's own address gives it too, named for its round (the measured 404).
    resp = client.get(f"/monitoring/runs/{run.pk}/checkpoints/0.npz")
    assert resp.status_code == 200
    assert b"".join(resp.streaming_content) == b"npz of round 3"
    assert resp["X-Fedota-Model-Round"] == "3"
    assert "run1-round0003.npz" in resp["Content-Disposition"]


def test_a_finished_runs_final_model_is_the_final_model(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    run = _run(make_problem, users["owner"], "finished", rounds=2)
    final = Checkpoint.objects.create(run=run, round=0)
    final.npz.save("final.npz", ContentFile(b"final npz"))
    client.force_login(users["owner"])

    data = client.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    assert data["final_model"] == {
        "npz": f"/monitoring/runs/{run.pk}/checkpoints/0.npz",
        "pt": None,
        "npz_manifest": f"/monitoring/runs/{run.pk}/checkpoints/0.npz.manifest.json",
        "pt_manifest": None,
        "round": 0,
    }
    resp = client.get(f"/monitoring/runs/{run.pk}/checkpoints/0.npz")
    assert b"".join(resp.streaming_content) == b"final npz" and "run1-final.npz" in resp["Content-Disposition"]


@pytest.mark.parametrize("rounds", [0, 2])
def test_a_running_run_has_no_final_model_yet(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any], rounds: int
) -> None:
    run = _run(make_problem, users["owner"], "running" if rounds else "failed", rounds=rounds)
    client.force_login(users["owner"])

    data = client.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    assert data["final_model"] == {"npz": None, "pt": None, "npz_manifest": None, "pt_manifest": None, "round": 0}
    resp = client.get(f"/monitoring/runs/{run.pk}/checkpoints/0.npz")
    assert resp.status_code == 404 and b"no stored .npz file for the final model" in resp.content


def test_restarts_are_shown(client: Client, users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    run = _run(make_problem, users["owner"], "running", rounds=1)
    Run.objects.filter(pk=run.pk).update(
        restarts=[
            {"at": "2026-12-06T15:00:00+00:00", "service": "selector 1", "reason": "the container was killed"},
            {"at": "2026-12-06T15:01:00+00:00", "service": "coordinator", "reason": "the container was killed"},
        ]
    )
    client.force_login(users["owner"])

    data = client.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    assert data["run"]["restart_count"] == 2
    assert data["run"]["restarts"][-1]["service"] == "coordinator"
    page = client.get(f"/monitoring/problems/{run.problem_id}/").content.decode()
    assert "2 restarts of dead services; the latest: coordinator (the container was killed)" in page


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_live_dashboard_shows_restarts_and_a_failed_runs_last_model(
    live_server: Any, browser: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    """What dashboard.js draws on each poll, in headless Chromium (not only the first render)."""
    from urllib.parse import urlsplit

    from django.conf import settings

    from webserver.monitoring.models import RoundRecord

    run = _run(make_problem, users["owner"], "failed", rounds=3)
    for rnd in (1, 2, 3):
        RoundRecord.objects.create(run=run, number=rnd, phase="done", clients=2, eval_acc=0.5 + rnd / 10)
    Run.objects.filter(pk=run.pk).update(
        status_detail=WHY,
        restarts=[{"at": "2026-12-06T15:00:00+00:00", "service": "selector 0", "reason": "the container was killed"}],
    )
    client = Client()
    client.force_login(users["owner"])
    context = browser.new_context()
    try:
        context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
              "domain": urlsplit(live_server.url).hostname, "path": "/"}]
        )  # fmt: skip
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(f"{live_server.url}/monitoring/problems/{run.problem_id}/")
        tab.wait_for_selector("#rounds-body tr[data-round='3']")  # drawn by dashboard.js from the API

        status = tab.locator("#run-status").inner_text()
        assert WHY in status
        assert "1 restart of dead services; the latest: selector 0 (the container was killed)" in status
        assert "last completed model (round 3; the run failed before its final model)" in status
        href = tab.locator("#run-status a", has_text="NumPy .npz").get_attribute("href")
        assert href == f"/monitoring/runs/{run.pk}/checkpoints/3.npz"
        assert errors == []
    finally:
        context.close()
