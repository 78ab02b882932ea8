"""The internal API coordinators report to: token auth, events, checkpoints."""

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

from webserver.monitoring.models import Checkpoint, LogLine, RoundRecord
from webserver.participation.models import Contribution, Participant
from webserver.problems.models import Run, Service

TOKEN = "run-one-service-token"
OTHER_TOKEN = "run-two-service-token"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def problem(users: dict[str, Any], make_problem: Callable[..., Any]) -> Any:
    return make_problem(users["owner"])


@pytest.fixture
def run(problem: Any) -> Run:
    run = Run.objects.create(
        problem=problem, number=1, fab_sha256=problem.fab_sha256, status="running", service_token_hash=_hash(TOKEN)
    )
    Service.objects.create(run=run, role="coordinator", index=0, health="healthy")
    Service.objects.create(run=run, role="selector", index=0, health="healthy", address="127.0.0.1:17000")
    Service.objects.create(run=run, role="selector", index=1, health="healthy", address="127.0.0.1:17001")
    return run


@pytest.fixture
def other_run(users: dict[str, Any], make_problem: Callable[..., Any]) -> Run:
    problem = make_problem(users["other_setter"], title="Other")
    return Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=_hash(OTHER_TOKEN),
    )


@pytest.fixture
def hospital(problem: Any, users: dict[str, Any]) -> Participant:
    return Participant.objects.create(
        problem=problem,
        user=users["participant"],
        site_name="General Hospital",
        contact_email="p@example.org",
        status="approved",
    )


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}


def _post(client: Client, run_id: int, body: Any, token: str | None = TOKEN) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return client.post(
        f"/internal/v1/runs/{run_id}/events", data=json.dumps(body), content_type="application/json", **headers
    )


