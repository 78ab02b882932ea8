"""Data holders joining problems through the website: request, decisions, join bundles, my participation."""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.template import engines
from django.test import Client, RequestFactory
from django.urls import reverse

from webserver.errors import Conflict
from webserver.participation import bundles, services
from webserver.participation.credentials import credential_participant_id, credential_verify
from webserver.participation.models import Contribution, Participant, ParticipantStatus
from webserver.problems.models import JoinPolicy, ProblemState, Run, Service, ServiceRole

pytestmark = [pytest.mark.web, pytest.mark.django_db]


def _client(user: Any | None = None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def panel_html(user: Any, problem: Any) -> str:
    """The participation panel as `user` sees it on the problem page."""
    from django.contrib.auth.models import AnonymousUser

    request = RequestFactory().get(f"/problems/{problem.pk}/")
    request.user = user if user is not None else AnonymousUser()
    template = engines["django"].from_string("{% load participation_tags %}{% participation_panel problem %}")
    return html.unescape(template.render({"problem": problem}, request))


def page_text(response: Any) -> str:
    """The page as a reader sees it (entities such as &#x27; decoded)."""
    return html.unescape(response.content.decode())


def _join(user: Any, problem: Any, **data: str) -> Any:
    body = {"site_name": "St Elsewhere", "contact_email": "data@st-elsewhere.example", "message": "2,000 patients"}
    body.update(data)
    return _client(user).post(reverse("participant-request", args=[problem.pk]), body)


def _bundle(user: Any, participant: Any) -> Any:
    return _client(user).post(reverse("participant-bundle", args=[participant.pk]))


@pytest.fixture
def approved(users: dict[str, Any], make_problem: Callable[..., Any]) -> Any:
    """The `participant` data holder, approved on a published approval-policy problem."""
    problem = make_problem(users["owner"])
    participant = services.participant_request(
        problem=problem, user=users["participant"], site_name="General Hospital", contact_email="gh@example.org"
    )
    return services.participant_approve(participant=participant, by=users["owner"])


def test_request_approve_download_bundle(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    holder = users["holder"]

    form = _client(holder).get(reverse("participant-request", args=[problem.pk]))
    assert form.status_code == 200
    assert 'value="St Elsewhere"' in page_text(form)  # pre-filled from the profile
    assert 'value="holder@example.org"' in page_text(form)

    response = _join(holder, problem)
    assert response.status_code == 302
    participant = Participant.objects.get(problem=problem, user=holder)
    assert participant.status == ParticipantStatus.PENDING
    assert participant.message == "2,000 patients"
    assert "Waiting for the problem" in panel_html(holder, problem)
    assert "Download join bundle" not in panel_html(holder, problem)

    owner_panel = panel_html(users["owner"], problem)
    assert "data@st-elsewhere.example" in owner_panel
    assert reverse("participant-approve", args=[participant.pk]) in owner_panel

    response = _client(users["owner"]).post(reverse("participant-approve", args=[participant.pk]))
    assert response.status_code == 302
    participant.refresh_from_db()
    assert participant.status == ParticipantStatus.APPROVED and participant.decided_at is not None

    panel = panel_html(holder, problem)
    assert "Download join bundle" in panel
    assert "app-source" in panel  # the reminder to review the code first

    response = _bundle(holder, participant)
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="fedota-join-{problem.pk}.json"'
    bundle = json.loads(response.content)
    assert bundle["format"] == "fedota-join-bundle/1"
    assert bundle["problem_id"] == problem.pk and bundle["participant_id"] == participant.pk
    assert bundle["fab_sha256"] == problem.fab_sha256
    assert bundle["data_contract"] == problem.contract
    assert bundle["site_name"] == "St Elsewhere"
    assert bundle["selectors"] and bundle["selectors"] == bundles.problem_selector_endpoints(problem)
    assert bundle["webserver_url"]
    credential = bundle["credential"]
    assert credential.startswith(f"fdp_{participant.pk}_")
    assert credential_verify(credential) == participant

    participant.refresh_from_db()
    assert participant.credential_hash == hashlib.sha256(credential.encode()).hexdigest()
    assert credential not in json.dumps(list(Participant.objects.values()), default=str)
    assert participant.bundle_app_version == problem.app_version

    second = json.loads(_bundle(holder, participant).content)["credential"]
    assert credential_verify(credential) is None  # the first bundle stopped working
    assert credential_verify(second) == participant


def test_open_policy_approves_at_once(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"], join_policy=JoinPolicy.OPEN)
    response = _client(users["holder"]).post(
        reverse("participant-request", args=[problem.pk]),
        {"site_name": "St Elsewhere", "contact_email": "a@b.example"},
        follow=False,
    )
    assert response.status_code == 302
    assert Participant.objects.get(problem=problem).status == ParticipantStatus.APPROVED
    assert "Download join bundle" in panel_html(users["holder"], problem)


def test_draft_problem_is_not_found_and_archived_is_refused(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    draft = make_problem(users["owner"], state=ProblemState.DRAFT, title="Secret draft")
    assert _client(users["holder"]).get(reverse("participant-request", args=[draft.pk])).status_code == 404
    assert _join(users["holder"], draft).status_code == 404

    archived = make_problem(users["owner"], state=ProblemState.ARCHIVED, title="Old one")
    response = _join(users["holder"], archived)
    assert response.status_code == 409
    assert "is not published" in page_text(response)
    assert "once its setter publishes it" in page_text(response)
    assert "Ask to join" not in panel_html(users["holder"], archived)

    with pytest.raises(Conflict, match="not published; you can ask to join once its setter publishes it"):
        services.participant_request(problem=draft, user=users["holder"], site_name="X", contact_email="x@y.example")
    assert not Participant.objects.exists()


def test_duplicate_request_points_to_the_existing_one(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    assert _join(users["holder"], problem).status_code == 302
    response = _join(users["holder"], problem, site_name="Another name")
    assert response.status_code == 409
    page = page_text(response)
    assert "You already asked to join this problem" in page and "waiting for approval" in page
    assert reverse("my-participations") in page
    assert Participant.objects.get().site_name == "St Elsewhere"


def test_bad_input_names_the_field_and_stores_nothing(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    response = _join(users["holder"], problem, contact_email="not an address")
    assert response.status_code == 400
    assert "Enter a valid email address" in page_text(response)
    response = _join(users["holder"], problem, site_name="")
    assert response.status_code == 400
    assert "This field is required" in page_text(response)
    assert not Participant.objects.exists()


def test_only_data_holders_can_ask_to_join(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    url = reverse("participant-request", args=[problem.pk])

    response = _join(users["other_setter"], problem)
    assert response.status_code == 403
    assert "Only data holders can join problems" in page_text(response)

    response = _client().get(url)
    assert response.status_code == 302 and "login" in response["Location"]
    assert "Log in as a data holder to join" in panel_html(None, problem)
    assert "Only data holders can join" in panel_html(users["other_setter"], problem)
    assert not Participant.objects.exists()


def test_other_setters_cannot_decide_or_see_contact_emails(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    _join(users["holder"], problem)
    participant = Participant.objects.get()

    for verb in ("approve", "reject", "revoke"):
        response = _client(users["other_setter"]).post(reverse(f"participant-{verb}", args=[participant.pk]))
        assert response.status_code == 403, verb
        assert "Only the problem's setter or a site admin" in page_text(response)
    participant.refresh_from_db()
    assert participant.status == ParticipantStatus.PENDING

    for viewer in (users["other_setter"], users["participant"], None):
        assert "data@st-elsewhere.example" not in panel_html(viewer, problem)
    assert "data@st-elsewhere.example" in panel_html(users["admin"], problem)

    # A site admin may decide on any problem.
    response = _client(users["admin"]).post(reverse("participant-approve", args=[participant.pk]))
    assert response.status_code == 302
    participant.refresh_from_db()
    assert participant.status == ParticipantStatus.APPROVED


def test_only_the_participant_downloads_its_bundle(users: dict[str, Any], approved: Any) -> None:
    for other in (users["holder"], users["owner"], users["admin"]):
        response = _bundle(other, approved)
        assert response.status_code == 403
        assert "Only the data holder who joined" in page_text(response)
    approved.refresh_from_db()
    assert approved.credential_hash == ""


def test_pending_holder_cannot_download_a_bundle(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    _join(users["holder"], problem)
    response = _bundle(users["holder"], Participant.objects.get())
    assert response.status_code == 409
    assert "only approved participants can download a join bundle" in page_text(response)


def test_revoked_participant_loses_its_credential(users: dict[str, Any], approved: Any) -> None:
    credential = json.loads(_bundle(users["participant"], approved).content)["credential"]
    assert credential_verify(credential) == approved

    response = _client(users["owner"]).post(
        reverse("participant-revoke", args=[approved.pk]), {"reason": "left the consortium"}
    )
    assert response.status_code == 302
    approved.refresh_from_db()
    assert approved.status == ParticipantStatus.REVOKED
    assert credential_verify(credential) is None

    response = _bundle(users["participant"], approved)
    assert response.status_code == 409
    assert "revoked" in page_text(response)
    assert credential_verify(credential) is None

    panel = panel_html(users["participant"], approved.problem)
    assert "your join bundle no longer works" in panel and "left the consortium" in panel
    assert "Download join bundle" not in panel


def test_illegal_transitions_are_refused(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    _join(users["holder"], problem)
    participant = Participant.objects.get()
    owner = _client(users["owner"])

    response = owner.post(reverse("participant-revoke", args=[participant.pk]))
    assert response.status_code == 409
    assert "cannot be revoked: the request is waiting for approval" in page_text(response)

    owner.post(reverse("participant-approve", args=[participant.pk]))
    response = owner.post(reverse("participant-reject", args=[participant.pk]))
    assert response.status_code == 409
    assert "Revoke an approved participant instead" in page_text(response)

    owner.post(reverse("participant-revoke", args=[participant.pk]))
    response = owner.post(reverse("participant-approve", args=[participant.pk]))
    assert response.status_code == 409
    assert "A revoked participant cannot be approved again" in page_text(response)
    participant.refresh_from_db()
    assert participant.status == ParticipantStatus.REVOKED

    assert owner.get(reverse("participant-approve", args=[participant.pk])).status_code == 405


def test_rejection_reason_reaches_the_data_holder(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    _join(users["holder"], problem)
    participant = Participant.objects.get()
    _client(users["owner"]).post(
        reverse("participant-reject", args=[participant.pk]), {"reason": "We need paediatric data"}
    )
    participant.refresh_from_db()
    assert participant.status == ParticipantStatus.REJECTED
    assert "We need paediatric data" in panel_html(users["holder"], problem)
    page = page_text(_client(users["holder"]).get(reverse("my-participations")))
    assert "We need paediatric data" in page


def test_page_shows_the_docker_run_line(settings: Any, users: dict[str, Any], approved: Any) -> None:
    settings.FEDOTA_CLIENT_IMAGE = "registry.example.org/fedota/client:2.1"
    problem = approved.problem
    panel = panel_html(users["participant"], problem)
    line = (
        f"docker run --rm -v /path/to/your/data:/data:ro -v /path/to/fedota-join-{problem.pk}.json:/join.json:ro "
        "registry.example.org/fedota/client:2.1"
    )
    assert line in panel
    assert ":/data:ro" in panel
    assert f"fedota-client --join-bundle fedota-join-{problem.pk}.json --data-path /path/to/your/data" in panel
    assert "data-copy=" in panel
    assert "Each download issues a new credential" in panel


def test_changed_app_asks_for_a_new_bundle(users: dict[str, Any], approved: Any) -> None:
    _bundle(users["participant"], approved)
    problem = approved.problem
    assert "The app changed" not in panel_html(users["participant"], problem)
    problem.app_version += 1
    problem.save()
    assert "The app changed since your last join bundle" in panel_html(users["participant"], problem)
    assert "The app changed" in page_text(_client(users["participant"]).get(reverse("my-participations")))
    _bundle(users["participant"], approved)
    assert "The app changed" not in panel_html(users["participant"], problem)


def test_my_participation_lists_contributed_rounds(users: dict[str, Any], approved: Any) -> None:
    problem = approved.problem
    run1 = Run.objects.create(problem=problem, number=1, fab_sha256=problem.fab_sha256)
    run2 = Run.objects.create(problem=problem, number=2, fab_sha256=problem.fab_sha256)
    for rnd in range(1, 6):
        for kind in ("train", "evaluate"):
            Contribution.objects.create(
                run=run2, participant=approved, site_name=approved.site_name, round=rnd, kind=kind
            )
    for rnd in (1, 2, 4):
        Contribution.objects.create(run=run1, participant=approved, site_name=approved.site_name, round=rnd)

    page = page_text(_client(users["participant"]).get(reverse("my-participations")))
    assert "Breast cancer" in page
    assert "run 2: rounds 1–5 (train), 1–5 (evaluate)" in page
    assert "run 1: rounds 1–2, 4 (train)" in page
    assert "Approved" in page

    # The setter sees the count per site in the requests table.
    assert "<td>8</td>" in panel_html(users["owner"], problem)

    assert _client(users["owner"]).get(reverse("my-participations")).status_code == 403
    empty = page_text(_client(users["holder"]).get(reverse("my-participations")))
    assert "You have not asked to join any problem yet" in empty


def test_selector_endpoints_fall_back_to_the_latest_run(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    assert bundles._endpoints_from_latest_run(problem) == []
    old = Run.objects.create(problem=problem, number=1, fab_sha256=problem.fab_sha256)
    Service.objects.create(run=old, role=ServiceRole.SELECTOR, index=0, address="old:1")
    run = Run.objects.create(problem=problem, number=2, fab_sha256=problem.fab_sha256)
    Service.objects.create(run=run, role=ServiceRole.SELECTOR, index=1, address="sel-1:9092")
    Service.objects.create(run=run, role=ServiceRole.SELECTOR, index=0, address="sel-0:9092")
    Service.objects.create(run=run, role=ServiceRole.COORDINATOR, index=0, address="coord:9091")
    assert bundles._endpoints_from_latest_run(problem) == ["sel-0:9092", "sel-1:9092"]


def test_credential_parsing_and_verification(approved: Any) -> None:
    participant_id = approved.pk
    assert credential_participant_id(f"fdp_{participant_id}_abc_def-ghi") == participant_id
    for bad in (
        "",
        "fdp",
        "fdp__x",
        "fdp_x_abc",
        "xyz_1_abc",
        f"fdp_{participant_id}_",
        "fdp_01_abc",
        "fdp_1_" + "a" * 300,
    ):
        assert credential_participant_id(bad) is None, bad
    assert credential_verify(f"fdp_{participant_id}_wrong-secret") is None
    assert credential_verify("garbage") is None

    bundle = services.participant_issue_bundle(participant=approved, by=approved.user)
    assert credential_verify(bundle["credential"]) == approved
    problem = approved.problem
    problem.state = ProblemState.ARCHIVED
    problem.save()
    assert credential_verify(bundle["credential"]) is None  # scoped to a published problem


def test_problem_page_shows_the_panel(users: dict[str, Any], approved: Any) -> None:
    response = _client(users["owner"]).get(reverse("problem-detail", args=[approved.problem.pk]))
    assert response.status_code == 200
    assert "gh@example.org" in page_text(response)
    response = _client(users["other_setter"]).get(reverse("problem-detail", args=[approved.problem.pk]))
    assert response.status_code == 200
    assert "gh@example.org" not in page_text(response)


def test_admin_never_shows_the_credential_hash(users: dict[str, Any], approved: Any) -> None:
    services.participant_issue_bundle(participant=approved, by=approved.user)
    approved.refresh_from_db()
    page = _client(users["admin"]).get(reverse("admin:participation_participant_change", args=[approved.pk]))
    assert page.status_code == 200
    assert approved.credential_hash not in page_text(page)
    assert "Credential issued" in page_text(page)
