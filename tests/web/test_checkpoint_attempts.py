"""Models are kept per attempt of a run's coordinator: an attempt that restarted at round 1,
or that made a final model of its own, never overwrites an earlier attempt's download."""

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
from django.test import Client

from webserver.monitoring.models import Checkpoint
from webserver.problems.models import Run

pytestmark = pytest.mark.web

TOKEN = "attempts-service-token"


@pytest.fixture
def run(users: dict[str, Any], make_problem: Callable[..., Any]) -> Run:
    problem = make_problem(users["owner"])
    return Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )


@pytest.fixture
def owner(client: Client, users: dict[str, Any]) -> Client:
    """A second client, logged in as the problem's setter (uploads go without a session)."""
    browser = Client()
    browser.force_login(users["owner"])
    return browser


def _put(client: Client, run: Run, round: int, kind: str, data: bytes, attempt: int | str | None = None) -> Any:
    query = "" if attempt is None else f"?attempt={attempt}"
    return client.put(
        f"/internal/v1/runs/{run.pk}/checkpoints/{round}/{kind}{query}",
        data=data,
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )


def _rounds(client: Client, run: Run, rounds: list[tuple[int, int]]) -> None:
    """Report finished rounds as (attempt, number)."""
    events = [
        {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": "round_finished", "round": n, "attempt": a}
        for a, n in rounds
    ]
    resp = client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps(events),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert resp.status_code == 200, resp.content


def _get(client: Client, url: str) -> tuple[int, bytes, Any]:
    resp: Any = client.get(url)
    body = b"".join(resp.streaming_content) if resp.status_code == 200 else resp.content
    return resp.status_code, body, resp


def test_an_attempt_that_restarted_at_round_1_keeps_the_earlier_attempts_models(
    client: Client, owner: Client, run: Run
) -> None:
    _rounds(client, run, [(1, 1), (1, 2), (2, 1)])
    assert _put(client, run, 1, "npz", b"attempt 1, round 1", attempt=1).status_code == 201
    assert _put(client, run, 2, "npz", b"attempt 1, round 2", attempt=1).status_code == 201
    # The coordinator was restarted and its app could not resume: round 1 again, as attempt 2.
    assert _put(client, run, 1, "npz", b"attempt 2, round 1", attempt=2).status_code == 201

    assert Checkpoint.objects.filter(run=run).count() == 3
    base = f"/monitoring/runs/{run.pk}/checkpoints"
    assert _get(owner, f"{base}/1.npz?attempt=1")[1] == b"attempt 1, round 1"
    assert _get(owner, f"{base}/1.npz?attempt=2")[1] == b"attempt 2, round 1"
    # Without an attempt: the latest attempt that has the round, named for it.
    status, body, resp = _get(owner, f"{base}/1.npz")
    assert (status, body) == (200, b"attempt 2, round 1")
    assert resp["X-Fedota-Model-Attempt"] == "2" and "run1-attempt2-round0001.npz" in resp["Content-Disposition"]
    status, body, resp = _get(owner, f"{base}/2.npz")
    assert (status, body, resp["X-Fedota-Model-Attempt"]) == (200, b"attempt 1, round 2", "1")
    assert "run1-round0002.npz" in resp["Content-Disposition"]
    # An attempt that has no such round says so, rather than serving another attempt's.
    status, body, _ = _get(owner, f"{base}/2.npz?attempt=2")
    assert status == 404 and b"no stored .npz file for round 2 of attempt 2" in body

    # The API links each attempt's round to its own file.
    rounds = owner.get(f"/api/v1/runs/{run.pk}/rounds/").json()
    links = {(r["attempt"], r["round"]): r["downloads"]["npz"] for r in rounds}
    assert links == {
        (1, 1): f"{base}/1.npz?attempt=1",
        (1, 2): f"{base}/2.npz",
        (2, 1): f"{base}/1.npz?attempt=2",
    }
    for url in links.values():
        assert _get(owner, url)[0] == 200
    # The metrics export tells the two round 1s apart.
    rows = list(csv.reader(io.StringIO(owner.get(f"/monitoring/runs/{run.pk}/metrics.csv").content.decode())))
    assert [(row["attempt"], row["round"]) for row in (dict(zip(rows[0], r, strict=True)) for r in rows[1:])] == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
    ]
    # The dashboard's poll for the rounds after 1 links the same.
    polled = owner.get(f"/api/v1/problems/{run.problem_id}/dashboard/?since=1").json()["rounds"]
    assert [(r["attempt"], r["round"], r["downloads"]["npz"]) for r in polled] == [(1, 2, f"{base}/2.npz")]


