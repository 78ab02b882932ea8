"""Hostile input to the REST API: every case is a 4xx that says what is wrong, and nothing is stored half-done.

Covers hostile FABs on create and on update, uploads and bodies over the size
limits, malformed data contracts, Markdown with scripts, and the server
errors the schemathesis run (test_api_fuzz.py) found, each as a regression.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory
from rest_framework.test import APIClient

from tests.unit.hostile_fabs import HOSTILE_FABS, lying_sizes
from webserver.problems.models import Problem, ProblemState

pytestmark = pytest.mark.django_db

# What the website adds to the checks every FAB gets (fedota_common.fab).
WEB_HOSTILE_FABS = {
    **HOSTILE_FABS,
    "empty file": (b"", "The submitted file is empty"),
    "entry that does not unpack": (lying_sizes(), "cannot be unpacked"),
}
SCRIPTED_MARKDOWN = "\n\n".join(
    [
        "Predict **malignant** tumours.",
        "<script>alert('script')</script>",
        '<img src="x.png" onerror="alert(\'onerror\')">',
        "[click me](javascript:alert('link'))",
        '<iframe src="https://evil.example/"></iframe>',
        "<style>body { display: none }</style>",
        '<a href="https://example.org/" onclick="alert(\'click\')">fine link</a>',
        "  indented: kept as written  ",
    ]
)


@pytest.fixture
def api(users: dict[str, Any]) -> APIClient:
    client = APIClient()
    client.force_authenticate(users["owner"])
    return client


def media_files(settings: Any) -> list[str]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def snapshot(problem: Problem) -> dict[str, Any]:
    """What a refused update must leave exactly as it was."""
    row = Problem.objects.get(pk=problem.pk)
    fields = ("title", "description", "contract", "app_template", "fab_name", "fab_sha256", "app_version", "run_config")
    state = {name: getattr(row, name) for name in fields}
    state["updated_at"] = row.updated_at
    with row.fab.open("rb") as fh:
        state["fab bytes"] = hashlib.sha256(fh.read()).hexdigest()
    return state


def create_multipart(api: APIClient, contract: dict[str, Any], **fields: Any) -> Any:
    payload = {"title": "Hostile", "contract": json.dumps(contract), **fields}
    return api.post("/api/v1/problems/", payload, format="multipart")


# ----------------------------------------------------------------------------- FABs


@pytest.mark.parametrize("case", sorted(WEB_HOSTILE_FABS))
def test_hostile_fab_upload_is_refused_and_nothing_is_stored(
    api: APIClient, breast_cancer_contract: dict[str, Any], settings: Any, case: str
) -> None:
    content, message = WEB_HOSTILE_FABS[case]
    response = create_multipart(api, breast_cancer_contract, fab=SimpleUploadedFile("bad.fab", content))
    assert response.status_code == 400, response.content
    assert message in response.json()["fab"][0]
    assert not Problem.objects.exists() and media_files(settings) == []


@pytest.mark.parametrize("case", sorted(WEB_HOSTILE_FABS))
def test_hostile_fab_update_is_refused_and_the_problem_is_unchanged(
    api: APIClient, users: dict[str, Any], make_problem: Any, settings: Any, case: str
) -> None:
    problem = make_problem(users["owner"])
    before, files_before = snapshot(problem), media_files(settings)
    content, message = WEB_HOSTILE_FABS[case]
    response = api.patch(
        f"/api/v1/problems/{problem.pk}/",
        {"title": "Changed too", "fab": SimpleUploadedFile("bad.fab", content)},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    assert message in response.json()["fab"][0]
    assert snapshot(problem) == before and media_files(settings) == files_before


def test_fab_over_the_size_limit_is_refused(
    api: APIClient, breast_cancer_contract: dict[str, Any], settings: Any, tabular_fab: bytes
) -> None:
    settings.FEDOTA_MAX_FAB_BYTES = 10_000
    response = create_multipart(api, breast_cancer_contract, fab=SimpleUploadedFile("big.fab", tabular_fab))
    assert response.status_code == 400
    assert response.json()["fab"] == [f"big.fab is {len(tabular_fab)} bytes; a FAB may be at most 10000 bytes"]
    assert not Problem.objects.exists() and media_files(settings) == []


def test_an_upload_over_the_limit_is_dropped_while_it_streams_in(
    api: APIClient, breast_cancer_contract: dict[str, Any], settings: Any, tabular_fab: bytes
) -> None:
    """Past FEDOTA_MAX_UPLOAD_BYTES the server keeps counting but stores nothing, and says how big it was."""
    settings.FEDOTA_MAX_UPLOAD_BYTES = settings.FEDOTA_MAX_FAB_BYTES = 10_000
    response = create_multipart(api, breast_cancer_contract, fab=SimpleUploadedFile("big.fab", tabular_fab))
    assert response.status_code == 400
    assert response.json()["fab"] == [f"big.fab is {len(tabular_fab)} bytes; a FAB may be at most 10000 bytes"]
    assert not Problem.objects.exists() and media_files(settings) == []


def test_the_upload_handler_keeps_nothing_past_the_limit(settings: Any) -> None:
    from webserver.uploads import OversizedUpload

    settings.FEDOTA_MAX_UPLOAD_BYTES = 1000
    files = {"small": SimpleUploadedFile("small.bin", b"s" * 1000), "big": SimpleUploadedFile("big.bin", b"b" * 5000)}
    request = RequestFactory().post("/", files)
    small, big = request.FILES["small"], request.FILES["big"]
    assert small.read() == b"s" * 1000
    assert isinstance(big, OversizedUpload) and big.size == 5000 and big.name == "big.bin"
    with pytest.raises(OSError, match="not kept"):
        big.read()


def test_a_json_body_over_the_limit_is_413_with_a_reason(
    api: APIClient, breast_cancer_contract: dict[str, Any], settings: Any
) -> None:
    body = {
        "title": "Big",
        "description": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
        "contract": breast_cancer_contract,
    }
    response = api.post("/api/v1/problems/", body, format="json")
    assert response.status_code == 413
    assert f"larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes" in response.json()["detail"]
    assert not Problem.objects.exists()


def test_an_upload_name_with_control_characters_is_cleaned(
    api: APIClient, breast_cancer_contract: dict[str, Any], tabular_fab: bytes
) -> None:
    response = create_multipart(api, breast_cancer_contract, fab=SimpleUploadedFile("my\x07app\x1b.fab", tabular_fab))
    assert response.status_code == 201, response.content
    assert Problem.objects.get().fab_name == "myapp.fab"


# ----------------------------------------------------------------------------- data contracts

BAD_CONTRACTS: dict[str, tuple[Any, str]] = {
    "a list": ([{"kind": "tabular"}], "must be a JSON object; got list"),
    "a string": ("tabular", "must be a JSON object; got str"),
    "a number": (3, "must be a JSON object; got int"),
    "unknown kind": ({"kind": "video"}, "unknown contract kind: got kind 'video'"),
    "schema of the wrong type": ({"kind": "tabular", "schema": []}, "'schema' must be an object with a 'fields' list"),
    "fields of the wrong type": (
        {"kind": "tabular", "schema": {"fields": "radius"}},
        "'schema.fields' must be a non-empty list",
    ),
    "a setting of the wrong type": (
        {"kind": "tabular", "schema": {"fields": [{"name": "a", "type": "integer"}]}, "min_rows": "ten"},
        "'min_rows' must be an integer >= 0, got 'ten'",
    ),
    "an unknown field type": (
        {"kind": "tabular", "schema": {"fields": [{"name": "a", "type": "complex"}]}},
        "unknown type 'complex'",
    ),
    "a label that is not a field": (
        {
            "kind": "tabular",
            "schema": {"fields": [{"name": "radius", "type": "number"}, {"name": "diagnosis"}]},
            "label": "outcome",
        },
        "label 'outcome' is not a field in schema.fields (fields: radius, diagnosis)",
    ),
    "a NUL character": (
        {"kind": "tabular", "schema": {"fields": [{"name": "rad\x00ius", "type": "number"}]}},
        "holds a NUL character",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTRACTS))
def test_malformed_contract_is_refused_on_create(api: APIClient, settings: Any, case: str) -> None:
    contract, message = BAD_CONTRACTS[case]
    body = {"title": "Bad contract", "contract": contract, "app_template": "tabular"}
    response = api.post("/api/v1/problems/", body, format="json")
    assert response.status_code == 400, response.content
    assert message in response.json()["contract"][0]
    assert not Problem.objects.exists() and media_files(settings) == []


@pytest.mark.parametrize("case", sorted(BAD_CONTRACTS))
def test_malformed_contract_is_refused_on_update(
    api: APIClient, users: dict[str, Any], make_problem: Any, case: str
) -> None:
    problem = make_problem(users["owner"], state=ProblemState.DRAFT)
    before = snapshot(problem)
    contract, message = BAD_CONTRACTS[case]
    response = api.patch(
        f"/api/v1/problems/{problem.pk}/", {"title": "Changed too", "contract": contract}, format="json"
    )
    assert response.status_code == 400, response.content
    assert message in response.json()["contract"][0]
    assert snapshot(problem) == before


def test_contract_that_is_not_json_is_refused(
    api: APIClient, breast_cancer_contract: dict[str, Any], tabular_fab: bytes
) -> None:
    payload = {"title": "Bad", "contract": '{"kind": "tabular", ', "fab": SimpleUploadedFile("a.fab", tabular_fab)}
    response = api.post("/api/v1/problems/", payload, format="multipart")
    assert response.status_code == 400
    assert response.json()["contract"] == ["Value must be valid JSON."]
    assert not Problem.objects.exists()


def test_a_nul_character_in_the_run_config_is_refused(api: APIClient, breast_cancer_contract: dict[str, Any]) -> None:
    body = {
        "title": "Bad",
        "contract": breast_cancer_contract,
        "app_template": "tabular",
        "run_config": {"strategy_params": {"a\x00": 1}},
    }
    response = api.post("/api/v1/problems/", body, format="json")
    assert response.status_code == 400 and "NUL character" in response.json()["run_config"][0]
    assert not Problem.objects.exists()


# ----------------------------------------------------------------------------- Markdown


def assert_sanitised(html: str) -> None:
    lowered = html.lower()
    for banned in ("<script", "alert(", "onerror", "onclick", "javascript:", "<iframe", "<style", "display: none"):
        assert banned not in lowered, (banned, html)
    assert "<strong>malignant</strong>" in html
    assert 'href="https://example.org/"' in html and "fine link</a>" in html


def test_markdown_with_scripts_is_kept_as_written_and_served_sanitised(
    api: APIClient, breast_cancer_contract: dict[str, Any]
) -> None:
    body = {
        "title": "Scripted",
        "description": SCRIPTED_MARKDOWN,
        "contract": breast_cancer_contract,
        "app_template": "tabular",
    }
    created = api.post("/api/v1/problems/", body, format="json")
    assert created.status_code == 201, created.content
    problem = Problem.objects.get()
    assert problem.description == SCRIPTED_MARKDOWN  # stored exactly as written
    for data in (created.json(), api.get(f"/api/v1/problems/{problem.pk}/").json()):
        assert data["description"] == SCRIPTED_MARKDOWN
        assert_sanitised(data["description_html"])
    listed = api.get("/api/v1/problems/").json()["results"][0]
    assert_sanitised(listed["description_html"])


def test_markdown_with_scripts_through_patch(api: APIClient, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    response = api.patch(f"/api/v1/problems/{problem.pk}/", {"description": SCRIPTED_MARKDOWN}, format="json")
    assert response.status_code == 200
    assert response.json()["description"] == SCRIPTED_MARKDOWN
    assert_sanitised(response.json()["description_html"])


def test_a_description_over_the_limit_is_refused(api: APIClient, breast_cancer_contract: dict[str, Any]) -> None:
    from webserver.problems.services import MAX_DESCRIPTION

    body = {
        "title": "Long",
        "description": "[" * (MAX_DESCRIPTION + 1),
        "contract": breast_cancer_contract,
        "app_template": "tabular",
    }
    response = api.post("/api/v1/problems/", body, format="json")
    assert response.status_code == 400
    assert response.json()["description"] == [
        f"the description is {MAX_DESCRIPTION + 1} characters; at most {MAX_DESCRIPTION} are allowed"
    ]
    assert not Problem.objects.exists()


# ----------------------------------------------------------------------------- server errors schemathesis found


@pytest.mark.parametrize(
    "url",
    ["/api/v1/problems/", "/api/v1/me/participations/", "/api/v1/problems/{pk}/participants/"],
)
@pytest.mark.parametrize(
    "query", [{"limit": "33715892560541433856"}, {"offset": "33715892560541433856"}, {"limit": "9" * 40}]
)
def test_a_huge_limit_or_offset_is_bounded_not_a_server_error(
    api: APIClient, users: dict[str, Any], make_problem: Any, url: str, query: dict[str, str]
) -> None:
    problem = make_problem(users["owner"])
    response = api.get(url.format(pk=problem.pk), query)
    assert response.status_code == 200, response.content
    assert response.json()["count"] == (1 if url == "/api/v1/problems/" else 0)


@pytest.mark.parametrize("url", ["/api/v1/problems/", "/api/v1/me/participations/"])
@pytest.mark.parametrize(
    ("name", "value", "least"), [("limit", "0", 1), ("limit", "ten", 1), ("offset", "-1", 0), ("offset", "", 0)]
)
def test_a_limit_or_offset_that_is_no_whole_number_is_a_400_naming_it(
    api: APIClient, url: str, name: str, value: str, least: int
) -> None:
    # DRF read these as if absent and answered another page than asked with a 200.
    response = api.get(url, {name: value})
    assert response.status_code == 400
    assert response.json()[name] == [f"{name}: must be a whole number ≥ {least}"]


@pytest.mark.parametrize("url", ["/api/v1/problems/", "/api/v1/auth/signup/", "/api/v1/auth/token/"])
def test_json_nested_too_deep_is_a_400(api: APIClient, url: str) -> None:
    response = api.post(url, "[" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"] == "JSON parse error - the document nests too deeply"


def test_a_multipart_contract_nested_too_deep_is_a_400(api: APIClient, tabular_fab: bytes) -> None:
    payload = {"title": "Deep", "contract": "[" * 100_000, "fab": SimpleUploadedFile("a.fab", tabular_fab)}
    response = api.post("/api/v1/problems/", payload, format="multipart")
    assert response.status_code == 400 and response.json()["contract"] == ["the JSON nests too deeply"]
    assert not Problem.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/problems/abc/",
        "/api/v1/problems/1%0A/publish/",
        "/api/v1/runs/x/rounds/",
        "/api/v1/nothing",
        "/api/v2/problems/",
        "/api/nothing",
    ],
)
def test_a_path_no_route_takes_is_a_json_404(api: APIClient, url: str) -> None:
    # It was Django's HTML page (for a POST, a CSRF 403 in HTML), which the schema does not declare.
    for response in (api.get(url), api.post(url, {}, format="json")):
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json" and response.json() == {"detail": "Not found."}


def test_a_path_without_its_slash_is_still_redirected(api: APIClient) -> None:
    response = api.get("/api/v1/problems", {"q": "x"})
    assert response.status_code == 301 and response["Location"] == "/api/v1/problems/?q=x"
    response = api.get("/api/schema", {"format": "json"})
    assert response.status_code == 301 and response["Location"] == "/api/schema/?format=json"


@pytest.mark.parametrize("runs", ["-1", "1_0", "+1", "one", "1 2"])
def test_runs_that_are_not_run_numbers_are_a_400(
    api: APIClient, users: dict[str, Any], make_problem: Any, runs: str
) -> None:
    problem = make_problem(users["owner"])
    response = api.get(f"/api/v1/problems/{problem.pk}/runs/metrics/", {"runs": runs})
    assert response.status_code == 400
    assert response.json()["runs"] == ["runs: give run numbers separated by commas, e.g. 1,2"]


def test_a_run_number_past_the_databases_integers_names_no_run(
    api: APIClient, users: dict[str, Any], make_problem: Any
) -> None:
    # Found by schemathesis against a live server: SQLite's driver overflowed and the site answered 500.
    from webserver.problems.models import Run, RunStatus

    problem = make_problem(users["owner"])
    Run.objects.create(problem=problem, number=2, status=RunStatus.FINISHED)
    response = api.get(f"/api/v1/problems/{problem.pk}/runs/metrics/", {"runs": " 2 , 978660250124842708028092"})
    assert response.status_code == 200
    assert [run["number"] for run in response.json()] == [2]


def test_the_schema_says_fab_is_a_file_upload_and_contract_an_object(api: APIClient) -> None:
    schema = api.get("/api/schema/", {"format": "json"}).json()
    write = schema["components"]["schemas"]["ProblemWriteRequest"]["properties"]
    assert write["fab"] == {**write["fab"], "type": "string", "format": "binary"}
    assert write["contract"]["type"] == "object" and "nullable" not in write["contract"]
    create = schema["paths"]["/api/v1/problems/"]["post"]["responses"]
    assert {"201", "400", "401", "403", "409", "413", "415"} <= set(create)
