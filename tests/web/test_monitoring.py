"""The training dashboard, its API, downloads and CSV: what the setter sees, and who may."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.test import Client

from webserver.monitoring.models import Checkpoint, LogLine, RoundRecord
from webserver.participation.models import Contribution, Participant
from webserver.problems.models import Run, Service


def _record(run: Run, number: int, acc: float, loss: float, **metrics: float) -> RoundRecord:
    return RoundRecord.objects.create(
        run=run,
        number=number,
        phase="done",
        clients=2,
        train_loss=loss + 0.1,
        eval_loss=loss,
        eval_acc=acc,
        seconds=3.25,
        metrics={"train": {"train_loss": loss + 0.1}, "evaluate": {"eval_acc": acc, "eval_loss": loss, **metrics}},
    )


@pytest.fixture
def setup(users: dict[str, Any], make_problem: Callable[..., Any]) -> dict[str, Any]:
    """A problem with a finished run 1 and a running run 2 that has two rounds, logs and a checkpoint."""
    problem = make_problem(users["owner"])
    run1 = Run.objects.create(problem=problem, number=1, fab_sha256="x", status="finished", total_rounds=2)
    _record(run1, 1, 0.60, 0.9)
    _record(run1, 2, 0.70, 0.8)
    run2 = Run.objects.create(
        problem=problem, number=2, fab_sha256="x", status="running", current_round=2, total_rounds=3, phase="training"
    )
    Service.objects.create(run=run2, role="coordinator", index=0, health="healthy", address="127.0.0.1:9091")
    Service.objects.create(
        run=run2, role="selector", index=0, health="healthy", address="127.0.0.1:17000", clients_connected=2
    )
    _record(run2, 1, 0.75, 0.5, f1=0.7)
    _record(run2, 2, 0.85, 0.4, f1=0.8)
    hospital = Participant.objects.create(
        problem=problem,
        user=users["participant"],
        site_name="General Hospital",
        contact_email="p@x.org",
        status="approved",
    )
    for rnd in (1, 2):
        Contribution.objects.create(
            run=run2, participant=hospital, site_name="General Hospital", round=rnd, kind="train"
        )
    Contribution.objects.create(run=run2, participant=hospital, site_name="General Hospital", round=2, kind="evaluate")
    Contribution.objects.create(run=run2, site_name="site 77", round=1, kind="train")
    for i in range(60):
        LogLine.objects.create(
            run=run2,
            event_id=f"e{i}",
            ts=datetime(2026, 1, 1, 12, 0, i % 60, i, tzinfo=UTC),
            level="WARNING" if i == 59 else "INFO",
            message=f"line {i}",
        )
    checkpoint = Checkpoint.objects.create(run=run2, round=2)
    checkpoint.npz.save("r2.npz", ContentFile(b"npz bytes of round 2"))
    return {"problem": problem, "run1": run1, "run2": run2, "hospital": hospital}


def _login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


# ---- the dashboard's data ----------------------------------------------------------------------


def test_dashboard_json_has_everything_the_page_shows(
    client: Client, users: dict[str, Any], setup: dict[str, Any]
) -> None:
    problem, run2 = setup["problem"], setup["run2"]
    data = _login(client, users["owner"]).get(f"/api/v1/problems/{problem.pk}/dashboard/").json()

    assert data["run"]["number"] == 2 and data["run"]["status"] == "running"
    assert (data["run"]["current_round"], data["run"]["total_rounds"]) == (2, 3)
    assert [r["number"] for r in data["runs"]] == [2, 1]
    assert {(s["role"], s["health"], s["clients_connected"]) for s in data["services"]} == {
        ("coordinator", "healthy", 0),
        ("selector", "healthy", 2),
    }
    assert data["clients_connected"] == 2
    assert [(r["round"], r["eval_acc"], r["clients"]) for r in data["rounds"]] == [(1, 0.75, 2), (2, 0.85, 2)]
    assert data["rounds"][1]["downloads"] == {
        "npz": f"/monitoring/runs/{run2.pk}/checkpoints/2.npz",
        "pt": None,
        "npz_manifest": f"/monitoring/runs/{run2.pk}/checkpoints/2.npz.manifest.json",
        "pt_manifest": None,
    }
    assert data["rounds"][0]["downloads"] == {"npz": None, "pt": None, "npz_manifest": None, "pt_manifest": None}
    sites = {p["site"]: p for p in data["participants"]}
    assert sites["General Hospital"]["last_round"] == 2
    assert sites["General Hospital"]["last_kind"] == "train + evaluate"
    assert sites["General Hospital"]["rounds"] == 2
    assert sites["site 77"]["last_round"] == 1
    assert len(data["logs"]) == 50
    assert data["logs"][-1]["message"] == "line 59" and data["logs"][-1]["level"] == "WARNING"
    assert data["logs"][0]["message"] == "line 10"


def test_an_earlier_run_can_be_viewed(client: Client, users: dict[str, Any], setup: dict[str, Any]) -> None:
    problem = setup["problem"]
    data = _login(client, users["owner"]).get(f"/api/v1/problems/{problem.pk}/dashboard/?run=1").json()
    assert data["run"]["number"] == 1 and [r["eval_acc"] for r in data["rounds"]] == [0.60, 0.70]
    assert client.get(f"/api/v1/problems/{problem.pk}/dashboard/?run=9").status_code == 404
    page = client.get(f"/monitoring/problems/{problem.pk}/?run=1")
    assert page.status_code == 200 and b"Run 1" in page.content


def test_a_problem_without_runs_shows_an_empty_dashboard(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"], title="Fresh")
    _login(client, users["owner"])
    data = client.get(f"/api/v1/problems/{problem.pk}/dashboard/").json()
    assert data["run"] is None and data["rounds"] == []
    assert b"No run yet" in client.get(f"/monitoring/problems/{problem.pk}/").content


def test_the_dashboard_page_is_live_with_plotly_charts(
    client: Client, users: dict[str, Any], setup: dict[str, Any]
) -> None:
    problem = setup["problem"]
    page = _login(client, users["owner"]).get(f"/monitoring/problems/{problem.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "plotly/plotly.min.js" in html and "monitoring/charts.js" in html and "monitoring/dashboard.js" in html
    assert f'data-api="/api/v1/problems/{problem.pk}/dashboard/"' in html
    # The small parts are rendered before the first poll; the rounds come from the API.
    assert "General Hospital" in html and "line 59" in html
    assert "0.8500" not in html and "Loading the rounds" in html
    assert "<noscript>" in html and f"/monitoring/runs/{setup['run2'].pk}/metrics.csv" in html
    assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', html)  # no CDN


def test_a_poll_with_since_gets_only_the_later_rounds(
    client: Client, users: dict[str, Any], setup: dict[str, Any]
) -> None:
    problem, run2 = setup["problem"], setup["run2"]
    _record(run2, 3, 0.90, 0.3)
    url = f"/api/v1/problems/{problem.pk}/dashboard/"
    data = _login(client, users["owner"]).get(f"{url}?since=1").json()

    assert data["since"] == 1
    assert [r["round"] for r in data["rounds"]] == [2, 3]
    assert data["rounds"][0]["downloads"]["npz"] == f"/monitoring/runs/{run2.pk}/checkpoints/2.npz"
    # The small parts are always whole.
    assert data["run"]["number"] == 2 and len(data["logs"]) == 50 and len(data["participants"]) == 2
    assert client.get(f"{url}?since=3").json()["rounds"] == []
    assert [r["round"] for r in client.get(f"{url}?since=0").json()["rounds"]] == [1, 2, 3]
    assert client.get(url).json()["since"] is None


@pytest.mark.parametrize("since", ["two", "-1", "1.5"])
def test_a_bad_since_is_refused(client: Client, users: dict[str, Any], setup: dict[str, Any], since: str) -> None:
    resp = _login(client, users["owner"]).get(f"/api/v1/problems/{setup['problem'].pk}/dashboard/?since={since}")
    assert resp.status_code == 400 and "since" in resp.json()["detail"]


def test_since_is_in_the_api_schema(client: Client, users: dict[str, Any]) -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    (operation,) = [
        op for path in schema["paths"].values() for op in path.values() if op.get("operationId") == "problem_dashboard"
    ]
    assert {p["name"] for p in operation["parameters"]} >= {"run", "since"}


def test_last_contribution_of_a_site_whose_participant_left(
    client: Client, users: dict[str, Any], setup: dict[str, Any]
) -> None:
    problem, run2, hospital = setup["problem"], setup["run2"], setup["hospital"]
    hospital.status = "revoked"
    hospital.save()
    data = _login(client, users["owner"]).get(f"/api/v1/problems/{problem.pk}/dashboard/").json()
    sites = {p["site"]: p for p in data["participants"]}
    assert sites["General Hospital"]["participant_id"] == hospital.pk
    assert sites["General Hospital"]["status"] == "revoked"
    assert (sites["General Hospital"]["last_round"], sites["General Hospital"]["last_kind"]) == (2, "train + evaluate")
    assert (sites["site 77"]["status"], sites["site 77"]["participant_id"], sites["site 77"]["rounds"]) == ("", None, 1)
    assert [p["site"] for p in data["participants"]] == ["General Hospital", "site 77"]
    assert run2.contributions.count() == 4


def test_rounds_and_logs_api(client: Client, users: dict[str, Any], setup: dict[str, Any]) -> None:
    run2 = setup["run2"]
    _login(client, users["owner"])
    rounds = client.get(f"/api/v1/runs/{run2.pk}/rounds/").json()
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["metrics"]["evaluate"]["f1"] == 0.8
    logs = client.get(f"/api/v1/runs/{run2.pk}/logs/?limit=5").json()
    assert [line["message"] for line in logs] == [f"line {i}" for i in range(55, 60)]


def test_runs_can_be_compared(client: Client, users: dict[str, Any], setup: dict[str, Any]) -> None:
    problem = setup["problem"]
    _login(client, users["owner"])
    data = client.get(f"/api/v1/problems/{problem.pk}/runs/metrics/?runs=1,2").json()
    assert [r["number"] for r in data] == [1, 2]
    assert [p["eval_acc"] for p in data[0]["rounds"]] == [0.60, 0.70]
    assert [p["eval_loss"] for p in data[1]["rounds"]] == [0.5, 0.4]
    bad = client.get(f"/api/v1/problems/{problem.pk}/runs/metrics/?runs=one")
    assert bad.status_code == 400 and "runs" in bad.json()["detail"]


def test_runs_of_another_problem_are_not_compared(
    client: Client, users: dict[str, Any], setup: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    mine = make_problem(users["owner"], title="Second problem")
    Run.objects.create(problem=mine, number=1, fab_sha256="x", status="finished")
    _login(client, users["owner"])
    data = client.get(f"/api/v1/problems/{mine.pk}/runs/metrics/?runs=1,2").json()
    assert [(r["number"], r["rounds"]) for r in data] == [(1, [])]


# ---- replies the coordinator rejected ---------------------------------------------------------

TOKEN = "run-two-service-token"


def _report_round(client: Client, run: Run, number: int, **extra: Any) -> Any:
    """Post a round_finished event to the internal API the way the coordinator does."""
    run.service_token_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
    run.save(update_fields=["service_token_hash"])
    event = {
        "event_id": uuid.uuid4().hex,
        "ts": time.time(),
        "kind": "round_finished",
        "round": number,
        "seconds": 2.0,
        "failures": 0,
        "participants": [{"node_id": 7, "participant": "", "site": "site 7"}],
        "train_metrics": {"train_loss": 0.3},
        "eval_metrics": {"eval_acc": 0.9},
        "eval_acc": 0.9,
        **extra,
    }
    return client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps(event),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )


def test_rejected_replies_are_shown_to_the_setter(client: Client, users: dict[str, Any], setup: dict[str, Any]) -> None:
    problem, run2 = setup["problem"], setup["run2"]
    assert _report_round(client, run2, 3, rejected=2).status_code == 200
    assert RoundRecord.objects.get(run=run2, number=3).rejected == 2

    _login(client, users["owner"])
    data = client.get(f"/api/v1/problems/{problem.pk}/dashboard/").json()
    assert [(r["round"], r["rejected"]) for r in data["rounds"]] == [(1, 0), (2, 0), (3, 2)]
    assert data["rejected"] == {"replies": 2, "rounds": 1}
    assert client.get(f"/api/v1/runs/{run2.pk}/rounds/").json()[2]["rejected"] == 2

    html = client.get(f"/monitoring/problems/{problem.pk}/").content.decode()
    badge = re.search(r'<span class="badge rejected" id="rejected-replies"\s+title="([^"]*)">([^<]*)</span>', html)
    assert badge is not None and badge.group(2) == "2 replies rejected"
    assert "malformed or hostile (NaN/Inf, wrong shapes, …), in 1 round;" in badge.group(1)
    assert "See the coordinator log" in badge.group(1)
    assert ">Rejected</th>" in html  # the rounds table's column, filled by dashboard.js

    rows = list(csv.reader(io.StringIO(client.get(f"/monitoring/runs/{run2.pk}/metrics.csv").content.decode())))
    assert [row[rows[0].index("rejected")] for row in rows[1:]] == ["0", "0", "2"]


def test_a_coordinator_that_does_not_count_rejections_still_reports(
    client: Client, users: dict[str, Any], setup: dict[str, Any]
) -> None:
    problem, run2 = setup["problem"], setup["run2"]
    assert _report_round(client, run2, 3).status_code == 200  # no `rejected`: an older coordinator
    assert RoundRecord.objects.get(run=run2, number=3).rejected == 0

    _login(client, users["owner"])
    data = client.get(f"/api/v1/problems/{problem.pk}/dashboard/").json()
    assert data["rounds"][-1]["rejected"] == 0 and data["rejected"] == {"replies": 0, "rounds": 0}
    html = client.get(f"/monitoring/problems/{problem.pk}/").content.decode()
    assert "rejected-replies" not in html and "replies rejected" not in html


@pytest.mark.parametrize(
    ("rejected", "why"),
    [
        (-1, "≥ 0"),
        (1.5, "≥ 0"),
        ("2", "≥ 0"),
        (True, "≥ 0"),
        ([2], "≥ 0"),
        (2**31, "≤ 2147483647"),
    ],
)
def test_a_bad_rejected_count_is_refused_and_nothing_stored(
    client: Client, setup: dict[str, Any], rejected: Any, why: str
) -> None:
    run2 = setup["run2"]
    resp = _report_round(client, run2, 3, rejected=rejected)
    assert resp.status_code == 400
    body = resp.json()
    assert body["field"] == "events[0].rejected"
    assert body["detail"] == f"events[0].rejected: must be a whole number {why}"
    assert not RoundRecord.objects.filter(run=run2, number=3).exists()
    assert not Contribution.objects.filter(run=run2, round=3).exists()
    run2.refresh_from_db()
    assert run2.current_round == 2


# ---- downloads and CSV ------------------------------------------------------------------------


def test_metrics_csv_has_every_round_and_metric(client: Client, users: dict[str, Any], setup: dict[str, Any]) -> None:
    run2 = setup["run2"]
    resp = _login(client, users["owner"]).get(f"/monitoring/runs/{run2.pk}/metrics.csv")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/csv")
    assert "run2-metrics.csv" in resp["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(resp.content.decode())))
    assert rows[0][:7] == ["round", "clients", "train_loss", "eval_loss", "eval_acc", "seconds", "rejected"]
    assert "evaluate.f1" in rows[0] and "train.train_loss" in rows[0]
    assert len(rows) == 3
    second = dict(zip(rows[0], rows[2], strict=True))
    assert second["round"] == "2" and second["eval_acc"] == "0.85" and second["evaluate.f1"] == "0.8"


def test_a_round_without_a_stored_model_says_so(client: Client, users: dict[str, Any], setup: dict[str, Any]) -> None:
    run2 = setup["run2"]
    _login(client, users["owner"])
    resp = client.get(f"/monitoring/runs/{run2.pk}/checkpoints/1.npz")
    assert resp.status_code == 404 and b"no stored .npz file for round 1" in resp.content
    resp = client.get(f"/monitoring/runs/{run2.pk}/checkpoints/2.pt")
    assert resp.status_code == 404 and b".pt" in resp.content
    ok = client.get(f"/monitoring/runs/{run2.pk}/checkpoints/2.npz")
    assert ok.status_code == 200 and b"".join(ok.streaming_content) == b"npz bytes of round 2"


# ---- who may see it ---------------------------------------------------------------------------


def _urls(setup: dict[str, Any]) -> list[str]:
    p, r = setup["problem"].pk, setup["run2"].pk
    return [
        f"/monitoring/problems/{p}/",
        f"/monitoring/runs/{r}/checkpoints/2.npz",
        f"/monitoring/runs/{r}/metrics.csv",
        f"/api/v1/problems/{p}/dashboard/",
        f"/api/v1/problems/{p}/runs/metrics/?runs=1",
        f"/api/v1/runs/{r}/rounds/",
        f"/api/v1/runs/{r}/logs/",
    ]


@pytest.mark.parametrize("who", ["holder", "participant", "other_setter"])
def test_others_cannot_see_the_training(client: Client, users: dict[str, Any], setup: dict[str, Any], who: str) -> None:
    _login(client, users[who])
    for url in _urls(setup):
        resp = client.get(url)
        assert resp.status_code == 403, url
        assert b"npz bytes" not in resp.content and b"General Hospital" not in resp.content


def test_anonymous_visitors_are_sent_to_log_in(client: Client, setup: dict[str, Any]) -> None:
    for url in _urls(setup):
        resp = client.get(url)
        if url.startswith("/api/"):
            assert resp.status_code in (401, 403), url
        else:
            assert resp.status_code == 302 and "/login" in resp["Location"], url


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_the_owner_and_site_admins_can(client: Client, users: dict[str, Any], setup: dict[str, Any], who: str) -> None:
    _login(client, users[who])
    for url in _urls(setup):
        assert client.get(url).status_code == 200, url


def test_models_and_metrics_download_with_an_api_token(
    client: Client, users: dict[str, Any], setup: dict[str, Any]
) -> None:
    """Scripts fetch the model the way the API works: Authorization: Token <key>, no session."""
    from rest_framework.authtoken.models import Token

    run2 = setup["run2"]
    model, csv_url = f"/monitoring/runs/{run2.pk}/checkpoints/2.npz", f"/monitoring/runs/{run2.pk}/metrics.csv"
    owner = Token.objects.create(user=users["owner"])
    other = Token.objects.create(user=users["other_setter"])
    ok = client.get(model, HTTP_AUTHORIZATION=f"Token {owner.key}")
    assert ok.status_code == 200 and b"".join(ok.streaming_content) == b"npz bytes of round 2"
    assert client.get(csv_url, HTTP_AUTHORIZATION=f"Token {owner.key}").status_code == 200
    # Another setter's token: the same refusal as their session gets.
    denied = client.get(model, HTTP_AUTHORIZATION=f"Token {other.key}")
    assert denied.status_code == 403 and b"npz bytes" not in denied.content
    # A wrong or malformed token: 401 saying so, never a log-in page or the file.
    for header in ("Token not-a-key", "Token", "Token a b"):
        bad = client.get(model, HTTP_AUTHORIZATION=header)
        assert bad.status_code == 401 and bad["WWW-Authenticate"] == "Token", header
        assert b"npz bytes" not in bad.content and b"oken" in bad.content, header
    # No header: the log-in page, as before.
    assert client.get(model).status_code == 302


def test_a_draft_is_not_revealed(client: Client, users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    draft = make_problem(users["owner"], state="draft", title="Secret")
    run = Run.objects.create(problem=draft, number=1, fab_sha256="x")
    _login(client, users["other_setter"])
    assert client.get(f"/monitoring/problems/{draft.pk}/").status_code == 404
    assert client.get(f"/api/v1/problems/{draft.pk}/dashboard/").status_code == 404
    assert client.get(f"/monitoring/runs/{run.pk}/metrics.csv").status_code == 404
    _login(client, users["owner"])
    assert client.get(f"/monitoring/problems/{draft.pk}/").status_code == 200


# ---- the panel on the problem page -------------------------------------------------------------


def test_problem_page_panel(client: Client, users: dict[str, Any], setup: dict[str, Any]) -> None:
    problem = setup["problem"]
    html = _login(client, users["owner"]).get(f"/problems/{problem.pk}/").content.decode()
    assert f"/monitoring/problems/{problem.pk}/" in html
    assert "round 2 of 3" in html and "0.850" in html

    html = _login(client, users["holder"]).get(f"/problems/{problem.pk}/").content.decode()
    assert f"/monitoring/problems/{problem.pk}/" not in html
    assert "2 rounds done of 3" in html
