"""The problems REST API: visibility, create by template or upload, edit, publish/stop, app files, runs."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from webserver.problems.models import Problem, ProblemState, Run, RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def as_user(api: APIClient, user: Any) -> APIClient:
    api.force_authenticate(user)
    return api


def body(default_contract: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "title": "Breast cancer",
        "contract": default_contract,
        "app_template": "tabular",
        "run_config": {"rounds": 3},
        **extra,
    }


def fab_files_on_disk(settings: Any) -> list[Path]:
    folder = Path(settings.MEDIA_ROOT) / "fabs"
    return sorted(folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- list and create


def test_list_shows_what_the_caller_may_see(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    make_problem(users["owner"], title="Public")
    make_problem(users["owner"], title="Draft", state=ProblemState.DRAFT)
    anonymous = api.get("/api/v1/problems/").json()
    assert [p["title"] for p in anonymous["results"]] == ["Public"]
    assert anonymous["count"] == 1
    mine = as_user(api, users["owner"]).get("/api/v1/problems/").json()
    assert sorted(p["title"] for p in mine["results"]) == ["Draft", "Public"]
    found = api.get("/api/v1/problems/", {"q": "dra"}).json()
    assert [p["title"] for p in found["results"]] == ["Draft"]


def test_setter_creates_with_a_template(
    api: APIClient, users: dict[str, Any], breast_cancer_contract: dict[str, Any], tabular_fab: bytes
) -> None:
    response = as_user(api, users["owner"]).post("/api/v1/problems/", body(breast_cancer_contract), format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["state"] == "draft" and data["owner"] == "owner" and data["app_version"] == 1
    assert data["fab_sha256"] == hashlib.sha256(tabular_fab).hexdigest()
    assert data["run_config"]["rounds"] == 3 and data["run_config"]["strategy"] == "FedAvg"
    assert data["join_policy"] == "approval" and data["active_run"] is None


def test_setter_uploads_a_fab_as_multipart(
    api: APIClient, users: dict[str, Any], breast_cancer_contract: dict[str, Any], tabular_fab: bytes
) -> None:
    payload = {
        "title": "Uploaded",
        "contract": json.dumps(breast_cancer_contract),
        "run_config": json.dumps({"rounds": 2, "strategy_params": {"proximal-mu": 0.3}, "strategy": "FedProx"}),
        "join_policy": "open",
        "fab": SimpleUploadedFile("mine.fab", tabular_fab),
    }
    response = as_user(api, users["owner"]).post("/api/v1/problems/", payload, format="multipart")
    assert response.status_code == 201, response.content
    problem = Problem.objects.get()
    assert problem.fab_name == "mine.fab" and problem.join_policy == "open"
    assert problem.run_config["strategy_params"] == {"proximal-mu": 0.3}


@pytest.mark.parametrize("who", ["holder", "admin"])
def test_only_setters_create(
    api: APIClient, users: dict[str, Any], breast_cancer_contract: dict[str, Any], who: str
) -> None:
    response = as_user(api, users[who]).post("/api/v1/problems/", body(breast_cancer_contract), format="json")
    assert response.status_code == 403 and "only problem setters" in response.json()["detail"]
    assert not Problem.objects.exists()


def test_anonymous_cannot_create(api: APIClient, users: dict[str, Any], breast_cancer_contract: dict[str, Any]) -> None:
    assert api.post("/api/v1/problems/", body(breast_cancer_contract), format="json").status_code in (401, 403)


@pytest.mark.parametrize(
    ("change", "key", "text"),
    [
        ({"title": ""}, "title", "blank"),
        ({"contract": {"kind": "tabular"}}, "contract", "schema"),
        ({"contract": {"kind": "video"}}, "contract", "unknown contract kind"),
        ({"app_template": "nope"}, "app_template", "there is no built-in app 'nope'"),
        ({"app_template": ""}, "app_template", "choose a built-in app or upload a FAB"),
        ({"join_policy": "whoever"}, "join_policy", "not a valid choice"),
    ],
)
def test_bad_input_names_the_field(
    api: APIClient,
    users: dict[str, Any],
    breast_cancer_contract: dict[str, Any],
    settings: Any,
    change: dict[str, Any],
    key: str,
    text: str,
) -> None:
    response = as_user(api, users["owner"]).post(
        "/api/v1/problems/", body(breast_cancer_contract, **change), format="json"
    )
    assert response.status_code == 400
    assert text in json.dumps(response.json()[key])
    assert not Problem.objects.exists() and fab_files_on_disk(settings) == []


def test_bad_run_config_lists_every_setting(
    api: APIClient, users: dict[str, Any], breast_cancer_contract: dict[str, Any]
) -> None:
    response = as_user(api, users["owner"]).post(
        "/api/v1/problems/",
        body(breast_cancer_contract, run_config={"rounds": -3, "num_selectors": 20, "app_config": {"magic": 1}}),
        format="json",
    )
    assert response.status_code == 400
    errors = response.json()["run_config"]
    assert errors["rounds"] == ["rounds must be a whole number between 1 and 10000; got -3"]
    assert "between 1 and 8" in errors["num_selectors"][0]
    assert "'magic' is not a key" in errors["app_config"][0]
    assert not Problem.objects.exists()


def test_bad_fab_upload_is_refused(
    api: APIClient, users: dict[str, Any], breast_cancer_contract: dict[str, Any], settings: Any
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.py", "x")
    payload = {
        "title": "Bad",
        "contract": json.dumps(breast_cancer_contract),
        "fab": SimpleUploadedFile("bad.fab", buf.getvalue()),
    }
    response = as_user(api, users["owner"]).post("/api/v1/problems/", payload, format="multipart")
    assert response.status_code == 400
    assert "points outside the app folder" in response.json()["fab"][0]
    assert not Problem.objects.exists() and fab_files_on_disk(settings) == []


# ----------------------------------------------------------------------------- retrieve, patch, delete


def test_drafts_are_hidden_from_others(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    draft = make_problem(users["owner"], state=ProblemState.DRAFT)
    for path in ("", "files/", "runs/", "files/pyproject.toml"):
        assert api.get(f"/api/v1/problems/{draft.pk}/{path}").status_code == 404
    as_user(api, users["other_setter"])
    assert api.get(f"/api/v1/problems/{draft.pk}/").status_code == 404
    assert api.post(f"/api/v1/problems/{draft.pk}/publish/").status_code == 404
    assert as_user(api, users["owner"]).get(f"/api/v1/problems/{draft.pk}/").json()["state"] == "draft"


def test_owner_patches_and_others_may_not(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    response = as_user(api, users["other_setter"]).patch(
        f"/api/v1/problems/{problem.pk}/", {"title": "Mine"}, format="json"
    )
    assert response.status_code == 403
    response = as_user(api, users["owner"]).patch(
        f"/api/v1/problems/{problem.pk}/", {"run_config": {"rounds": 8}, "join_policy": "open"}, format="json"
    )
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["run_config"]["rounds"] == 8 and data["join_policy"] == "open"
    assert data["title"] == "Breast cancer" and data["app_version"] == 1  # untouched


def test_patching_the_app_bumps_the_version(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    response = as_user(api, users["owner"]).patch(
        f"/api/v1/problems/{problem.pk}/", {"app_template": "image"}, format="json"
    )
    assert response.status_code == 200 and response.json()["app_version"] == 2


def test_delete_only_drafts(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    published = make_problem(users["owner"])
    draft = make_problem(users["owner"], state=ProblemState.DRAFT)
    as_user(api, users["owner"])
    response = api.delete(f"/api/v1/problems/{published.pk}/")
    assert response.status_code == 409 and "archive" in response.json()["detail"]
    assert api.delete(f"/api/v1/problems/{draft.pk}/").status_code == 204
    assert not Problem.objects.filter(pk=draft.pk).exists()


# ----------------------------------------------------------------------------- publish, stop, runs


def test_publish_then_stop(
    api: APIClient, users: dict[str, Any], make_problem: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webserver.problems import lifecycle

    problem = make_problem(users["owner"], state=ProblemState.DRAFT)
    as_user(api, users["owner"])
    response = api.post(f"/api/v1/problems/{problem.pk}/publish/")
    assert response.status_code == 201, response.content
    assert response.json()["number"] == 1 and response.json()["status"] == "queued"
    assert api.get(f"/api/v1/problems/{problem.pk}/").json()["state"] == "published"
    again = api.post(f"/api/v1/problems/{problem.pk}/publish/")
    assert again.status_code == 409 and "stop it before" in again.json()["detail"]

    stopped: list[int] = []
    monkeypatch.setattr(lifecycle, "run_stop", lambda *, problem, user: stopped.append(problem.pk))
    assert as_user(api, users["other_setter"]).post(f"/api/v1/problems/{problem.pk}/stop/").status_code == 403
    assert as_user(api, users["owner"]).post(f"/api/v1/problems/{problem.pk}/stop/").status_code == 202
    assert stopped == [problem.pk]


def test_stop_without_an_active_run_conflicts(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    response = as_user(api, users["owner"]).post(f"/api/v1/problems/{problem.pk}/stop/")
    assert response.status_code == 409 and response.json()["detail"] == "no run of this problem is active"


def test_runs_list_status_detail_and_rounds(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    Run.objects.create(problem=problem, number=1, status=RunStatus.FAILED, status_detail="coordinator exited (code 1)")
    Run.objects.create(problem=problem, number=2, status=RunStatus.RUNNING, current_round=2, total_rounds=5)
    runs = api.get(f"/api/v1/problems/{problem.pk}/runs/").json()
    assert [(r["number"], r["status"], r["current_round"], r["total_rounds"]) for r in runs] == [
        (2, "running", 2, 5),
        (1, "failed", 0, 0),
    ]
    assert runs[1]["status_detail"] == "coordinator exited (code 1)"
    assert api.get(f"/api/v1/problems/{problem.pk}/").json()["active_run"] == 2


# ----------------------------------------------------------------------------- app files and apps


def test_files_list_with_hashes_and_raw_text(
    api: APIClient, users: dict[str, Any], make_problem: Any, tabular_fab: bytes
) -> None:
    problem = make_problem(users["owner"])
    files = api.get(f"/api/v1/problems/{problem.pk}/files/").json()
    with zipfile.ZipFile(io.BytesIO(tabular_fab)) as zf:
        expected = {name: hashlib.sha256(zf.read(name)).hexdigest() for name in zf.namelist()}
    assert {f["path"]: f["sha256"] for f in files} == expected
    assert files[0]["path"] == "pyproject.toml"
    client_app = next(f for f in files if f["path"] == "fedota_tabular/client_app.py")
    response = api.get(client_app["url"])
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert hashlib.sha256(response.content).hexdigest() == client_app["sha256"]
    assert api.get(f"/api/v1/problems/{problem.pk}/files/nope.py").status_code == 404


def test_builtin_apps(api: APIClient, db: Any) -> None:
    apps = {a["name"]: a for a in api.get("/api/v1/apps/").json()}
    assert {"tabular", "image"} <= set(apps)
    assert apps["tabular"]["title"] == "fedota-tabular" and apps["tabular"]["description"]


def test_problems_api_is_in_the_schema(api: APIClient, db: Any) -> None:
    response = api.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    for path in (
        "/api/v1/problems/",
        "/api/v1/problems/{id}/",
        "/api/v1/problems/{id}/publish/",
        "/api/v1/problems/{id}/files/",
        "/api/v1/apps/",
    ):
        assert path.replace("{id}", "{pk}") in paths or path in paths
