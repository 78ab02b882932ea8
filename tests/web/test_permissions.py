"""Who may do what: every page and API endpoint that reveals or changes something, for every role.

Roles: anonymous, a data holder not in the problem, an approved participant of
it, another problem's setter, the owner, a site admin. An allowed role gets past
the permission check (any answer but 401/403/404 or a redirect to log in: a 409
for a state conflict still counts as allowed). A refused role gets 401, 403 or
404 (or, anonymous on a page, the log-in redirect) and nothing in the database
changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from webserver.accounts.models import Profile
from webserver.monitoring.models import Checkpoint, LogLine, RoundRecord
from webserver.participation.models import Contribution, Participant
from webserver.problems.models import Problem, Run

ROLES = ("anonymous", "holder", "participant", "other_setter", "owner", "admin")
OWNER = frozenset({"owner", "admin"})
SETTERS = frozenset({"owner", "other_setter"})
HOLDERS = frozenset({"holder", "participant"})
SIGNED_IN = frozenset(ROLES) - {"anonymous"}
REFUSED = (401, 403, 404)


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    url: Callable[[dict[str, Any]], str]
    allowed: frozenset[str]
    data: dict[str, Any] | None = None
    api: bool = False


def _u(name: str, **kwargs: str) -> Callable[[dict[str, Any]], str]:
    """A URL whose keyword values are keys of the `world` fixture (object ids)."""
    return lambda world: reverse(name, kwargs={k: world[v] for k, v in kwargs.items()})


def _file(world: dict[str, Any]) -> str:
    return reverse("problem-file", kwargs={"pk": world["draft"], "path": "pyproject.toml"})


def _api_file(world: dict[str, Any]) -> str:
    return reverse("api-problem-file", kwargs={"pk": world["draft"], "path": "pyproject.toml"})


def _checkpoint(world: dict[str, Any]) -> str:
    return reverse("checkpoint-download", kwargs={"run_id": world["run"], "round": 1, "kind": "npz"})


def _manifest(world: dict[str, Any]) -> str:
    return reverse("checkpoint-manifest", kwargs={"run_id": world["run"], "round": 1, "kind": "npz"})


def _runs_metrics(world: dict[str, Any]) -> str:
    return reverse("api-runs-metrics", kwargs={"problem_id": world["problem"]}) + "?runs=1"


CASES = [
    # ---- pages that reveal -------------------------------------------------------------------
    Case("draft problem page", "GET", _u("problem-detail", pk="draft"), OWNER),
    Case("draft app source file", "GET", _file, OWNER),
    Case("edit page", "GET", _u("problem-edit", pk="problem"), OWNER),
    Case("new problem page", "GET", _u("problem-create"), SETTERS),
    Case("dashboard", "GET", _u("problem-dashboard", problem_pk="problem"), OWNER),
    Case("checkpoint download", "GET", _checkpoint, OWNER),
    Case("checkpoint provenance manifest", "GET", _manifest, OWNER),
    Case("metrics CSV", "GET", _u("metrics-csv", run_id="run"), OWNER),
    Case("infrastructure page", "GET", _u("infrastructure"), frozenset({"admin"})),
    Case("my participation", "GET", _u("my-participations"), HOLDERS),
    Case("join form", "GET", _u("participant-request", problem_pk="problem"), HOLDERS),
    Case("profile", "GET", _u("profile"), SIGNED_IN),
    # ---- pages that change ---------------------------------------------------------------------
    Case("edit", "POST", _u("problem-edit", pk="problem"), OWNER, {"title": "Renamed"}),
    Case("publish", "POST", _u("problem-publish", pk="draft"), OWNER),
    Case("stop", "POST", _u("problem-stop", pk="problem"), OWNER),
    Case("archive", "POST", _u("problem-archive", pk="problem"), OWNER),
    Case("delete draft", "POST", _u("problem-delete", pk="draft"), OWNER),
    Case("approve", "POST", _u("participant-approve", participant_pk="pending"), OWNER),
    Case("reject", "POST", _u("participant-reject", participant_pk="pending"), OWNER, {"reason": "no"}),
    Case("revoke", "POST", _u("participant-revoke", participant_pk="approved"), OWNER, {"reason": "no"}),
    Case(
        "download join bundle", "POST", _u("participant-bundle", participant_pk="approved"), frozenset({"participant"})
    ),
    Case(
        "set partition id", "POST", _u("participant-partition", participant_pk="approved"), OWNER, {"partition_id": 0}
    ),
    Case(
        "set num-partitions", "POST", _u("problem-num-partitions", problem_pk="problem"), OWNER, {"num_partitions": 3}
    ),
    Case(
        "ask to join",
        "POST",
        _u("participant-request", problem_pk="problem"),
        HOLDERS,
        {"site_name": "Clinic", "contact_email": "c@example.org"},
    ),
    # ---- API that reveals ----------------------------------------------------------------------
    Case("API draft problem", "GET", _u("api-problem-detail", pk="draft"), OWNER, api=True),
    Case("API draft files", "GET", _u("api-problem-files", pk="draft"), OWNER, api=True),
    Case("API draft file", "GET", _api_file, OWNER, api=True),
    Case("API draft runs", "GET", _u("api-problem-runs", pk="draft"), OWNER, api=True),
    Case("API dashboard", "GET", _u("api-problem-dashboard", problem_id="problem"), OWNER, api=True),
    Case("API runs metrics", "GET", _runs_metrics, OWNER, api=True),
    Case("API rounds", "GET", _u("api-run-rounds", run_id="run"), OWNER, api=True),
    Case("API logs", "GET", _u("api-run-logs", run_id="run"), OWNER, api=True),
    Case("API me", "GET", _u("api-me"), SIGNED_IN, api=True),
    Case("API my participations", "GET", _u("api-my-participations"), SIGNED_IN, api=True),  # only their own
    # ---- API that changes ----------------------------------------------------------------------
    Case("API create problem", "POST", _u("api-problem-list"), SETTERS, {"title": "New"}, api=True),
    Case("API edit problem", "PATCH", _u("api-problem-detail", pk="problem"), OWNER, {"title": "X"}, api=True),
    Case("API delete draft", "DELETE", _u("api-problem-detail", pk="draft"), OWNER, api=True),
    Case("API publish", "POST", _u("api-problem-publish", pk="draft"), OWNER, api=True),
    Case("API stop", "POST", _u("api-problem-stop", pk="problem"), OWNER, api=True),
    Case("API archive", "POST", _u("api-problem-archive", pk="problem"), OWNER, api=True),
    Case("API approve", "POST", _u("api-participant-approve", participant_id="pending"), OWNER, api=True),
    Case("API reject", "POST", _u("api-participant-reject", participant_id="pending"), OWNER, api=True),
    Case("API revoke", "POST", _u("api-participant-revoke", participant_id="approved"), OWNER, api=True),
    Case(
        "API set partition id",
        "POST",
        _u("api-participant-partition", participant_id="approved"),
        OWNER,
        {"partition_id": 0},
        api=True,
    ),
    Case(
        "API set num-partitions",
        "PUT",
        _u("api-problem-partitions", problem_id="problem"),
        OWNER,
        {"num_partitions": 3},
        api=True,
    ),
    Case(
        "API join bundle",
        "POST",
        _u("api-participant-bundle", participant_id="approved"),
        frozenset({"participant"}),
        api=True,
    ),
    Case(
        "API ask to join",
        "POST",
        _u("api-problem-participants", problem_id="problem"),
        HOLDERS,
        {"site_name": "Clinic", "contact_email": "c@example.org"},
        api=True,
    ),
]


@pytest.fixture
def world(users: dict[str, Any], make_problem: Callable[..., Any]) -> dict[str, Any]:
    """The owner's published problem with a finished run and an approved and a pending site; a draft."""
    problem = make_problem(users["owner"], title="Published")
    draft = make_problem(users["owner"], state="draft", title="Draft")
    run = Run.objects.create(problem=problem, number=1, fab_sha256=problem.fab_sha256, status="finished")
    RoundRecord.objects.create(run=run, number=1, phase="done", clients=1, eval_acc=0.9)
    LogLine.objects.create(run=run, event_id="e1", ts="2026-11-24T10:00:00Z", message="round 1/1")
    checkpoint = Checkpoint(run=run, round=1)
    checkpoint.npz.save("round_0001.npz", ContentFile(b"PK-not-really"), save=True)
    approved = Participant.objects.create(
        problem=problem,
        user=users["participant"],
        site_name="General Hospital",
        contact_email="gh@example.org",
        status="approved",
    )
    Contribution.objects.create(run=run, participant=approved, site_name="General Hospital", round=1)
    applicant = get_user_model().objects.create_user(username="applicant", password="x" * 20)
    Profile.objects.create(user=applicant, role="holder", organisation="Applicant Clinic")
    pending = Participant.objects.create(
        problem=problem, user=applicant, site_name="Applicant Clinic", contact_email="ac@example.org"
    )
    return {
        "problem": problem.pk,
        "draft": draft.pk,
        "run": run.pk,
        "approved": approved.pk,
        "pending": pending.pk,
        "users": users,
    }