def _put(client: Client, run_id: int, round: int, kind: str, data: bytes, token: str = TOKEN) -> Any:
    return client.put(
        f"/internal/v1/runs/{run_id}/checkpoints/{round}/{kind}",
        data=data,
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def _round(number: int, participants: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return _event(
        "round_finished",
        round=number,
        started=1_700_000_000.0,
        finished=1_700_000_004.5,
        seconds=4.5,
        failures=0,
        participants=participants,
        eval_participants=participants,
        train_metrics={"train_loss": 0.61},
        eval_metrics={"eval_loss": 0.42, "eval_acc": 0.88},
        train_loss=0.61,
        eval_loss=0.42,
        eval_acc=0.88,
        **extra,
    )


def _nothing_stored(run: Run) -> bool:
    run.refresh_from_db()
    return (
        not LogLine.objects.filter(run=run).exists()
        and not RoundRecord.objects.filter(run=run).exists()
        and not Checkpoint.objects.filter(run=run).exists()
        and run.total_rounds == 0
        and run.status == "running"
    )


# ---- authentication ---------------------------------------------------------------------------


def test_events_without_a_token_are_refused(client: Client, run: Run) -> None:
    resp = _post(client, run.pk, _event("run_started", total_rounds=3), token=None)
    assert resp.status_code == 401
    assert "Bearer" in resp.json()["detail"]
    assert _nothing_stored(run)


def test_a_wrong_token_is_refused(client: Client, run: Run) -> None:
    resp = _post(client, run.pk, _event("log", level="ERROR", message="x"), token="guess")
    assert resp.status_code == 403
    assert _nothing_stored(run)


def test_another_runs_token_cannot_report_into_this_run(client: Client, run: Run, other_run: Run) -> None:
    assert _post(client, run.pk, _event("run_started", total_rounds=9), token=OTHER_TOKEN).status_code == 403
    assert _put(client, run.pk, 1, "npz", b"model", token=OTHER_TOKEN).status_code == 403
    assert _nothing_stored(run)
    # ...while it reports into its own run fine.
    assert _post(client, other_run.pk, _event("run_started", total_rounds=9), token=OTHER_TOKEN).status_code == 200


def test_an_unknown_run_is_refused_like_a_wrong_token(client: Client, run: Run) -> None:
    assert _post(client, run.pk + 1000, _event("run_started", total_rounds=3)).status_code == 403


def test_a_run_without_a_token_accepts_nothing(client: Client, run: Run) -> None:
    run.service_token_hash = ""
    run.save()
    assert _post(client, run.pk, _event("run_started", total_rounds=3), token="").status_code == 401
    assert _post(client, run.pk, _event("run_started", total_rounds=3), token="x").status_code == 403


# ---- events -----------------------------------------------------------------------------------


def test_rounds_of_a_later_attempt_never_overwrite_an_earlier_ones(client: Client, run: Run) -> None:
    from webserver.monitoring import queries

    # Attempt 2 could not resume (an app without Strategy.start): it counts from round 1 again.
    events = [_round(1, []), _round(2, [])]
    events += [{**_round(1, []), "attempt": 2, "train_loss": 0.9}]
    assert _post(client, run.pk, events).status_code == 200
    rows = list(RoundRecord.objects.filter(run=run).order_by("attempt", "number").values_list("attempt", "number"))
    assert rows == [(1, 1), (1, 2), (2, 1)]
    assert RoundRecord.objects.get(run=run, attempt=1, number=1).train_loss == 0.61
    assert queries.run_json(run)["attempts"] == [{"attempt": 1, "first_round": 1}, {"attempt": 2, "first_round": 1}]
    assert [r["attempt"] for r in map(lambda r: queries.round_json(r, {}), queries.round_rows(run=run))] == [1, 1, 2]
    # Retried delivery of the same round of the same attempt updates it in place.
    assert _post(client, run.pk, [{**_round(1, []), "attempt": 2, "train_loss": 0.8}]).status_code == 200
    assert RoundRecord.objects.get(run=run, attempt=2, number=1).train_loss == 0.8


def test_a_round_waiting_for_clients_shows_in_the_runs_phase(client: Client, run: Run) -> None:
    def pool(waiting_for: int, clients: int) -> int:
        event = _event("pool", selectors={"p1-r1-s0": clients}, clients=clients, waiting_for=waiting_for)
        status: int = _post(client, run.pk, [event]).status_code
        run.refresh_from_db()
        return status

    assert pool(3, 2) == 200 and run.phase == "waiting: 2 of 3 clients"
    assert pool(3, 1) == 200 and run.phase == "waiting: 1 of 3 clients"
    assert pool(0, 3) == 200 and run.phase == "training"
    # Snapshots without the field (older coordinators) leave the phase alone.
    assert _post(client, run.pk, [_event("pool", selectors={"p1-r1-s0": 3}, clients=3)]).status_code == 200
    run.refresh_from_db()
    assert run.phase == "training"


def test_a_whole_run_is_recorded(client: Client, run: Run, hospital: Participant) -> None:
    events = [
        _event("run_started", total_rounds=2, app="fedota-tabular", fab_sha256="ab" * 32),
        _event("pool", selectors={"p1-r1-s0": 2, "p1-r1-s1": 1}, clients=3),
        _round(
            1,
            [
                {"node_id": 11, "participant": str(hospital.pk), "site": "whatever the client called itself"},
                {"node_id": 12, "participant": "", "site": "site 12"},
            ],
        ),
        _event("log", level="INFO", source="rounds", message="round 1/2 | clients 2 | eval_acc 0.8800"),
        _event("log", level="WARNING", source="coordinator.hub", message="round deadline reached"),
    ]
    resp = _post(client, run.pk, events)
    assert resp.status_code == 200, resp.content
    assert resp.json() == {"applied": 5}

    run.refresh_from_db()
    assert run.total_rounds == 2 and run.current_round == 1 and run.phase == "training"
    record = RoundRecord.objects.get(run=run, number=1)
    assert (record.clients, record.train_loss, record.eval_loss, record.eval_acc) == (2, 0.61, 0.42, 0.88)
    assert record.seconds == 4.5 and record.metrics["evaluate"]["eval_acc"] == 0.88
    # The participant is credited under its registered site name; an unknown client under what was reported.
    credited = {(c.site_name, c.kind, c.participant_id) for c in Contribution.objects.filter(run=run)}
    assert credited == {
        ("General Hospital", "train", hospital.pk),
        ("General Hospital", "evaluate", hospital.pk),
        ("site 12", "train", None),
        ("site 12", "evaluate", None),
    }
    clients = {(s.role, s.index): s.clients_connected for s in run.services.all()}
    assert clients == {("coordinator", 0): 3, ("selector", 0): 2, ("selector", 1): 1}
    assert [line.level for line in LogLine.objects.filter(run=run)] == ["INFO", "WARNING"]

    assert _post(client, run.pk, _event("run_finished", ok=True, detail="run finished")).status_code == 200
    run.refresh_from_db()
    assert run.status == "finished" and run.finished_at is not None and run.status_detail == "run finished"


def test_a_failed_run_is_shown_as_failed_with_the_reason(client: Client, run: Run) -> None:
    resp = _post(client, run.pk, _event("run_finished", ok=False, detail="the ServerApp failed: boom"))
    assert resp.status_code == 200
    run.refresh_from_db()
    assert run.status == "failed" and "boom" in run.status_detail


def test_a_stopped_run_stays_stopped(client: Client, run: Run) -> None:
    run.status = "stopped"
    run.save()
    assert _post(client, run.pk, _event("run_finished", ok=True, detail="done")).status_code == 200
    run.refresh_from_db()
    assert run.status == "stopped"


def test_the_same_events_twice_are_stored_once(client: Client, run: Run, hospital: Participant) -> None:
    events = [
        _round(1, [{"node_id": 1, "participant": str(hospital.pk), "site": "x"}]),
        _event("log", level="ERROR", message="client failed"),
    ]
    assert _post(client, run.pk, events).status_code == 200
    assert _post(client, run.pk, events).status_code == 200  # a retry after a lost answer
    assert RoundRecord.objects.filter(run=run).count() == 1
    assert LogLine.objects.filter(run=run).count() == 1
    assert Contribution.objects.filter(run=run).count() == 2  # train + evaluate


def test_a_participant_of_another_problem_is_not_credited(
    client: Client, run: Run, other_run: Run, users: dict[str, Any]
) -> None:
    stranger = Participant.objects.create(
        problem=other_run.problem, user=users["holder"], site_name="Elsewhere", contact_email="h@example.org"
    )
    body = _round(1, [{"node_id": 1, "participant": str(stranger.pk), "site": "reported name"}])
    assert _post(client, run.pk, body).status_code == 200
    assert {(c.site_name, c.participant_id) for c in Contribution.objects.filter(run=run)} == {("reported name", None)}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"kind": "round_finished", "ts": 1.0, "round": 1}, "event_id"),
        (_event("round_finished"), "round"),
        (_event("round_finished", round="one"), "round"),
        (_event("round_finished", round=1, train_metrics={"loss": "high"}), "train_metrics.loss"),
        (_event("round_finished", round=1, participants=[{"node_id": "eleven"}]), "participants[0].node_id"),
        (_event("log", level="INFO"), "message"),
        (_event("run_finished", detail="x"), "ok"),
        (_event("pool", selectors={"p1-r1-s0": -1}), "selectors.p1-r1-s0"),
        (_event("teleport"), "kind"),
        ({**_event("log", message="x"), "ts": "yesterday"}, "ts"),
        # Values no column (or datetime) can hold: a clear 400, not a database error.
        (_event("round_finished", round=2**31), "round"),
        (_event("round_finished", round=1, failures=2**31), "failures"),
        (_event("round_finished", round=1, participants=[{"node_id": 2**63}]), "participants[0].node_id"),
        (_event("run_started", total_rounds=2**31), "total_rounds"),
        (_event("pool", selectors={"p1-r1-s0": 2**31}), "selectors.p1-r1-s0"),
        (_event("pool", clients=2**31), "clients"),
        (_event("pool", clients=2, waiting_for=-1), "waiting_for"),
        ({**_round(1, []), "attempt": 0}, "attempt"),
        ({**_event("log", message="x"), "ts": 1e300}, "ts"),
        ({**_event("log", message="x"), "ts": -5}, "ts"),
        ({**_event("log", message="x"), "ts": 10**400}, "ts"),
        (_event("round_finished", round=1, started=1e20), "started"),
        (_event("round_finished", round=1, seconds=10**400), "seconds"),
    ],
)
def test_a_malformed_event_is_refused_naming_the_field(
    client: Client, run: Run, event: dict[str, Any], field: str
) -> None:
    resp = _post(client, run.pk, event)
    assert resp.status_code == 400
    assert field in resp.json()["detail"]
    assert _nothing_stored(run)