def test_a_resumed_runs_links_stay_as_they_were(client: Client, owner: Client, run: Run) -> None:
    _rounds(client, run, [(1, 1), (1, 2), (2, 3)])
    for attempt, round in ((1, 1), (1, 2), (2, 3)):
        assert _put(client, run, round, "npz", f"round {round}".encode(), attempt=attempt).status_code == 201
    rounds = owner.get(f"/api/v1/runs/{run.pk}/rounds/").json()
    base = f"/monitoring/runs/{run.pk}/checkpoints"
    assert [r["downloads"]["npz"] for r in rounds] == [f"{base}/1.npz", f"{base}/2.npz", f"{base}/3.npz"]
    assert _get(owner, f"{base}/3.npz")[1] == b"round 3"


def test_each_attempt_keeps_its_final_model_and_the_run_offers_the_latest(
    client: Client, owner: Client, run: Run
) -> None:
    assert _put(client, run, 0, "npz", b"final of attempt 1", attempt=1).status_code == 201
    assert _put(client, run, 0, "pt", b"final pt of attempt 1", attempt=1).status_code == 201
    assert _put(client, run, 0, "npz", b"final of attempt 2", attempt=2).status_code == 201
    Run.objects.filter(pk=run.pk).update(status="finished")

    base = f"/monitoring/runs/{run.pk}/checkpoints"
    final = owner.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()["final_model"]
    assert final == {
        "npz": f"{base}/0.npz?attempt=2",
        "pt": None,
        "npz_manifest": f"{base}/0.npz.manifest.json?attempt=2",
        "pt_manifest": None,
        "round": 0,
    }
    status, body, resp = _get(owner, f"{base}/0.npz")
    assert (status, body) == (200, b"final of attempt 2") and "run1-attempt2-final.npz" in resp["Content-Disposition"]
    assert _get(owner, f"{base}/0.npz?attempt=1")[1] == b"final of attempt 1"
    assert _get(owner, f"{base}/0.pt?attempt=1")[1] == b"final pt of attempt 1"
    # Attempt 2 made no .pt: the bare address says so rather than giving attempt 1's model.
    assert _get(owner, f"{base}/0.pt")[0] == 404


def test_an_upload_without_an_attempt_is_attempt_1s_and_a_retry_replaces_only_its_own_file(
    client: Client, owner: Client, run: Run
) -> None:
    # A coordinator older than attempts sends no attempt.
    assert _put(client, run, 3, "npz", b"old coordinator").status_code == 201
    assert Checkpoint.objects.get(run=run, round=3).attempt == 1
    assert _put(client, run, 3, "npz", b"attempt 2, first try", attempt=2).status_code == 201
    first = Checkpoint.objects.get(run=run, attempt=2, round=3).npz.path
    # A retry of the same attempt, round and kind: one row, the same file, the new bytes.
    assert _put(client, run, 3, "npz", b"attempt 2, retried", attempt=2).status_code == 201
    assert _put(client, run, 3, "npz", b"old coordinator, retried", attempt=1).status_code == 201
    assert Checkpoint.objects.filter(run=run).count() == 2
    assert Checkpoint.objects.get(run=run, attempt=2, round=3).npz.path == first
    base = f"/monitoring/runs/{run.pk}/checkpoints"
    assert _get(owner, f"{base}/3.npz?attempt=1")[1] == b"old coordinator, retried"
    assert _get(owner, f"{base}/3.npz?attempt=2")[1] == b"attempt 2, retried"


