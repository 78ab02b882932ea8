"""Problem pages and services: create, edit, publish, stop, see the app's source; bad input refused whole."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from client_image.contract import parse_contract
from webserver.errors import Conflict, NotAllowed
from webserver.problems import services
from webserver.problems.models import Problem, ProblemState, Run, RunStatus
from webserver.problems.runconfig import validate_run_config

pytestmark = pytest.mark.django_db


# ----------------------------------------------------------------------------- helpers


def login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def editor_data(
    *,
    title: str = "Breast cancer",
    fields: list[dict[str, Any]] | None = None,
    label: str = "diagnosis",
    app_source: str = "template",
    app_template: str = "tabular",
    **overrides: Any,
) -> dict[str, Any]:
    """What a browser posts for the problem editor."""
    rows = (
        fields
        if fields is not None
        else [
            {"name": "radius", "type": "number", "minimum": "0", "required": "on"},
            {"name": "diagnosis", "type": "string", "enum": "benign, malignant", "required": "on"},
        ]
    )
    data: dict[str, Any] = {
        "p-title": title,
        "p-description": "Predict **malignant** tumours.",
        "p-join_policy": "approval",
        "p-app_source": app_source,
        "p-app_template": app_template,
        "rc-rounds": "3",
        "rc-clients_per_round": "3",
        "rc-min_clients": "2",
        "rc-round_timeout": "300",
        "rc-strategy": "FedAvg",
        "rc-strategy_params": "",
        "rc-num_selectors": "1",
        "rc-app_config": "",
        "ct-kind": "tabular",
        "ct-description": "",
        "ct-files": "*.csv",
        "ct-min_rows": "10",
        "ct-label": label,
        "ct-extra_columns": "forbid",
        "ct-extensions": ".png",
        "ct-mode": "",
        "ct-extra_arrays": "forbid",
        "ct-contract_json": "",
        "fields-TOTAL_FORMS": str(len(rows)),
        "fields-INITIAL_FORMS": "0",
        "fields-MIN_NUM_FORMS": "0",
        "fields-MAX_NUM_FORMS": "1000",
        "arrays-TOTAL_FORMS": "0",
        "arrays-INITIAL_FORMS": "0",
        "arrays-MIN_NUM_FORMS": "0",
        "arrays-MAX_NUM_FORMS": "1000",
        "save": "1",
    }
    for i, row in enumerate(rows):
        for key, value in row.items():
            data[f"fields-{i}-{key}"] = value
    data.update(overrides)
    return data


def with_fields(problem: Problem, **fields: Any) -> Problem:
    """Set fields the `make_problem` fixture fixes, straight in the database."""
    Problem.objects.filter(pk=problem.pk).update(**fields)
    problem.refresh_from_db()
    return problem


def fab_files_on_disk(settings: Any) -> list[Path]:
    folder = Path(settings.MEDIA_ROOT) / "fabs"
    return sorted(folder.iterdir()) if folder.exists() else []


def zip_bytes(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


PYPROJECT = b"""[project]
name = "mine"
version = "0.1.0"
[tool.flwr.app.components]
serverapp = "mine.server:app"
clientapp = "mine.client:app"
[tool.flwr.app.config]
num-server-rounds = 3
"""


def symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("mine/link.py")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def lying_size_zip() -> bytes:
    """A zip whose headers claim a small file that really unpacks to much more (CRC then fails)."""
    import struct

    data = bytearray(zip_bytes([("pyproject.toml", PYPROJECT), ("mine/big.bin", bytes(5_000_000))]))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        offset = zf.getinfo("mine/big.bin").header_offset
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"mine/big.bin"))
    struct.pack_into("<I", data, central + 24, 1000)
    struct.pack_into("<I", data, offset + 22, 1000)
    return bytes(data)


BAD_FABS = {
    "lying sizes": (lying_size_zip(), "cannot be unpacked"),
    "not a zip": (b"this is not a zip file at all", "is not a valid zip file"),
    "path traversal": (
        zip_bytes([("pyproject.toml", PYPROJECT), ("../evil.py", b"x")]),
        "points outside the app folder",
    ),
    "absolute path": (
        zip_bytes([("pyproject.toml", PYPROJECT), ("/etc/evil.py", b"x")]),
        "points outside the app folder",
    ),
    "symlink": (zip_bytes([("pyproject.toml", PYPROJECT), (symlink_entry(), b"/etc/passwd")]), "symbolic link"),
    "zip bomb": (
        zip_bytes([("pyproject.toml", PYPROJECT), ("mine/zeros.bin", bytes(20_000_000))]),
        "compression ratio",
    ),
    "no components": (zip_bytes([("pyproject.toml", b'[project]\nname = "x"\n')]), "[tool.flwr.app.components]"),
    "no pyproject": (zip_bytes([("mine/app.py", b"x")]), "no pyproject.toml"),
    "empty": (b"", "is empty"),
}


# ----------------------------------------------------------------------------- create


def test_setter_creates_a_draft_from_the_form(
    client: Client, users: dict[str, Any], settings: Any, tabular_fab: bytes
) -> None:
    response = login(client, users["owner"]).post(reverse("problem-create"), editor_data())
    problem = Problem.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("problem-detail", args=[problem.pk])
    assert problem.state == ProblemState.DRAFT and problem.owner == users["owner"]
    assert problem.fab_sha256 == hashlib.sha256(tabular_fab).hexdigest()
    assert problem.fab.read() == tabular_fab
    assert problem.app_template == "tabular" and problem.app_version == 1
    assert problem.contract["label"] == "diagnosis"
    assert problem.contract["schema"]["fields"][1]["constraints"] == {"required": True, "enum": ["benign", "malignant"]}
    assert problem.run_config["rounds"] == 3 and problem.run_config["num_selectors"] == 1


def test_create_page_offers_the_builtin_apps(client: Client, users: dict[str, Any]) -> None:
    page = login(client, users["owner"]).get(reverse("problem-create")).content.decode()
    assert "tabular" in page and "image" in page
    assert "Federated PyTorch MLP classifier" in page  # the app's description


@pytest.mark.parametrize("who", ["holder", "admin"])
def test_only_setters_may_create(client: Client, users: dict[str, Any], who: str) -> None:
    response = login(client, users[who]).get(reverse("problem-create"))
    assert response.status_code == 403
    assert "Only problem setters can create problems" in response.content.decode()
    response = client.post(reverse("problem-create"), editor_data())
    assert response.status_code == 403 and not Problem.objects.exists()


def test_anonymous_visitors_are_sent_to_log_in(client: Client, users: dict[str, Any]) -> None:
    response = client.get(reverse("problem-create"))
    assert response.status_code == 302 and "next=" in response["Location"]


def test_uploaded_fab_is_stored(client: Client, users: dict[str, Any], tabular_fab: bytes) -> None:
    data = editor_data(app_source="upload", app_template="", **{"p-fab": SimpleUploadedFile("my.fab", tabular_fab)})
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    assert response.status_code == 302
    problem = Problem.objects.get()
    assert problem.fab_name == "my.fab" and problem.app_template == ""
    assert problem.fab_sha256 == hashlib.sha256(tabular_fab).hexdigest()


@pytest.mark.parametrize("case", sorted(BAD_FABS))
def test_bad_fabs_are_refused_and_nothing_is_kept(
    client: Client, users: dict[str, Any], settings: Any, case: str
) -> None:
    content, message = BAD_FABS[case]
    data = editor_data(app_source="upload", app_template="", **{"p-fab": SimpleUploadedFile("bad.fab", content)})
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Problem.objects.exists() and fab_files_on_disk(settings) == []


def test_an_oversized_fab_is_refused(client: Client, users: dict[str, Any], settings: Any, tabular_fab: bytes) -> None:
    settings.FEDOTA_MAX_FAB_BYTES = 1000
    data = editor_data(app_source="upload", app_template="", **{"p-fab": SimpleUploadedFile("big.fab", tabular_fab)})
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    assert response.status_code == 400
    assert "a FAB may be at most 1000 bytes" in response.content.decode()
    assert not Problem.objects.exists() and fab_files_on_disk(settings) == []


def test_upload_chosen_without_a_file(client: Client, users: dict[str, Any]) -> None:
    response = login(client, users["owner"]).post(
        reverse("problem-create"), editor_data(app_source="upload", app_template="")
    )
    assert response.status_code == 400 and "choose the .fab file to upload" in response.content.decode()


@pytest.mark.parametrize(
    ("fields", "label", "message"),
    [
        (
            [{"name": "age", "type": "integer"}, {"name": "age", "type": "number"}],
            "",
            "duplicate field name &#x27;age&#x27;",
        ),
        ([{"name": "age", "type": "integer"}], "outcome", "the label &#x27;outcome&#x27; is not one of the fields"),
        ([{"name": "age", "type": "integer", "minimum": "old"}], "", "expected a whole number, got &#x27;old&#x27;"),
        ([{"name": "age", "type": "integer", "minimum": "9", "maximum": "1"}], "", "minimum"),
    ],
)
def test_contract_mistakes_are_shown_and_nothing_is_saved(
    client: Client, users: dict[str, Any], settings: Any, fields: list[dict[str, Any]], label: str, message: str
) -> None:
    response = login(client, users["owner"]).post(reverse("problem-create"), editor_data(fields=fields, label=label))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Problem.objects.exists() and fab_files_on_disk(settings) == []


def test_run_config_and_contract_mistakes_are_shown_together(client: Client, users: dict[str, Any]) -> None:
    data = editor_data(label="nope", **{"rc-rounds": "-3", "rc-min_clients": "5", "rc-app_config": "magic = 1"})
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    page = response.content.decode()
    assert response.status_code == 400
    assert "the label &#x27;nope&#x27; is not one of the fields" in page
    assert not Problem.objects.exists()
    # Once the contract is right, every run config problem is listed.
    response = client.post(
        reverse("problem-create"),
        editor_data(**{"rc-rounds": "-3", "rc-min_clients": "5", "rc-app_config": "magic = 1"}),
    )
    page = response.content.decode()
    assert "rounds must be a whole number between 1 and 10000; got -3" in page
    assert "min_clients (5) cannot exceed clients_per_round (3)" in page
    assert "&#x27;magic&#x27; is not a key of the app" in page
    assert not Problem.objects.exists()


def test_contract_json_replaces_the_form(
    client: Client, users: dict[str, Any], breast_cancer_contract: dict[str, Any]
) -> None:
    data = editor_data(fields=[], **{"ct-contract_json": json.dumps(breast_cancer_contract)})
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    assert response.status_code == 302
    assert Problem.objects.get().contract == breast_cancer_contract


def test_contract_json_import_fills_the_form(
    client: Client, users: dict[str, Any], breast_cancer_contract: dict[str, Any]
) -> None:
    data = editor_data(
        fields=[],
        title="Kept title",
        **{"ct-contract_json": json.dumps(breast_cancer_contract), "import_contract": "1"},
    )
    del data["save"]
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    page = response.content.decode()
    assert response.status_code == 200 and not Problem.objects.exists()
    first = breast_cancer_contract["schema"]["fields"][0]["name"]
    assert f'value="{first}"' in page  # a field row is filled in
    assert 'value="Kept title"' in page  # what was typed elsewhere is kept
    assert "imported into the form" in page


def test_contract_json_import_reports_bad_json(client: Client, users: dict[str, Any]) -> None:
    data = editor_data(**{"ct-contract_json": '{"kind": ', "import_contract": "1"})
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    assert response.status_code == 400 and "not valid JSON" in response.content.decode()


def test_contract_json_upload_file(
    client: Client, users: dict[str, Any], breast_cancer_contract: dict[str, Any]
) -> None:
    upload = SimpleUploadedFile("contract.json", json.dumps(breast_cancer_contract).encode())
    response = login(client, users["owner"]).post(
        reverse("problem-create"), editor_data(fields=[], **{"ct-contract_file": upload})
    )
    assert response.status_code == 302 and Problem.objects.get().contract == breast_cancer_contract


def test_image_and_numpy_contracts_from_the_form(client: Client, users: dict[str, Any]) -> None:
    login(client, users["owner"])
    data = editor_data(
        fields=[],
        title="Digits",
        app_template="image",
        **{
            "ct-kind": "image-folder",
            "ct-classes": "0,1,2",
            "ct-image_width": "8",
            "ct-image_height": "8",
            "ct-mode": "L",
        },
    )
    assert client.post(reverse("problem-create"), data).status_code == 302
    data = editor_data(
        fields=[],
        title="Embeddings",
        **{
            "ct-kind": "numpy",
            "arrays-TOTAL_FORMS": "1",
            "arrays-0-file": "train.npz",
            "arrays-0-name": "x",
            "arrays-0-dtype": "float32",
            "arrays-0-shape": "-1,30",
        },
    )
    assert client.post(reverse("problem-create"), data).status_code == 302
    contracts = {p.title: p.contract for p in Problem.objects.all()}
    assert contracts["Digits"]["image_size"] == [8, 8]
    assert contracts["Embeddings"]["files"] == {"train.npz": {"x": {"dtype": "float32", "shape": [None, 30]}}}


def test_fab_file_is_removed_when_the_row_cannot_be_saved(
    users: dict[str, Any], settings: Any, breast_cancer_contract: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(self: Problem, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(Problem, "save", broken_save)
    with pytest.raises(RuntimeError):
        services.problem_create(
            owner=users["owner"], title="X", contract=breast_cancer_contract, app_template="tabular"
        )
    assert fab_files_on_disk(settings) == []


def test_service_refuses_unknown_template_and_both_sources(
    users: dict[str, Any], breast_cancer_contract: dict[str, Any], tabular_fab: bytes
) -> None:
    from webserver.errors import ApplicationError

    with pytest.raises(ApplicationError) as caught:
        services.problem_create(owner=users["owner"], title="X", contract=breast_cancer_contract, app_template="nope")
    assert caught.value.field == "app_template" and "tabular" in caught.value.message
    with pytest.raises(ApplicationError) as caught:
        services.problem_create(
            owner=users["owner"],
            title="X",
            contract=breast_cancer_contract,
            app_template="tabular",
            fab_bytes=tabular_fab,
        )
    assert "not both" in caught.value.message
    with pytest.raises(ApplicationError) as caught:
        services.problem_create(
            owner=users["owner"], title=" ", contract=breast_cancer_contract, app_template="tabular"
        )
    assert caught.value.field == "title"
    with pytest.raises(NotAllowed):
        services.problem_create(
            owner=users["holder"], title="X", contract=breast_cancer_contract, app_template="tabular"
        )
    assert not Problem.objects.exists()


# ----------------------------------------------------------------------------- list and detail


def test_list_shows_published_problems_and_own_drafts(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    make_problem(users["owner"], title="Public one")
    make_problem(users["owner"], title="Secret draft", state=ProblemState.DRAFT)
    make_problem(users["other_setter"], title="Other draft", state=ProblemState.DRAFT)
    anonymous = client.get(reverse("problem-list")).content.decode()
    assert "Public one" in anonymous and "Secret draft" not in anonymous and "Other draft" not in anonymous
    mine = login(Client(), users["owner"]).get(reverse("problem-list")).content.decode()
    assert "Public one" in mine and "Secret draft" in mine and "Other draft" not in mine
    admin = login(Client(), users["admin"]).get(reverse("problem-list")).content.decode()
    assert "Secret draft" in admin and "Other draft" in admin
    found = client.get(reverse("problem-list"), {"q": "publ"}).content.decode()
    assert "Public one" in found
    assert "No problem title contains" in client.get(reverse("problem-list"), {"q": "zzz"}).content.decode()


@pytest.mark.parametrize("who", [None, "holder", "other_setter"])
def test_drafts_are_not_found_by_others(
    client: Client, users: dict[str, Any], make_problem: Any, who: str | None
) -> None:
    draft = make_problem(users["owner"], state=ProblemState.DRAFT)
    if who:
        login(client, users[who])
    for url in (reverse("problem-detail", args=[draft.pk]), reverse("problem-file", args=[draft.pk, "pyproject.toml"])):
        assert client.get(url).status_code == 404
    assert client.get(reverse("problem-detail", args=[draft.pk + 100])).status_code == 404


def test_detail_page_shows_everything(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = with_fields(
        make_problem(users["owner"]), description="Predict **malignant** tumours.<script>alert(1)</script>"
    )
    Run.objects.create(
        problem=problem, number=1, status=RunStatus.FAILED, status_detail="selector 0 exited with code 1"
    )
    page = client.get(reverse("problem-detail", args=[problem.pk])).content.decode()
    assert "<strong>malignant</strong>" in page and "<script>alert(1)</script>" not in page
    assert problem.fab_sha256 in page and "fedota-tabular" in page
    assert "fedota_tabular/client_app.py" in page
    assert reverse("problem-file", args=[problem.pk, "fedota_tabular/client_app.py"]) in page
    assert "selector 0 exited with code 1" in page and "badge failed" in page
    assert "Data contract" in page and "&quot;kind&quot;: &quot;tabular&quot;" in page
    assert "Rounds" in page and "num-server-rounds" in page
    assert "Edit" not in page  # not the owner
    owner_page = login(client, users["owner"]).get(reverse("problem-detail", args=[problem.pk])).content.decode()
    assert reverse("problem-edit", args=[problem.pk]) in owner_page
    assert reverse("problem-publish", args=[problem.pk]) in owner_page and "Start a new run" in owner_page
    assert "csrfmiddlewaretoken" in owner_page


def test_contract_downloads_as_json(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    response = client.get(reverse("problem-contract", args=[problem.pk]))
    assert response.status_code == 200 and "contract.json" in response["Content-Disposition"]
    assert json.loads(response.content) == problem.contract
    draft = make_problem(users["owner"], state=ProblemState.DRAFT)
    assert client.get(reverse("problem-contract", args=[draft.pk])).status_code == 404


def test_markdown_links_cannot_run_script(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = with_fields(
        make_problem(users["owner"]), description="[click](javascript:alert(1)) <img src=x onerror=alert(1)>"
    )
    page = client.get(reverse("problem-detail", args=[problem.pk])).content.decode()
    assert "javascript:" not in page and "onerror" not in page


def test_source_file_is_shown_highlighted(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    response = client.get(reverse("problem-file", args=[problem.pk, "fedota_tabular/strategy.py"]))
    page = response.content.decode()
    assert response.status_code == 200
    assert 'class="highlight"' in page and "make_strategy" in page
    assert "problems/pygments.css" in page
    toml = client.get(reverse("problem-file", args=[problem.pk, "pyproject.toml"])).content.decode()
    assert "tool.flwr.app.components" in toml
    assert client.get(reverse("problem-file", args=[problem.pk, "nope.py"])).status_code == 404
    assert client.get(reverse("problem-file", args=[problem.pk, "../pyproject.toml"])).status_code == 404


# ----------------------------------------------------------------------------- edit


def test_only_the_owner_may_edit(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    response = login(client, users["other_setter"]).get(reverse("problem-edit", args=[problem.pk]))
    assert response.status_code == 403 and "Only the problem&#x27;s owner can edit it" in response.content.decode()
    response = client.post(reverse("problem-edit", args=[problem.pk]), editor_data(title="Hijacked", app_source="keep"))
    assert response.status_code == 403 and Problem.objects.get().title == "Breast cancer"


def test_edit_page_is_prefilled(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    page = login(client, users["owner"]).get(reverse("problem-edit", args=[problem.pk])).content.decode()
    assert 'value="Breast cancer"' in page and 'value="diagnosis"' in page
    assert "Keep the current app" in page and "must download a new join bundle" in page


def test_changing_only_the_run_config_keeps_the_app_version(
    client: Client, users: dict[str, Any], make_problem: Any
) -> None:
    problem = make_problem(users["owner"])
    data = editor_data(
        app_source="keep", fields=[], **{"ct-contract_json": json.dumps(problem.contract), "rc-rounds": "9"}
    )
    response = login(client, users["owner"]).post(reverse("problem-edit", args=[problem.pk]), data)
    assert response.status_code == 302
    problem.refresh_from_db()
    assert problem.run_config["rounds"] == 9 and problem.app_version == 1


def test_changing_the_app_of_a_published_problem_bumps_its_version(
    client: Client, users: dict[str, Any], make_problem: Any, settings: Any
) -> None:
    problem = make_problem(users["owner"])
    old_sha = problem.fab_sha256
    data = editor_data(app_template="image", fields=[], **{"ct-contract_json": json.dumps(problem.contract)})
    response = login(client, users["owner"]).post(reverse("problem-edit", args=[problem.pk]), data, follow=True)
    page = response.content.decode()
    problem.refresh_from_db()
    assert problem.app_version == 2 and problem.fab_sha256 != old_sha and problem.app_template == "image"
    assert "participants must download a new join bundle" in page


def test_changing_the_app_of_a_draft_keeps_version_one(users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"], state=ProblemState.DRAFT)
    updated = services.problem_update(problem=problem, user=users["owner"], app_template="image")
    assert updated.app_version == 1 and updated.app_template == "image"


def test_a_new_app_must_accept_the_run_config(
    users: dict[str, Any], make_problem: Any, settings: Any, tabular_fab: bytes
) -> None:
    from webserver.errors import ApplicationError

    problem = with_fields(make_problem(users["owner"]), run_config={"app_config": {"label-column": "diagnosis"}})
    before = fab_files_on_disk(settings)
    with pytest.raises(ApplicationError) as caught:
        services.problem_update(problem=problem, user=users["owner"], app_template="image")  # no label-column key
    assert "label-column" in caught.value.message
    problem.refresh_from_db()
    assert problem.app_template == "tabular" and problem.app_version == 1
    assert fab_files_on_disk(settings) == before


def test_update_refuses_strangers_and_unknown_fields(users: dict[str, Any], make_problem: Any) -> None:
    from webserver.errors import ApplicationError

    problem = make_problem(users["owner"])
    with pytest.raises(NotAllowed):
        services.problem_update(problem=problem, user=users["holder"], title="Mine now")
    with pytest.raises(ApplicationError):
        services.problem_update(problem=problem, user=users["owner"], state="draft")
    admin_edit = services.problem_update(problem=problem, user=users["admin"], title="Fixed by admin")
    assert admin_edit.title == "Fixed by admin"


# ----------------------------------------------------------------------------- publish, stop, archive


def test_publish_starts_a_run_and_a_second_is_refused(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"], state=ProblemState.DRAFT)
    login(client, users["owner"])
    response = client.post(reverse("problem-publish", args=[problem.pk]), follow=True)
    problem.refresh_from_db()
    run = Run.objects.get()
    assert problem.state == ProblemState.PUBLISHED
    assert run.number == 1 and run.status == RunStatus.QUEUED and run.fab_sha256 == problem.fab_sha256
    assert "Run 1 is queued" in response.content.decode()
    response = client.post(reverse("problem-publish", args=[problem.pk]), follow=True)
    assert "still" in response.content.decode() and Run.objects.count() == 1
    assert "Stop run 1" in response.content.decode()


def test_publish_needs_post_and_the_owner(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    problem = make_problem(users["owner"])
    login(client, users["owner"])
    assert client.get(reverse("problem-publish", args=[problem.pk])).status_code == 405
    login(client, users["other_setter"])
    response = client.post(reverse("problem-publish", args=[problem.pk]))
    assert response.status_code == 403 and not Run.objects.exists()


def test_publish_refuses_an_incomplete_problem(users: dict[str, Any], make_problem: Any) -> None:
    from webserver.errors import ApplicationError

    problem = make_problem(users["owner"], state=ProblemState.DRAFT)
    Problem.objects.filter(pk=problem.pk).update(run_config={"rounds": 0})
    with pytest.raises(ApplicationError) as caught:
        services.problem_publish(problem=problem, user=users["owner"])
    assert "rounds" in caught.value.message
    problem.refresh_from_db()
    assert problem.state == ProblemState.DRAFT and not Run.objects.exists()


def test_a_failing_run_start_leaves_the_draft_a_draft(
    users: dict[str, Any], make_problem: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webserver.problems import lifecycle

    def refuse(**kwargs: Any) -> Run:
        raise Conflict("the spawner is busy")

    monkeypatch.setattr(lifecycle, "run_start", refuse)
    problem = make_problem(users["owner"], state=ProblemState.DRAFT)
    with pytest.raises(Conflict):
        services.problem_publish(problem=problem, user=users["owner"])
    problem.refresh_from_db()
    assert problem.state == ProblemState.DRAFT


def test_stop_asks_the_lifecycle_and_needs_an_active_run(
    client: Client, users: dict[str, Any], make_problem: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webserver.problems import lifecycle

    stopped: list[int] = []
    monkeypatch.setattr(lifecycle, "run_stop", lambda *, problem, user: stopped.append(problem.pk))
    problem = make_problem(users["owner"])
    login(client, users["owner"])
    response = client.post(reverse("problem-stop", args=[problem.pk]), follow=True)
    assert "no run of this problem is active" in response.content.decode() and stopped == []
    Run.objects.create(problem=problem, number=1, status=RunStatus.RUNNING)
    client.post(reverse("problem-stop", args=[problem.pk]))
    assert stopped == [problem.pk]
    login(client, users["other_setter"])
    assert client.post(reverse("problem-stop", args=[problem.pk])).status_code == 403
    assert stopped == [problem.pk]


def test_archive_and_delete(client: Client, users: dict[str, Any], make_problem: Any, settings: Any) -> None:
    problem = make_problem(users["owner"])
    login(client, users["owner"])
    client.post(reverse("problem-archive", args=[problem.pk]))
    problem.refresh_from_db()
    assert problem.state == ProblemState.ARCHIVED
    with pytest.raises(Conflict):
        services.problem_publish(problem=problem, user=users["owner"])
    draft = make_problem(users["owner"], state=ProblemState.DRAFT, title="Throwaway")
    response = client.post(reverse("problem-delete", args=[draft.pk]))
    assert response.status_code == 302 and not Problem.objects.filter(pk=draft.pk).exists()
    response = client.post(reverse("problem-delete", args=[problem.pk]), follow=True)
    assert "only a draft that never ran can be deleted" in response.content.decode()


def test_add_rows_keeps_what_was_typed(client: Client, users: dict[str, Any]) -> None:
    data = editor_data(title="Half done", **{"rc-rounds": "7"})
    del data["save"]
    data["more_rows"] = "1"
    response = login(client, users["owner"]).post(reverse("problem-create"), data)
    page = response.content.decode()
    assert response.status_code == 200 and not Problem.objects.exists()
    assert 'value="Half done"' in page and 'value="radius"' in page and 'value="7"' in page
    assert 'name="fields-TOTAL_FORMS" value="5"' in page  # the two rows plus three empty ones
    assert "This field is required" not in page


def test_a_missing_fab_file_does_not_break_the_page(client: Client, users: dict[str, Any], make_problem: Any) -> None:
    from webserver.problems import fabs

    problem = make_problem(users["owner"])
    problem.fab.storage.delete(problem.fab.name)
    fabs._LISTINGS.clear()
    fabs._SUMMARIES.clear()
    response = client.get(reverse("problem-detail", args=[problem.pk]))
    assert response.status_code == 200 and "The app cannot be read" in response.content.decode()
    assert client.get(reverse("problem-file", args=[problem.pk, "pyproject.toml"])).status_code == 404
    login(client, users["owner"])
    response = client.post(reverse("problem-publish", args=[problem.pk]), follow=True)
    assert "cannot be read" in response.content.decode() and not Run.objects.exists()


class _FormValues(HTMLParser):
    """What a browser would post for the first form with `enctype` on a page (no file inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        name = a.get("name", "")
        if tag == "input" and name and a.get("type") not in ("file", "submit"):
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self.values[name] = a.get("value") or "on"
            else:
                self.values[name] = a.get("value", "")
        elif tag == "select":
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = name
            self.values[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea] += data.lstrip("\n") if not self.values[self._textarea] else data


def browser_post(page: str) -> dict[str, str]:
    parser = _FormValues()
    parser.feed(page)
    parser.values.pop("csrfmiddlewaretoken", None)
    return parser.values


OTHER_CONTRACTS = {
    "image-folder": {
        "kind": "image-folder",
        "classes": ["0", "1"],
        "extensions": [".png"],
        "image_size": [8, 8],
        "mode": "L",
        "min_images": 10,
    },
    "numpy": {
        "kind": "numpy",
        "files": {"train.npz": {"x": {"dtype": "float32", "shape": [None, 30]}, "y": {"dtype": "int64"}}},
        "same_length": True,
    },
}


@pytest.mark.parametrize("kind", ["tabular", "image-folder", "numpy"])
def test_saving_the_edit_page_unchanged_changes_nothing(
    client: Client, users: dict[str, Any], make_problem: Any, kind: str
) -> None:
    problem = make_problem(users["owner"])
    if kind in OTHER_CONTRACTS:
        problem = with_fields(problem, contract=OTHER_CONTRACTS[kind])
    before = (problem.contract, problem.run_config, problem.fab_sha256, problem.app_version)
    login(client, users["owner"])
    page = client.get(reverse("problem-edit", args=[problem.pk])).content.decode()
    data = browser_post(page)
    assert data["ct-contract_json"] == ""  # the contract is in the form rows, not JSON
    response = client.post(reverse("problem-edit", args=[problem.pk]), {**data, "save": "1"})
    assert response.status_code == 302, response.content.decode()[:2000]
    problem.refresh_from_db()
    # The same contract for the client (the form spells out defaults such as extra_columns).
    assert parse_contract(problem.contract) == parse_contract(before[0])
    assert (problem.fab_sha256, problem.app_version) == (before[2], before[3])
    declared = services.problem_app(problem).default_config
    assert problem.run_config == validate_run_config(before[1], declared, builtin=True)


def test_admin_lists_problems_and_shows_a_run_with_its_services(
    client: Client, users: dict[str, Any], make_problem: Any
) -> None:
    from webserver.problems.models import Service

    problem = make_problem(users["owner"])
    run = Run.objects.create(problem=problem, number=1, status=RunStatus.RUNNING)
    Service.objects.create(run=run, role="selector", index=0, address="127.0.0.1:9092", health="healthy")
    login(client, users["admin"])
    assert "Breast cancer" in client.get(reverse("admin:problems_problem_changelist")).content.decode()
    page = client.get(reverse("admin:problems_run_change", args=[run.pk])).content.decode()
    assert "127.0.0.1:9092" in page


def test_pygments_stylesheet_is_current() -> None:
    from webserver.problems.fabs import pygments_css

    css = (Path(__file__).resolve().parents[2] / "webserver/problems/static/problems/pygments.css").read_text()
    assert pygments_css() in css, "regenerate webserver/problems/static/problems/pygments.css from fabs.pygments_css()"