def test_a_batch_with_one_bad_event_changes_nothing(client: Client, run: Run) -> None:
    good = [_event("run_started", total_rounds=5), _round(1, []), _event("log", message="hello")]
    resp = _post(client, run.pk, [*good, _event("round_finished", round=0)])
    assert resp.status_code == 400
    assert "events[3].round" in resp.json()["detail"]
    assert _nothing_stored(run)


def test_a_body_that_is_not_json_is_refused(client: Client, run: Run) -> None:
    resp = client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=b"{not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert resp.status_code == 400 and "JSON" in resp.json()["detail"]


# ---- checkpoints ------------------------------------------------------------------------------


def test_a_checkpoint_upload_is_stored_and_downloadable(client: Client, run: Run, users: dict[str, Any]) -> None:
    model = b"\x93NUMPY fake model " * 1000
    assert _put(client, run.pk, 3, "npz", model).status_code == 201

    client.force_login(users["owner"])
    resp = client.get(f"/monitoring/runs/{run.pk}/checkpoints/3.npz")
    assert resp.status_code == 200
    assert b"".join(resp.streaming_content) == model
    assert "run1-round0003.npz" in resp["Content-Disposition"]


def test_a_checkpoint_reupload_replaces_the_file(client: Client, run: Run, users: dict[str, Any]) -> None:
    assert _put(client, run.pk, 0, "pt", b"first").status_code == 201
    first = Checkpoint.objects.get(run=run, round=0).pt.path
    assert _put(client, run.pk, 0, "pt", b"second, after a retry").status_code == 201
    assert Checkpoint.objects.filter(run=run).count() == 1
    client.force_login(users["owner"])
    resp = client.get(f"/monitoring/runs/{run.pk}/checkpoints/0.pt")
    assert b"".join(resp.streaming_content) == b"second, after a retry"
    # Stored under the same name: no orphaned old file is left behind.
    assert Checkpoint.objects.get(run=run, round=0).pt.path == first
    assert Path(first).read_bytes() == b"second, after a retry"


