"""The problem page and API say, before a run starts, what a coordinator restart does to the app (issue 15 part 2)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from fedota_common.fab import load_app
from webserver.problems.models import Problem

pytestmark = [pytest.mark.web, pytest.mark.django_db]

REPO = Path(__file__).resolve().parents[2]


def upload(users: dict[str, Any], contract: dict[str, Any], content: bytes, name: str) -> Problem:
    """A draft problem whose app is `content`, uploaded over the API as a setter does."""
    api = APIClient()
    api.force_authenticate(users["owner"])
    payload = {"title": name, "contract": json.dumps(contract), "fab": SimpleUploadedFile(name, content)}
    response = api.post("/api/v1/problems/", payload, format="multipart")
    assert response.status_code == 201, response.content
    return Problem.objects.get(pk=response.json()["id"])


def resumability_of(client: Client, problem: Problem) -> tuple[str, str]:
    """What the problem page says under Runs: its data-resumes value and its text."""
    page = client.get(reverse("problem-detail", args=[problem.pk])).content.decode()
    start = page.index('<p id="resumability"')
    paragraph = page[start : page.index("</p>", start)]
    value = paragraph.split('data-resumes="', 1)[1].split('"', 1)[0]
    text = paragraph.split(">", 1)[1].replace("<strong>", "").replace("</strong>", "")
    return value, text


def test_a_built_in_app_is_said_to_resume_before_any_run(
    client: Client, users: dict[str, Any], make_problem: Any
) -> None:
    # make_problem stores the row directly, as problems stored before this page said anything were;
    # the page is seen by anyone, signed in or not.
    problem = make_problem(users["owner"])
    assert not problem.runs.exists()
    value, text = resumability_of(client, problem)
    assert value == "true"
    assert text.startswith("If the coordinator restarts, this app resumes from its last checkpoint (Flower&#x27;s ")
    assert "FedAvg" in text and "via Strategy.start" in text


@pytest.mark.parametrize(
    ("folder", "says"),
    [
        (
            "tests/apps/compat_numpy",
            "it uses the compatibility API (ServerApp(server_fn=...)), which Fedota cannot resume",
        ),
        (
            "tests/apps/protocol",
            "it drives the Grid itself (grid.pull_messages, grid.push_messages, grid.send_and_receive)",
        ),
        ("tests/apps/secagg", "SecAggPlusWorkflow"),
    ],
)
def test_an_uploaded_app_that_cannot_resume_says_it_starts_again_at_round_1(
    client: Client, users: dict[str, Any], breast_cancer_contract: dict[str, Any], folder: str, says: str
) -> None:
    problem = upload(users, breast_cancer_contract, load_app(REPO / folder).content, "mine.fab")
    client.force_login(users["owner"])  # the setter, looking at the draft before publishing it
    value, text = resumability_of(client, problem)
    assert value == "false"
    assert text.startswith("If the coordinator restarts, this app starts again at round 1 as a new attempt: ")
    assert says in text
    assert "docs/architecture.md" in text


def test_an_app_whose_server_module_does_not_parse_says_fedota_cannot_tell_and_why(
    client: Client, users: dict[str, Any], breast_cancer_contract: dict[str, Any]
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            "pyproject.toml",
            '[project]\nname = "broken"\nversion = "1.0.0"\n\n[tool.flwr.app.components]\n'
            'serverapp = "broken.server_app:app"\nclientapp = "broken.client_app:app"\n',
        )
        zf.writestr("broken/__init__.py", "")
        zf.writestr("broken/server_app.py", "from flwr.serverapp import ServerApp\napp = ServerApp(\n")
        zf.writestr("broken/client_app.py", "")
    problem = upload(users, breast_cancer_contract, buf.getvalue(), "broken.fab")
    client.force_login(users["owner"])
    value, text = resumability_of(client, problem)
    assert value == "unknown"
    assert text.startswith("Fedota cannot tell whether this app resumes if the coordinator restarts: ")
    assert "broken/server_app.py cannot be parsed (line " in text


def test_the_api_says_it_read_only(users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    api = APIClient()
    api.force_authenticate(users["owner"])
    data = api.get(f"/api/v1/problems/{problem.pk}/").json()["resumability"]
    assert data["resumes"] is True and "via Strategy.start" in data["reason"]
    assert data["sentence"].startswith("If the coordinator restarts, this app resumes from its last checkpoint")
    listed = api.get("/api/v1/problems/").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert rows[0]["resumability"] == data
    response = api.patch(
        f"/api/v1/problems/{problem.pk}/", {"resumability": {"resumes": False}, "title": "Renamed"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["title"] == "Renamed" and response.json()["resumability"] == data


def test_an_unreadable_stored_app_gives_null_in_the_api_and_no_sentence(
    client: Client, users: dict[str, Any], make_problem: Any
) -> None:
    problem = make_problem(users["owner"])
    Path(problem.fab.path).unlink()
    # A hash no earlier test read: what was read once per app version is kept (fabs.py).
    Problem.objects.filter(pk=problem.pk).update(fab_sha256="0" * 64)
    api = APIClient()
    api.force_authenticate(users["owner"])
    assert api.get(f"/api/v1/problems/{problem.pk}/").json()["resumability"] is None
    page = client.get(reverse("problem-detail", args=[problem.pk])).content.decode()
    assert 'id="resumability"' not in page and "The app cannot be read" in page