def _fingerprint() -> tuple[Any, ...]:
    """Everything a refused request must leave exactly as it was."""
    return (
        sorted(Problem.objects.values_list("pk", "title", "state", "app_version", "fab_sha256", "run_config")),
        sorted(Participant.objects.values_list("pk", "status", "credential_hash", "site_name")),
        sorted(Run.objects.values_list("pk", "status", "number")),
        Checkpoint.objects.count(),
        RoundRecord.objects.count(),
    )


def _client(world: dict[str, Any], role: str) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(world["users"][role])
    return client


def _send(client: Client, case: Case, url: str) -> Any:
    method = getattr(client, case.method.lower())
    if case.api:
        return method(url, data=case.data or {}, content_type="application/json")
    return method(url, data=case.data or {})


def _refused(response: Any, role: str, case: Case) -> bool:
    if response.status_code in REFUSED:
        return True
    # Pages send anonymous visitors to log in rather than answering 403.
    return (
        role == "anonymous"
        and not case.api
        and response.status_code == 302
        and response["Location"].startswith(reverse("login"))
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_permission_matrix(world: dict[str, Any], case: Case, role: str) -> None:
    url = case.url(world)
    before = _fingerprint()
    response = _send(_client(world, role), case, url)
    if role in case.allowed:
        assert not _refused(response, role, case), (
            f"{role} should be allowed: {case.method} {url} answered {response.status_code}"
        )
    else:
        assert _refused(response, role, case), (
            f"{role} must be refused: {case.method} {url} answered {response.status_code}"
        )
        assert _fingerprint() == before, f"{role} was refused {case.method} {url} but something changed"


@pytest.mark.parametrize("role", ["anonymous", "holder", "participant", "other_setter"])
def test_contact_emails_and_other_sites_stay_private(world: dict[str, Any], role: str) -> None:
    client = _client(world, role)
    page = client.get(reverse("problem-detail", kwargs={"pk": world["problem"]})).content.decode()
    api = client.get(
        reverse("api-problem-participants", kwargs={"problem_id": world["problem"]}),
        content_type="application/json",
    ).content.decode()
    for text in (page, api):
        assert "ac@example.org" not in text  # the pending applicant's contact
        if role != "participant":
            assert "gh@example.org" not in text


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_the_owner_and_admin_see_every_request(world: dict[str, Any], role: str) -> None:
    page = _client(world, role).get(reverse("problem-detail", kwargs={"pk": world["problem"]})).content.decode()
    assert "ac@example.org" in page and "gh@example.org" in page


def test_every_api_endpoint_that_changes_something_is_in_the_matrix() -> None:
    """A new writing endpoint must be added to CASES (with who may call it)."""
    from django.urls import get_resolver

    names = {
        name
        for name in get_resolver().reverse_dict
        if isinstance(name, str) and name.startswith("api-") and name not in ("api-schema", "api-docs")
    }
    matrix_names = {
        "api-problem-detail",
        "api-problem-files",
        "api-problem-file",
        "api-problem-runs",
        "api-problem-dashboard",
        "api-runs-metrics",
        "api-run-rounds",
        "api-run-logs",
        "api-me",
        "api-my-participations",
        "api-problem-list",
        "api-problem-publish",
        "api-problem-stop",
        "api-problem-archive",
        "api-participant-approve",
        "api-participant-reject",
        "api-participant-revoke",
        "api-participant-bundle",
        "api-participant-partition",
        "api-problem-partitions",
        "api-problem-participants",
    }
    # Public or self-service by design: listing public problems and built-in apps, sign-up and tokens
    # (covered in test_accounts.py), the OpenAPI schema.
    public = {"api-apps", "api-signup", "api-token", "api-token-regenerate"}
    assert names - matrix_names - public == set(), "API routes missing from the permission matrix"