def test_a_checkpoint_bigger_than_a_form_upload_is_accepted(client: Client, run: Run, settings: Any) -> None:
    # Django refuses form bodies over DATA_UPLOAD_MAX_MEMORY_SIZE; a streamed model is not a form.
    body = bytes(range(256)) * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 256 * 2 + 1)
    assert _put(client, run.pk, 4, "npz", body).status_code == 201
    assert Checkpoint.objects.get(run=run, round=4).npz.size == len(body)


def test_an_oversize_checkpoint_is_refused(client: Client, run: Run, settings: Any) -> None:
    settings.FEDOTA_MAX_CHECKPOINT_BYTES = 1024
    resp = _put(client, run.pk, 1, "npz", b"x" * 2048)
    assert resp.status_code == 413
    assert "1024" in resp.json()["detail"]
    assert not Checkpoint.objects.filter(run=run).exists()


def test_a_checkpoint_round_beyond_what_is_stored_is_refused(client: Client, run: Run) -> None:
    resp = _put(client, run.pk, 2**31, "npz", b"x")
    assert resp.status_code == 400 and "round: must be a whole number from 0 to 2147483647" in resp.json()["detail"]
    assert not Checkpoint.objects.filter(run=run).exists()


def test_a_checkpoint_of_an_unknown_kind_is_refused(client: Client, run: Run) -> None:
    resp = _put(client, run.pk, 1, "exe", b"x")
    assert resp.status_code == 400 and "kind" in resp.json()["detail"]


