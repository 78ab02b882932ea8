"""Issue 18, the website's part: a problem's privacy requirement (set through the form and the API, refused
with the key at fault, fixed once published), join bundles that carry it, the sites' self-reported privacy
spending as the coordinator's `site_privacy` events (stored append-only), the dashboard and its API showing
the ε each site reports and which sites stopped for budget, a data holder's page showing only their own
site's, and the provenance manifest's privacy fields."""

from __future__ import annotations

import hashlib
import html
import io
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from fedota_common import provenance
from webserver.monitoring.models import PrivacyReport
from webserver.participation import services as participation
from webserver.participation.models import Participant
from webserver.problems.models import Problem, Run
from webserver.problems.pki import ca_certificate
from webserver.problems.privacy import PrivacyError, privacy_sentence, validate_privacy

pytestmark = [pytest.mark.web, pytest.mark.django_db]

TOKEN = "privacy-service-token"
REQUIREMENT = {"min_noise_multiplier": 1.1, "clipping_norm": 1.0, "delta": 1e-5}


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _api(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def _text(response: Any) -> str:
    return html.unescape(response.content.decode())


# ----------------------------------------------------------------------------- the requirement


def test_a_requirement_is_normalised_and_an_empty_one_is_none() -> None:
    assert validate_privacy(None) == {} and validate_privacy({}) == {}
    assert validate_privacy({"min_noise_multiplier": 2, "delta": 1e-6}) == {"min_noise_multiplier": 2.0, "delta": 1e-6}
    assert privacy_sentence({}) == "No privacy requirement: each site decides."
    assert privacy_sentence(REQUIREMENT) == (
        "Sites must add Gaussian noise with multiplier ≥ 1.1 (every site applies differential privacy, even one "
        "whose data holder set no budget); clip updates to L2 norm 1 unless a site sets its own; ε reported at "
        "δ = 1e-5 unless a site sets its own."
    )
    assert privacy_sentence({"delta": 1e-6}).startswith("No minimum noise")


@pytest.mark.parametrize(
    ("doc", "key", "words"),
    [
        ({"epsilon": 8}, "epsilon", "unknown setting 'epsilon'; the privacy requirement accepts: min_noise_multiplier"),
        ({"min_noise_multiplier": "1.1"}, "min_noise_multiplier", "must be a number above 0; got '1.1'"),
        ({"min_noise_multiplier": True}, "min_noise_multiplier", "must be a number above 0; got True"),
        ({"min_noise_multiplier": float("nan")}, "min_noise_multiplier", "must be a number above 0; got nan"),
        ({"clipping_norm": float("inf")}, "clipping_norm", "must be a number above 0; got inf"),
        ({"clipping_norm": 0}, "clipping_norm", "must be a number above 0; got 0"),
        ({"min_noise_multiplier": -1}, "min_noise_multiplier", "must be a number above 0; got -1"),
        ({"min_noise_multiplier": 10**400}, "min_noise_multiplier", "must be a number above 0"),
        ({"delta": 1}, "delta", "delta must be a number between 0 and 1 (both excluded); got 1"),
        ({"delta": 0.0}, "delta", "delta must be a number between 0 and 1 (both excluded); got 0.0"),
        ({"delta": None}, "delta", "got None"),
        ([1.1], "privacy", "the privacy requirement must be an object"),
    ],
)
def test_a_bad_requirement_is_refused_naming_the_key(doc: Any, key: str, words: str) -> None:
    with pytest.raises(PrivacyError) as caught:
        validate_privacy(doc)
    assert list(caught.value.errors) == [key]
    assert words in caught.value.errors[key][0] and words in caught.value.message
    assert caught.value.message.startswith("invalid privacy requirement: ")


def test_the_api_sets_the_requirement_and_refuses_a_bad_one_keeping_what_is_stored(
    users: dict[str, Any], breast_cancer_contract: dict[str, Any]
) -> None:
    api = _api(users["owner"])
    body = {"title": "Private", "contract": breast_cancer_contract, "app_template": "tabular"}
    created = api.post("/api/v1/problems/", {**body, "privacy": REQUIREMENT}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["privacy"] == REQUIREMENT
    pk = created.json()["id"]
    assert api.get(f"/api/v1/problems/{pk}/").json()["privacy"] == REQUIREMENT

    refused = api.post("/api/v1/problems/", {**body, "privacy": {"delta": 2, "noise": 1}}, format="json")
    assert refused.status_code == 400
    errors = refused.json()["privacy"]
    assert errors["delta"] == ["delta must be a number between 0 and 1 (both excluded); got 2"]
    assert "unknown setting 'noise'" in errors["noise"][0]
    assert Problem.objects.count() == 1

    # A draft's requirement may change; a bad change leaves everything as it was.
    bad = api.patch(f"/api/v1/problems/{pk}/", {"title": "Renamed", "privacy": {"clipping_norm": -1}}, format="json")
    assert bad.status_code == 400 and "clipping_norm must be a number above 0" in bad.json()["detail"]
    problem = Problem.objects.get(pk=pk)
    assert problem.title == "Private" and problem.privacy == REQUIREMENT
    changed = api.patch(f"/api/v1/problems/{pk}/", {"privacy": {"delta": 1e-6}}, format="json")
    assert changed.status_code == 200 and changed.json()["privacy"] == {"delta": 1e-6}
    # Multipart, as with a FAB upload: JSON text.
    form = api.patch(f"/api/v1/problems/{pk}/", {"privacy": json.dumps(REQUIREMENT)}, format="multipart")
    assert form.status_code == 200 and form.json()["privacy"] == REQUIREMENT
    assert api.patch(f"/api/v1/problems/{pk}/", {"privacy": {}}, format="json").json()["privacy"] == {}


def test_a_published_problems_requirement_is_fixed(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"], privacy=REQUIREMENT)
    api = _api(users["owner"])
    refused = api.patch(f"/api/v1/problems/{problem.pk}/", {"privacy": {"min_noise_multiplier": 0.5}}, format="json")
    assert refused.status_code == 409
    assert "cannot change once the problem is published" in refused.json()["detail"]
    assert "cannot change once the problem is published" in refused.json()["privacy"]["privacy"][0]
    problem.refresh_from_db()
    assert problem.privacy == REQUIREMENT
    # Sending it unchanged (with other edits) is no change.
    same = api.patch(f"/api/v1/problems/{problem.pk}/", {"title": "Renamed", "privacy": REQUIREMENT}, format="json")
    assert same.status_code == 200 and same.json()["title"] == "Renamed"


def _editor(**privacy: str) -> dict[str, Any]:
    from tests.web.test_problems import editor_data

    return editor_data(**{f"pv-{key}": value for key, value in privacy.items()})


def test_the_form_sets_the_requirement_and_names_a_bad_value(users: dict[str, Any]) -> None:
    browser = _client(users["owner"])
    bad = browser.post(reverse("problem-create"), _editor(min_noise_multiplier="0", delta="1.5"))
    assert bad.status_code == 400 and not Problem.objects.exists()
    page = _text(bad)
    assert "min_noise_multiplier must be a number above 0; got 0.0" in page
    assert "delta must be a number between 0 and 1 (both excluded); got 1.5" in page
    assert "Enter a number." in _text(browser.post(reverse("problem-create"), _editor(clipping_norm="nan")))

    saved = browser.post(reverse("problem-create"), _editor(min_noise_multiplier="1.1", clipping_norm="1", delta=""))
    assert saved.status_code == 302
    problem = Problem.objects.get()
    assert problem.privacy == {"min_noise_multiplier": 1.1, "clipping_norm": 1.0}
    detail = _text(browser.get(reverse("problem-detail", args=[problem.pk])))
    assert "Sites must add Gaussian noise with multiplier ≥ 1.1" in detail
    assert 'value="1.1"' in _text(browser.get(reverse("problem-edit", args=[problem.pk])))


def test_the_form_shows_a_published_requirement_read_only_and_keeps_it(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"], privacy=REQUIREMENT)
    browser = _client(users["owner"])
    edit = _text(browser.get(reverse("problem-edit", args=[problem.pk])))
    assert "Fixed since the problem was published" in edit and "disabled" in edit
    data = _editor(min_noise_multiplier="0.1")
    data.update({"p-app_source": "keep", "ct-contract_json": json.dumps(problem.contract), "p-title": "Renamed"})
    data = {k: v for k, v in data.items() if not k.startswith("fields-") or k.endswith("_FORMS")}
    data["fields-TOTAL_FORMS"] = "0"
    response = browser.post(reverse("problem-edit", args=[problem.pk]), data)
    assert response.status_code == 302, _text(response)
    problem.refresh_from_db()
    assert problem.title == "Renamed" and problem.privacy == REQUIREMENT


def test_without_a_requirement_the_problem_page_says_each_site_decides(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    assert "No privacy requirement: each site decides." in _text(
        client.get(reverse("problem-detail", args=[problem.pk]))
    )


# ----------------------------------------------------------------------------- join bundles and the join page


def _approved(problem: Problem, user: Any, site: str) -> Participant:
    row = participation.participant_request(problem=problem, user=user, site_name=site, contact_email="x@example.org")
    return participation.participant_approve(participant=row, by=problem.owner)


def _bundle(user: Any, participant: Participant) -> dict[str, Any]:
    response = _client(user).post(reverse("participant-bundle", args=[participant.pk]))
    assert response.status_code == 200
    return dict(json.loads(response.content))


def test_the_bundle_carries_the_requirement_only_when_there_is_one(
    settings: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    settings.FEDOTA_CLIENT_IMAGE = "fedota/client:test"
    plain = make_problem(users["owner"], title="Plain")
    private = make_problem(users["owner"], title="Private", privacy=REQUIREMENT)
    assert "privacy" not in _bundle(users["holder"], _approved(plain, users["holder"], "St Elsewhere"))
    holder = _approved(private, users["holder"], "St Elsewhere")
    assert _bundle(users["holder"], holder)["privacy"] == REQUIREMENT

    page = _text(_client(users["holder"]).get(reverse("problem-detail", args=[private.pk])))
    bundle = f"fedota-join-{private.pk}.json"
    # The plain line as it always was, and a second one with a budget and the ledger's folder.
    assert (
        f"docker run --rm -v /path/to/your/data:/data:ro -v /path/to/{bundle}:/join.json:ro fedota/client:test<" in page
    )
    assert (
        f'docker run --rm --user "$(id -u):$(id -g)" -v /path/to/your/data:/data:ro -v /path/to/{bundle}:/join.json:ro '
        "-v /path/on/your/machine/fedota-privacy:/state fedota/client:test --dp-epsilon 8 --dp-delta 1e-5"
    ) in page
    assert "FEDOTA_DP_EPSILON" in page and "--dp-noise-multiplier" in page and "--dp-rounds" in page
    assert "counts across every round and every run of this problem" in page
    assert "refuses to start with a budget if <code>/state</code> is not mounted" in page
    assert "sees only that your site stopped for budget and the ε it reports" in page
    assert "Sites must add Gaussian noise with multiplier ≥ 1.1" in page

    join = _text(_client(users["participant"]).get(reverse("participant-request", args=[private.pk])))
    assert "Sites must add Gaussian noise" in join and "--dp-epsilon" in join


# ----------------------------------------------------------------------------- site_privacy events


@pytest.fixture
def problem(users: dict[str, Any], make_problem: Callable[..., Any]) -> Problem:
    return make_problem(users["owner"], title="Heart disease", privacy={"min_noise_multiplier": 1.1})


@pytest.fixture
def run(problem: Problem) -> Run:
    return Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )


@pytest.fixture
def sites(problem: Problem, users: dict[str, Any]) -> list[Participant]:
    return [_approved(problem, users["holder"], "St Elsewhere"), _approved(problem, users["participant"], "General")]


def _report(who: Participant | None = None, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "ts": time.time(),
        "kind": "site_privacy",
        "node_id": 4_611_686_018_427_387_904,
        "participant": str(who.pk) if who is not None else "",
        "site": who.site_name if who is not None else "site 7",
        "state": "active",
        "epsilon": 2.5,
        "delta": 1e-5,
        "epsilon_cap": 8.0,
        "noise_multiplier": 1.1,
        "clipping_norm": 1.0,
        "releases": 3,
        "run_releases": 3,
        "round": 3,
        "reason": "",
    }
    event.update(changes)
    return event


def _send(run: Run, *events: dict[str, Any]) -> Any:
    return Client().post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps(list(events)),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )


def test_a_report_is_stored_under_its_participant_and_a_retry_is_not_stored_twice(
    run: Run, sites: list[Participant]
) -> None:
    hospital = sites[0]
    event = _report(hospital, epsilon_cap=None, round=None)
    assert _send(run, event).status_code == 200
    assert _send(run, event).status_code == 200  # the coordinator retries until answered
    row = PrivacyReport.objects.get()
    assert row.participant == hospital and row.site_name == "St Elsewhere" and row.node_id == event["node_id"]
    assert (row.epsilon, row.delta, row.epsilon_cap, row.round) == (2.5, 1e-5, None, None)
    assert (row.noise_multiplier, row.clipping_norm, row.releases, row.run_releases) == (1.1, 1.0, 3, 3)

    # Unknown or empty participants are kept under the site name the coordinator gave.
    assert _send(run, _report(None), _report(None, participant="999999", site="Clinic")).status_code == 200
    unknown = PrivacyReport.objects.filter(participant=None).order_by("pk")
    assert [r.site_name for r in unknown] == ["site 7", "Clinic"]


@pytest.mark.parametrize(
    ("changes", "field", "why"),
    [
        ({"state": "paused"}, "state", "must be one of active, exhausted"),
        ({"state": None}, "state", "must be one of active, exhausted"),
        ({"epsilon": "2.5"}, "epsilon", "must be a number"),
        ({"epsilon": None}, "epsilon", "must be a number"),
        ({"epsilon": -0.1}, "epsilon", "must be a number ≥ 0"),
        ({"delta": 1.0}, "delta", "must be a number ≥ 0 and < 1"),
        ({"epsilon_cap": True}, "epsilon_cap", "must be a number"),
        ({"noise_multiplier": None}, "noise_multiplier", "must be a number"),
        ({"clipping_norm": -1}, "clipping_norm", "must be a number ≥ 0"),
        ({"releases": 1.5}, "releases", "must be a whole number ≥ 0"),
        ({"run_releases": 4}, "run_releases", "cannot exceed releases (3)"),
        ({"round": -1}, "round", "must be a whole number ≥ 0"),
        ({"node_id": None}, "node_id", "must be a whole number ≥ 0"),
        ({"node_id": 1 << 63}, "node_id", "must be a whole number ≤"),
        ({"site": 7}, "site", "must be a string"),
        ({"reason": "no\x00pe"}, "reason", "must not hold a NUL character"),
    ],
)
def test_a_report_with_a_bad_field_is_refused_with_the_reason(
    run: Run, sites: list[Participant], changes: dict[str, Any], field: str, why: str
) -> None:
    good = _report(sites[0])
    response = _send(run, good, _report(sites[0], **changes))
    assert response.status_code == 400
    assert response.json()["field"] == f"events[1].{field}" and why in response.json()["detail"]
    assert not PrivacyReport.objects.exists()  # all or nothing: the good one is not stored either


def test_reports_are_append_only_and_both_sides_see_the_latest(
    run: Run, sites: list[Participant], users: dict[str, Any]
) -> None:
    hospital, general = sites
    assert _send(run, _report(hospital, epsilon=2.5, releases=3, run_releases=3, round=3)).status_code == 200
    assert _send(run, _report(general, epsilon=1.0, epsilon_cap=None, releases=1, run_releases=1)).status_code == 200
    stopped = _report(
        hospital,
        state="exhausted",
        epsilon=7.9,
        releases=9,
        run_releases=5,
        round=5,
        reason="the next round would spend ε 8.31 > cap 8.0",
    )
    assert _send(run, stopped).status_code == 200
    assert PrivacyReport.objects.filter(participant=hospital).count() == 2  # history kept

    owner = _client(users["owner"])
    data = owner.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()
    by_site = {r["site"]: r for r in data["privacy"]}
    assert [r["site"] for r in data["privacy"]] == ["St Elsewhere", "General"]  # stopped for budget first
    assert by_site["St Elsewhere"]["state"] == "exhausted" and by_site["St Elsewhere"]["epsilon"] == 7.9
    assert by_site["St Elsewhere"]["state_label"] == "stopped for budget"
    assert by_site["St Elsewhere"]["reason"] == "the next round would spend ε 8.31 > cap 8.0"
    assert (by_site["St Elsewhere"]["releases"], by_site["St Elsewhere"]["run_releases"]) == (9, 5)
    assert by_site["General"]["epsilon_cap"] is None and by_site["General"]["self_reported"] is True
    assert data["privacy_summary"]["exhausted"] == 1 and data["privacy_summary"]["total"] == 2
    assert data["privacy_summary"]["requirement"] == {"min_noise_multiplier": 1.1}
    flags = {p["site"]: p["stopped_for_budget"] for p in data["participants"]}
    assert flags == {"St Elsewhere": True, "General": False}

    page = _text(owner.get(reverse("problem-dashboard", args=[run.problem_id])))
    assert "self-reported by the site" in page
    assert 'stopped for budget</span> <span class="muted">the next round would spend ε 8.31 > cap 8.0' in page
    assert "<td>7.9</td>" in page and "<td>5 / 9</td>" in page and "Sites must add Gaussian noise" in page

    # Another setter sees nothing of it.
    assert _client(users["other_setter"]).get(f"/api/v1/problems/{run.problem_id}/dashboard/").status_code == 403


def test_a_run_without_reports_says_so_and_why_under_a_requirement(
    run: Run, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    owner = _client(users["owner"])
    page = _text(owner.get(reverse("problem-dashboard", args=[run.problem_id])))
    assert "No site reported a privacy budget in this run. This problem requires noise of every site" in page
    assert owner.get(f"/api/v1/problems/{run.problem_id}/dashboard/").json()["privacy"] == []
    plain = make_problem(users["owner"], title="Plain")
    Run.objects.create(problem=plain, number=1, fab_sha256=plain.fab_sha256)
    page = _text(owner.get(reverse("problem-dashboard", args=[plain.pk])))
    assert "No site reported a privacy budget in this run." in page and "older client" not in page


def test_a_data_holder_sees_only_their_own_sites_reports(
    run: Run, sites: list[Participant], users: dict[str, Any]
) -> None:
    hospital, general = sites
    second = Run.objects.create(problem=run.problem, number=2, fab_sha256=run.fab_sha256)
    _send(run, _report(hospital, epsilon=2.5, reason=""))
    _send(run, _report(general, epsilon=6.25, epsilon_cap=None))
    # Filed under the holder's site name but not attributed to them: not shown to them.
    _send(run, _report(None, site="St Elsewhere", epsilon=4.75))
    PrivacyReport.objects.create(
        run=second,
        participant=hospital,
        site_name=hospital.site_name,
        event_id="later",
        node_id=1,
        state="exhausted",
        epsilon=7.5,
        delta=1e-5,
        epsilon_cap=8.0,
        noise_multiplier=1.1,
        clipping_norm=1.0,
        releases=6,
        run_releases=3,
        reason="the next round would spend ε 8.31 > cap 8.0",
        reported_at=run.created_at,
    )

    page = _text(_client(users["holder"]).get(reverse("my-participations")))
    assert "run 2: ε 7.5 of 8 at δ 1e-5" in page and "stopped for budget" in page
    assert "run 1: ε 2.5 of 8" in page and "3 releases (3 in this run)" in page
    assert "6.25" not in page and "4.75" not in page
    other = _text(_client(users["participant"]).get(reverse("my-participations")))
    assert "6.25" in other and "(no cap of yours)" in other and "7.5" not in other and "2.5" not in other

    mine = _api(users["holder"]).get("/api/v1/me/participations/").json()
    rows = mine["results"] if isinstance(mine, dict) else mine
    assert [(p["run"], p["epsilon"]) for p in rows[0]["privacy"]] == [(2, 7.5), (1, 2.5)]


# ----------------------------------------------------------------------------- provenance


def test_the_manifest_has_the_requirement_and_each_sites_spending_as_of_the_model(
    run: Run, sites: list[Participant], users: dict[str, Any]
) -> None:
    hospital, general = sites
    _send(run, _report(hospital, epsilon=1.0, round=1), _report(general, epsilon=0.5, round=1))
    _send(run, _report(hospital, epsilon=2.0, round=2, releases=2, run_releases=2))
    _send(run, _report(general, state="exhausted", epsilon=3.0, round=3, reason="cap"))
    headers = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", "content_type": "application/octet-stream"}
    internal = Client()
    for number in (1, 0):
        url = f"/internal/v1/runs/{run.pk}/checkpoints/{number}/npz"
        assert internal.put(url, data=f"model {number}".encode(), **headers).status_code == 201

    owner = _client(users["owner"])
    ca = provenance.trusted_ca(ca_certificate(run.problem_id).encode())

    def manifest(number: int) -> dict[str, Any]:
        response: Any = owner.get(f"/monitoring/runs/{run.pk}/checkpoints/{number}.npz.manifest.json")
        assert response.status_code == 200
        body = response.content
        assert b"St Elsewhere" not in body and b"General" not in body
        verified = provenance.verify_document(body, io.BytesIO(f"model {number}".encode()), ca=ca)
        return dict(verified.manifest["privacy"])

    round_one = manifest(1)
    assert round_one["settings"]["requirement"] == {"min_noise_multiplier": 1.1}
    assert round_one["settings"]["requirement_text"].startswith("Sites must add Gaussian noise with multiplier ≥ 1.1")
    assert round_one["self_reported"] is True and "SELF-REPORTED" in round_one["note"]
    assert sorted(b["epsilon"] for b in round_one["budgets_spent"].values()) == [0.5, 1.0]

    final = manifest(0)["budgets_spent"]
    assert all(name.startswith("site-") and len(name) == 21 for name in final)
    assert sorted((b["epsilon"], b["state"]) for b in final.values()) == [(2.0, "active"), (3.0, "exhausted")]
    assert set(final) == set(round_one["budgets_spent"])  # the same pseudonyms as in every manifest of the problem
    one = next(b for b in final.values() if b["state"] == "active")
    assert one == {
        "epsilon": 2.0,
        "delta": 1e-5,
        "epsilon_cap": 8.0,
        "noise_multiplier": 1.1,
        "clipping_norm": 1.0,
        "releases": 2,
        "run_releases": 2,
        "round": 2,
        "state": "active",
    }


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_live_dashboard_redraws_the_privacy_section_when_a_site_stops_for_budget(
    live_server: Any, browser: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    """What dashboard.js draws on a poll after the page was rendered, in headless Chromium."""
    from urllib.parse import urlsplit

    from django.conf import settings

    problem = make_problem(users["owner"], title="Heart disease", privacy={"min_noise_multiplier": 1.1})
    run = Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )
    hospital = _approved(problem, users["holder"], "St Elsewhere")
    assert _send(run, _report(hospital, epsilon=2.5)).status_code == 200
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
        tab.goto(f"{live_server.url}/monitoring/problems/{problem.pk}/")
        tab.wait_for_selector("#privacy-body tr[data-site-state='active']")
        stopped = _report(hospital, state="exhausted", epsilon=7.9, reason="the next round would spend ε 8.31 > cap 8")
        assert _send(run, stopped).status_code == 200
        tab.wait_for_selector("#privacy-body tr[data-site-state='exhausted']", timeout=15_000)
        row = tab.locator("#privacy-body tr").first.inner_text()
        assert "St Elsewhere" in row and "7.9" in row and "1e-5" in row and "stopped for budget" in row
        assert "the next round would spend ε 8.31 > cap 8" in row
        assert "1 site stopped for budget." in tab.locator("#privacy-summary").inner_text()
        assert "stopped for budget" in tab.locator("#participants-body").inner_text()
        assert errors == []
    finally:
        context.close()