def test_a_failed_run_offers_its_latest_attempts_last_completed_model(client: Client, owner: Client, run: Run) -> None:
    for round in (1, 2, 3):
        assert _put(client, run, round, "npz", f"attempt 1, round {round}".encode(), attempt=1).status_code == 201
    for round in (1, 2):
        assert _put(client, run, round, "npz", f"attempt 2, round {round}".encode(), attempt=2).status_code == 201
    Run.objects.filter(pk=run.pk).update(status="failed")

    base = f"/monitoring/runs/{run.pk}/checkpoints"
    final = owner.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()["final_model"]
    assert final == {
        "npz": f"{base}/2.npz?attempt=2",
        "pt": None,
        "npz_manifest": f"{base}/2.npz.manifest.json?attempt=2",
        "pt_manifest": None,
        "round": 2,
    }
    status, body, resp = _get(owner, f"{base}/0.npz")
    assert (status, body, resp["X-Fedota-Model-Round"]) == (200, b"attempt 2, round 2", "2")
    # Of an attempt asked for by name: that attempt's last.
    status, body, resp = _get(owner, f"{base}/0.npz?attempt=1")
    assert (status, body, resp["X-Fedota-Model-Round"]) == (200, b"attempt 1, round 3", "3")


@pytest.mark.parametrize("attempt", ["0", "x", "-1", "2.5", "99999999999"])
def test_a_bad_attempt_is_refused(client: Client, owner: Client, run: Run, attempt: str) -> None:
    resp = _put(client, run, 1, "npz", b"x", attempt=attempt)
    assert resp.status_code == 400 and resp.json()["field"] == "attempt"
    assert not Checkpoint.objects.filter(run=run).exists()
    assert owner.get(f"/monitoring/runs/{run.pk}/checkpoints/1.npz?attempt={attempt}").status_code == 400


@pytest.mark.django_db(transaction=True)
def test_the_coordinator_reporter_uploads_as_its_attempt(live_server: Any, run: Run, tmp_path: Any) -> None:
    from coordinator.report import Reporter, Target

    Checkpoint.objects.create(run=run, attempt=1, round=1, npz="checkpoints/attempt-1-round-1.npz")
    model = tmp_path / "round_0001.npz"
    model.write_bytes(b"attempt 2's weights" * 100)
    reporter = Reporter(Target(f"{live_server.url}/internal/v1/runs/{run.pk}/", TOKEN), spool_dir=tmp_path / "spool")
    reporter.start()
    reporter.run_started(total_rounds=2, app="fedota-tabular", fab_sha256=run.fab_sha256, attempt=2)
    reporter.checkpoint(1, model, "npz")
    reporter.checkpoint(0, model, "npz")
    assert reporter.close(timeout=20.0) and reporter.refused == 0

    stored = {(c.attempt, c.round): c for c in Checkpoint.objects.filter(run=run)}
    assert set(stored) == {(1, 1), (2, 1), (2, 0)}
    assert stored[(1, 1)].npz.name == "checkpoints/attempt-1-round-1.npz"  # untouched
    assert stored[(2, 1)].npz.read() == model.read_bytes() and stored[(2, 0)].npz.read() == model.read_bytes()


def test_the_problem_page_shows_the_latest_attempts_accuracy(
    client: Client, owner: Client, run: Run, users: dict[str, Any]
) -> None:
    from webserver.monitoring.models import RoundRecord
    from webserver.monitoring.queries import problem_panel

    RoundRecord.objects.create(run=run, attempt=1, number=5, eval_acc=0.9)
    RoundRecord.objects.create(run=run, attempt=2, number=2, eval_acc=0.7)  # restarted at round 1
    last = problem_panel(problem=run.problem, user=users["owner"])["last_round"]
    assert (last.attempt, last.number, last.eval_acc) == (2, 2, 0.7)