# ---- the coordinator's reporter against the real server -------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_coordinator_reporter_speaks_this_api(
    live_server: Any, users: dict[str, Any], make_problem: Callable[..., Any], tmp_path: Path
) -> None:
    from coordinator.report import NodeInfo, Reporter, Target

    problem = make_problem(users["owner"])
    run = Run.objects.create(
        problem=problem, number=1, fab_sha256=problem.fab_sha256, status="running", service_token_hash=_hash(TOKEN)
    )
    Service.objects.create(run=run, role="selector", index=0, health="healthy")
    site = Participant.objects.create(
        problem=problem, user=users["participant"], site_name="General Hospital", contact_email="p@example.org"
    )
    model = tmp_path / "round_0001.npz"
    model.write_bytes(b"weights" * 10_000)

    reporter = Reporter(
        Target(f"{live_server.url}/internal/v1/runs/{run.pk}/", TOKEN),
        nodes=lambda: [NodeInfo(7, f"p{problem.pk}-r1-s0", str(site.pk), "my laptop")],
        spool_dir=tmp_path / "spool",
    )
    reporter.start()
    reporter.run_started(total_rounds=1, app="fedota-tabular", fab_sha256=problem.fab_sha256)
    reporter.round_finished(
        {
            "round": 1,
            "started": 1.0,
            "finished": 2.0,
            "seconds": 1.0,
            "participants": [7],
            "train_metrics": {"train_loss": 0.5},
            "eval_metrics": {"eval_acc": 0.9},
            "eval_nodes": [7],
        }
    )
    reporter.checkpoint(1, model, "npz")
    selector = Service.objects.get(run=run, role="selector")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and selector.clients_connected != 1:
        time.sleep(0.05)
        selector.refresh_from_db()
    assert selector.clients_connected == 1  # the pool snapshot arrived while the run was going
    reporter.run_finished(ok=True, detail="run finished")
    assert reporter.close(timeout=20.0)
    assert reporter.refused == 0

    run.refresh_from_db()
    assert run.status == "finished" and run.total_rounds == 1 and run.current_round == 1
    assert RoundRecord.objects.get(run=run, number=1).eval_acc == 0.9
    assert Contribution.objects.filter(run=run, participant=site, site_name="General Hospital").count() == 2
    assert Service.objects.get(run=run, role="selector").clients_connected == 0  # clients sent home
    assert Checkpoint.objects.get(run=run, round=1).npz.read() == model.read_bytes()


def test_deeply_nested_events_are_a_clear_400(client: Client, run: Run) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_the_participant_list_holds_only_approved_credential_hashes(
    client: Client, run: Run, hospital: Participant, users: dict[str, Any]
) -> None:
    Participant.objects.filter(pk=hospital.pk).update(status="approved", credential_hash="ab" * 32)
    Participant.objects.create(
        problem=run.problem,
        user=users["holder"],
        site_name="Revoked",
        status="revoked",
        credential_hash="cd" * 32,
        contact_email="r@example.org",
    )
    response = client.get(f"/internal/v1/runs/{run.pk}/participants", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response.json() == {
        "problem_id": run.problem_id,
        "participants": [{"participant": str(hospital.pk), "credential_sha256": "ab" * 32}],
    }
    assert client.get(f"/internal/v1/runs/{run.pk}/participants").status_code == 401
    wrong = client.get(f"/internal/v1/runs/{run.pk}/participants", HTTP_AUTHORIZATION=f"Bearer {OTHER_TOKEN}")
    assert wrong.status_code == 403
