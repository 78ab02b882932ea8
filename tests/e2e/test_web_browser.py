"""The website end to end in real headless Chromium, the way people use it.

A problem setter signs up (activation e-mail), creates a problem on the
built-in tabular app with the breast-cancer contract, and publishes it: the
publish task starts a real coordinator and selector as processes. A data
holder signs up, asks to join; the setter approves; the holder downloads the
join bundle. Two hospital clients (this holder's and one more) run
`fedota-client` with their bundles; the setter's dashboard fills its round
table and charts without a reload. Screenshots of the dashboard and the
problem page are saved under test-artifacts/, and of the API docs, which must
render with every host but the site itself unreachable (as on an air-gapped install).

Celery runs tasks eagerly here (a real worker is tested in
tests/integration/test_celery_worker.py); everything else is real: the live
server, the coordinator's reports over HTTP, gRPC between processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
PASSWORD = "a long and unusual passphrase 7"

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture
def site(settings: Any, process_site: str) -> str:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return process_site


def _activation_link(username: str) -> str:
    from django.core import mail

    for message in reversed(mail.outbox):
        if username in message.body or any(username in to for to in message.to):
            match = re.search(r"https?://\S+/accounts/activate/\S+/", message.body)
            if match:
                return match.group(0)
    raise AssertionError(f"no activation e-mail for {username}: {[m.subject for m in mail.outbox]}")


def _sign_up(page: Any, base: str, username: str, role: str, organisation: str) -> None:
    page.goto(f"{base}/accounts/signup/")
    page.fill("input[name=username]", username)
    page.fill("input[name=email]", f"{username}@example.org")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password_confirm]", PASSWORD)
    page.check(f"input[name=role][value={role}]")
    page.fill("input[name=organisation]", organisation)
    page.click("main form button[type=submit]")
    page.wait_for_url(re.compile(r".*/signup/done/"))
    page.goto(_activation_link(username))
    assert username in page.content()  # activated and logged in


def _second_hospital(problem_id: int) -> dict[str, Any]:
    """Another data holder who joined through the services (the browser covers the pages once)."""
    from django.contrib.auth import get_user_model

    from webserver.accounts.models import Profile
    from webserver.participation.services import participant_approve, participant_issue_bundle, participant_request
    from webserver.problems.models import Problem

    problem = Problem.objects.get(pk=problem_id)
    user = get_user_model().objects.create_user(username="general", email="g@example.org", password=PASSWORD)
    Profile.objects.create(user=user, role="holder", organisation="General Hospital", email_verified=True)
    participant = participant_request(
        problem=problem, user=user, site_name="General Hospital", contact_email="g@example.org"
    )
    participant_approve(participant=participant, by=problem.owner)
    return participant_issue_bundle(participant=participant, by=user)


def _client(bundle: Path, data: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "client_image", "--join-bundle", str(bundle), "--data-path", str(data)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.django_db(transaction=True)
def test_setter_and_hospitals_train_a_problem_from_the_browser(
    site: str, browser: Any, tmp_path: Path, demo: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    contract = (demo / "breast_cancer" / "contract.json").read_text()

    # ---- the problem setter ---------------------------------------------------------------
    setter_ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    setter = setter_ctx.new_page()
    _sign_up(setter, site, "ada", "setter", "Oncology Lab")
    setter.goto(f"{site}/problems/new/")
    setter.fill("input[name=p-title]", "Breast cancer across hospitals")
    setter.fill("textarea[name=p-description]", "Tell **malignant** from benign.")
    setter.check("input[name=p-app_source][value=template]")
    setter.select_option("select[name=p-app_template]", "tabular")
    setter.click("summary:has-text('Import from JSON')")
    setter.fill("textarea[name=ct-contract_json]", contract)
    setter.fill("input[name=rc-rounds]", "3")
    setter.fill("input[name=rc-clients_per_round]", "0")
    setter.fill("input[name=rc-min_clients]", "2")
    setter.fill("input[name=rc-round_timeout]", "120")
    setter.fill("input[name=rc-num_selectors]", "1")
    setter.click("button[name=save]")
    setter.wait_for_url(re.compile(r".*/problems/\d+/$"))
    problem_id = int(re.search(r"/problems/(\d+)/$", setter.url).group(1))  # type: ignore[union-attr]
    assert "Draft" in setter.content()
    setter.click("text=Publish and start a run")
    setter.wait_for_load_state()
    from webserver.problems.models import Run

    run = Run.objects.get(problem_id=problem_id)
    assert run.status == "running", run.status_detail

    # ---- a data holder asks to join, the setter approves, the holder takes the bundle -------
    holder_ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    holder = holder_ctx.new_page()
    _sign_up(holder, site, "stelsewhere", "holder", "St Elsewhere")
    holder.goto(f"{site}/problems/{problem_id}/")
    holder.click("text=Ask to join")
    holder.click("main button:has-text('Ask to join')")
    holder.wait_for_url(re.compile(rf".*/problems/{problem_id}/(#participation)?$"))
    setter.goto(f"{site}/problems/{problem_id}/")
    setter.click("button:has-text('Approve')")
    setter.wait_for_load_state()
    holder.goto(f"{site}/problems/{problem_id}/")
    assert ":/data:ro" in holder.content()  # the docker run line to copy
    with holder.expect_download() as download:
        holder.click("text=Download join bundle")
    bundle_path = tmp_path / "stelsewhere.json"
    download.value.save_as(bundle_path)
    bundle = json.loads(bundle_path.read_text())
    assert bundle["problem_id"] == problem_id and bundle["credential"].startswith("fdp_")

    other = tmp_path / "general.json"
    other.write_text(json.dumps(_second_hospital(problem_id)))

    # ---- the hospitals train; the setter watches the dashboard update live --------------------
    setter.goto(f"{site}/monitoring/problems/{problem_id}/")
    hospitals = demo / "breast_cancer" / "clients"
    clients = [
        _client(bundle_path, hospitals / "hospital_0", tmp_path / "client0.log"),
        _client(other, hospitals / "hospital_1", tmp_path / "client1.log"),
    ]
    try:
        setter.wait_for_function(
            "document.querySelectorAll('#rounds-body tr td').length > 0 && "
            "document.querySelector('#rounds-body').innerText.includes('3')",
            timeout=240_000,
        )
        setter.wait_for_function(
            "document.querySelector('#run-status').innerText.toLowerCase().includes('finished')", timeout=120_000
        )
        setter.wait_for_timeout(2500)  # one more poll, so the charts show the last round
        setter.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert setter.locator(f"[data-run-badge='{run.number}']").inner_text() == "Finished"
        rows = setter.locator("#rounds-body tr").count()
        assert rows == 3, setter.locator("#rounds-body").inner_text()
        assert setter.locator("#chart-acc svg path").count() > 0
        assert setter.locator("#chart-loss svg path").count() > 0
        setter.goto(f"{site}/problems/{problem_id}/")
        setter.screenshot(path=str(ARTIFACTS / "problem.png"), full_page=True)
        # The final model downloads as a PyTorch state_dict.
        response = setter_ctx.request.get(f"{site}/monitoring/runs/{run.pk}/checkpoints/0.pt")
        assert response.status == 200 and len(response.body()) > 1000
        holder.goto(f"{site}/participation/mine/")
        assert "rounds 1–3" in holder.content() or "1–3" in holder.content()
    except Exception:
        for i in range(2):
            print(f"--- client {i}\n" + (tmp_path / f"client{i}.log").read_text()[-3000:])
        raise
    finally:
        for proc in clients:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.mark.django_db(transaction=True)
def test_api_docs_render_with_no_internet(live_server: Any, browser: Any) -> None:
    """Swagger UI comes from the site itself: with every other host blocked, it lists the operations."""
    ARTIFACTS.mkdir(exist_ok=True)
    site = urlsplit(live_server.url).netloc
    blocked: list[str] = []

    def only_the_site(route: Any) -> None:
        if urlsplit(route.request.url).netloc == site:
            route.continue_()
        else:  # what a CDN does for an air-gapped install
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", only_the_site)
    page = context.new_page()
    page.goto(f"{live_server.url}/api/docs/")
    problems = page.locator(".opblock:has([data-path='/api/v1/problems/'])").first
    problems.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)
    assert blocked == []
    assert page.locator(".opblock").count() > 20
    assert "Fedota API" in page.locator(".info .title").inner_text()
    # An operation opens and shows its parameters, so the UI's code runs, not just its HTML.
    problems.locator(".opblock-summary").click()
    page.locator(".opblock.is-open .parameters-container").first.wait_for()
    context.close()
