"""The participation REST API: join requests, decisions, join bundles, my participations."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from webserver.participation import services
from webserver.participation.credentials import credential_verify
from webserver.participation.models import Contribution, Participant, ParticipantStatus
from webserver.problems.models import JoinPolicy, ProblemState, Run

pytestmark = [pytest.mark.web, pytest.mark.django_db]


def api(user: Any | None = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def participants_url(problem: Any) -> str:
    return f"/api/v1/problems/{problem.pk}/participants/"


def action_url(participant: Any, action: str) -> str:
    return f"/api/v1/participants/{participant.pk}/{action}/"


@pytest.fixture
def problem(users: dict[str, Any], make_problem: Callable[..., Any]) -> Any:
    return make_problem(users["owner"])


@pytest.fixture
def pending(users: dict[str, Any], problem: Any) -> Any:
    return services.participant_request(
        problem=problem, user=users["participant"], site_name="General Hospital", contact_email="gh@example.org"
    )


def test_join_request_defaults_to_the_profile(users: dict[str, Any], problem: Any) -> None:
    response = api(users["holder"]).post(participants_url(problem), {"message": "hello"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["site_name"] == "St Elsewhere"
    assert body["contact_email"] == "holder@example.org"
    assert body["problem_id"] == problem.pk
    assert body["username"] == "holder"


def test_open_policy_approves_at_once(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"], join_policy=JoinPolicy.OPEN)
    response = api(users["holder"]).post(participants_url(problem), {}, format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "approved"


def test_join_request_errors(users: dict[str, Any], problem: Any, make_problem: Callable[..., Any]) -> None:
    holder = api(users["holder"])

    response = holder.post(participants_url(problem), {"contact_email": "nope"}, format="json")
    assert response.status_code == 400
    assert "contact_email" in response.json()

    response = holder.post(participants_url(problem), {"message": "x" * 2001}, format="json")
    assert response.status_code == 400
    assert "message" in response.json()

    response = api(users["other_setter"]).post(participants_url(problem), {}, format="json")
    assert response.status_code == 403
    assert "Only data holders can join problems" in response.json()["detail"]

    assert api().post(participants_url(problem), {}, format="json").status_code in (401, 403)

    draft = make_problem(users["owner"], state=ProblemState.DRAFT)
    response = holder.post(participants_url(draft), {}, format="json")
    assert response.status_code == 404

    archived = make_problem(users["owner"], state=ProblemState.ARCHIVED)
    response = holder.post(participants_url(archived), {}, format="json")
    assert response.status_code == 409
    assert "is not published" in response.json()["detail"]

    assert api(users["holder"]).post("/api/v1/problems/999999/participants/", {}, format="json").status_code == 404
    assert not Participant.objects.exists()

    assert holder.post(participants_url(problem), {}, format="json").status_code == 201
    response = holder.post(participants_url(problem), {}, format="json")
    assert response.status_code == 409
    assert "You already asked to join this problem" in response.json()["detail"]
    assert response.json()["status"] == "pending"
    assert Participant.objects.count() == 1


def test_who_sees_which_participants(users: dict[str, Any], problem: Any, pending: Any) -> None:
    services.participant_request(
        problem=problem, user=users["holder"], site_name="St Elsewhere", contact_email="se@example.org"
    )

    rows = api(users["owner"]).get(participants_url(problem)).json()["results"]
    assert {r["contact_email"] for r in rows} == {"gh@example.org", "se@example.org"}
    rows = api(users["admin"]).get(participants_url(problem)).json()["results"]
    assert len(rows) == 2

    rows = api(users["holder"]).get(participants_url(problem)).json()["results"]
    assert [r["site_name"] for r in rows] == ["St Elsewhere"]

    rows = api(users["other_setter"]).get(participants_url(problem)).json()["results"]
    assert rows == []
    assert api().get(participants_url(problem)).status_code in (401, 403)


def test_decisions(users: dict[str, Any], pending: Any) -> None:
    response = api(users["other_setter"]).post(action_url(pending, "approve"))
    assert response.status_code == 403
    assert "Only the problem's setter or a site admin can approve" in response.json()["detail"]
    assert api(users["participant"]).post(action_url(pending, "approve")).status_code == 403

    response = api(users["owner"]).post(action_url(pending, "revoke"))
    assert response.status_code == 409
    assert "Reject a pending request instead" in response.json()["detail"]

    response = api(users["owner"]).post(action_url(pending, "reject"), {"reason": "too few rows"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "rejected" and response.json()["decision_note"] == "too few rows"

    response = api(users["owner"]).post(action_url(pending, "reject"), {"reason": "y" * 2001}, format="json")
    assert response.status_code == 400 and "reason" in response.json()

    response = api(users["owner"]).post(action_url(pending, "approve"))
    assert response.status_code == 200 and response.json()["status"] == "approved"

    response = api(users["admin"]).post(action_url(pending, "revoke"))
    assert response.status_code == 200 and response.json()["status"] == "revoked"

    response = api(users["owner"]).post(action_url(pending, "approve"))
    assert response.status_code == 409
    assert "cannot be approved again" in response.json()["detail"]

    assert api(users["owner"]).post("/api/v1/participants/999999/approve/").status_code == 404


def test_bundle(users: dict[str, Any], pending: Any) -> None:
    response = api(users["participant"]).post(action_url(pending, "bundle"))
    assert response.status_code == 409
    assert "only approved participants" in response.json()["detail"]

    services.participant_approve(participant=pending, by=users["owner"])
    assert api(users["holder"]).post(action_url(pending, "bundle")).status_code == 403
    assert api(users["owner"]).post(action_url(pending, "bundle")).status_code == 403

    response = api(users["participant"]).post(action_url(pending, "bundle"))
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    first = response.json()
    assert first["format"] == "fedota-join-bundle/1"
    assert first["selectors"]
    assert credential_verify(first["credential"]) == pending
    pending.refresh_from_db()
    assert pending.credential_hash == hashlib.sha256(first["credential"].encode()).hexdigest()

    second = api(users["participant"]).post(action_url(pending, "bundle")).json()
    assert credential_verify(first["credential"]) is None
    assert credential_verify(second["credential"]) == pending

    api(users["owner"]).post(action_url(pending, "revoke"))
    assert credential_verify(second["credential"]) is None
    response = api(users["participant"]).post(action_url(pending, "bundle"))
    assert response.status_code == 409
    assert "revoked" in response.json()["detail"]


def test_my_participations(users: dict[str, Any], pending: Any, make_problem: Callable[..., Any]) -> None:
    services.participant_approve(participant=pending, by=users["owner"])
    problem = pending.problem
    run = Run.objects.create(problem=problem, number=2, fab_sha256=problem.fab_sha256)
    for rnd in (1, 2, 3):
        Contribution.objects.create(run=run, participant=pending, site_name=pending.site_name, round=rnd)

    rows = api(users["participant"]).get("/api/v1/me/participations/").json()["results"]
    assert len(rows) == 1
    row = rows[0]
    assert row["problem_title"] == "Breast cancer"
    assert row["status"] == ParticipantStatus.APPROVED
    assert row["contributions"] == [{"run": 2, "rounds": {"train": [1, 2, 3]}, "text": "run 2: rounds 1–3 (train)"}]
    assert row["rounds_contributed"] == 3
    assert row["bundle_stale"] is False

    assert api(users["holder"]).get("/api/v1/me/participations/").json()["results"] == []
    assert api().get("/api/v1/me/participations/").status_code in (401, 403)


def test_schema_lists_the_endpoints() -> None:
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    for url in (
        "/api/v1/problems/{problem_id}/participants/",
        "/api/v1/participants/{participant_id}/approve/",
        "/api/v1/participants/{participant_id}/reject/",
        "/api/v1/participants/{participant_id}/revoke/",
        "/api/v1/participants/{participant_id}/bundle/",
        "/api/v1/me/participations/",
    ):
        assert url in paths, url
