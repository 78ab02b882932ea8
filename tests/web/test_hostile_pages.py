"""Hostile input through the pages: the problem editor refuses it with the reason, and the problem page stays safe."""

from __future__ import annotations

import html
import json
import time
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from tests.web.test_api_hostile import BAD_CONTRACTS, SCRIPTED_MARKDOWN, WEB_HOSTILE_FABS, media_files, snapshot
from tests.web.test_problems import editor_data
from webserver.problems.models import Problem
from webserver.problems.templatetags.problem_tags import render_markdown

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client: Client, users: dict[str, Any]) -> Client:
    client.force_login(users["owner"])
    return client


def upload_data(content: bytes, name: str = "bad.fab", **overrides: Any) -> dict[str, Any]:
    return editor_data(
        app_source="upload", app_template="", **{"p-fab": SimpleUploadedFile(name, content)}, **overrides
    )


# ----------------------------------------------------------------------------- FABs


@pytest.mark.parametrize("case", sorted(WEB_HOSTILE_FABS))
def test_editor_refuses_a_hostile_fab_and_stores_nothing(owner: Client, settings: Any, case: str) -> None:
    content, message = WEB_HOSTILE_FABS[case]
    response = owner.post(reverse("problem-create"), upload_data(content))
    assert response.status_code == 400
    assert html.escape(message) in response.content.decode()
    assert not Problem.objects.exists() and media_files(settings) == []


@pytest.mark.parametrize("case", sorted(WEB_HOSTILE_FABS))
def test_editor_refuses_a_hostile_fab_on_edit_and_changes_nothing(
    owner: Client, users: dict[str, Any], make_problem: Any, settings: Any, case: str
) -> None:
    problem = make_problem(users["owner"])
    before, files_before = snapshot(problem), media_files(settings)
    content, message = WEB_HOSTILE_FABS[case]
    data = upload_data(content, title="Changed too", fields=[], **{"ct-contract_json": json.dumps(problem.contract)})
    response = owner.post(reverse("problem-edit", args=[problem.pk]), data)
    assert response.status_code == 400
    assert html.escape(message) in response.content.decode()
    assert snapshot(problem) == before and media_files(settings) == files_before


def test_editor_refuses_an_upload_cut_off_while_streaming(owner: Client, settings: Any, tabular_fab: bytes) -> None:
    settings.FEDOTA_MAX_UPLOAD_BYTES = settings.FEDOTA_MAX_FAB_BYTES = 10_000
    response = owner.post(reverse("problem-create"), upload_data(tabular_fab, name="big.fab"))
    assert response.status_code == 400
    assert f"big.fab is {len(tabular_fab)} bytes; a FAB may be at most 10000 bytes" in response.content.decode()
    assert not Problem.objects.exists() and media_files(settings) == []


def test_a_form_body_over_the_limit_says_so_and_stores_nothing(owner: Client, settings: Any) -> None:
    big = "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    response = owner.post(reverse("problem-create"), editor_data(**{"p-description": big}))
    assert response.status_code == 413
    page = response.content.decode()
    assert "The form was too large" in page and "over 5 MiB" in page and "Nothing was saved" in page
    assert not Problem.objects.exists()


def test_a_form_with_too_many_fields_says_so(owner: Client, settings: Any) -> None:
    fields = {f"f{i}": "x" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)}
    response = owner.post(reverse("problem-create"), {**editor_data(), **fields})
    assert response.status_code == 400
    assert f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields" in response.content.decode()
    assert not Problem.objects.exists()


# ----------------------------------------------------------------------------- data contracts


@pytest.mark.parametrize("case", sorted(BAD_CONTRACTS))
def test_editor_refuses_a_malformed_contract_json(owner: Client, settings: Any, case: str) -> None:
    contract, message = BAD_CONTRACTS[case]
    response = owner.post(
        reverse("problem-create"), editor_data(fields=[], **{"ct-contract_json": json.dumps(contract)})
    )
    assert response.status_code == 400
    assert html.escape(message) in response.content.decode()
    assert not Problem.objects.exists() and media_files(settings) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"kind": "tabular", ', "the contract is not valid JSON: Expecting property name"),
        ("[" * 100_000, "the contract is not usable JSON: it nests too deeply"),
    ],
)
def test_editor_refuses_contract_text_that_is_not_json(owner: Client, text: str, message: str) -> None:
    for data in (
        editor_data(fields=[], **{"ct-contract_json": text}),
        editor_data(fields=[], **{"ct-contract_file": SimpleUploadedFile("contract.json", text.encode())}),
    ):
        response = owner.post(reverse("problem-create"), data)
        assert response.status_code == 400
        assert message in response.content.decode()
    assert not Problem.objects.exists()


def test_editor_refuses_a_label_missing_from_the_fields_on_edit(
    owner: Client, users: dict[str, Any], make_problem: Any
) -> None:
    problem = make_problem(users["owner"])
    before = snapshot(problem)
    contract, message = BAD_CONTRACTS["a label that is not a field"]
    data = editor_data(app_source="keep", fields=[], title="Changed", **{"ct-contract_json": json.dumps(contract)})
    response = owner.post(reverse("problem-edit", args=[problem.pk]), data)
    assert response.status_code == 400 and html.escape(message) in response.content.decode()
    assert snapshot(problem) == before


# ----------------------------------------------------------------------------- Markdown


def test_scripts_in_markdown_are_removed_from_the_page_and_the_text_is_kept(owner: Client) -> None:
    response = owner.post(reverse("problem-create"), editor_data(**{"p-description": SCRIPTED_MARKDOWN}))
    assert response.status_code == 302
    problem = Problem.objects.get()
    assert problem.description == SCRIPTED_MARKDOWN
    page = owner.get(reverse("problem-detail", args=[problem.pk])).content.decode()
    start = page.index("<strong>malignant</strong>")
    rendered = page[start : page.index("fine link</a>", start)]
    for banned in ("<script", "alert(", "onerror", "onclick", "javascript:", "<iframe", "<style", "display: none"):
        assert banned not in rendered.lower(), banned
    assert "<script>alert" not in page and "evil.example" not in page
    # The edit form shows the text as written (escaped), for the owner to fix.
    edit = owner.get(reverse("problem-edit", args=[problem.pk])).content.decode()
    assert html.escape("<script>alert('script')</script>") in edit


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000,
        "[a](" * 5_000,
        "\n".join("\t" * depth + "- item" for depth in range(2_000)),
        "\n".join("> " * depth + "quote" for depth in range(300)),
        "*[a]: b\n" * 2_500,
        "a\n: b\n" * 3_000,
    ],
    ids=["brackets", "open links", "nested lists", "nested quotes", "abbreviations", "definitions"],
)
def test_pathological_markdown_renders_quickly(text: str) -> None:
    """Python-Markdown took a minute on 20 KB of "[" and overflowed the stack on nested lists."""
    # The render's own CPU time, not the wall clock: a blow-up is CPU work, and with tests
    # running on parallel workers the wall clock mostly measures the neighbours.
    started = time.thread_time()
    rendered = render_markdown(text)
    assert time.thread_time() - started < 2.0
    assert isinstance(rendered, str)
