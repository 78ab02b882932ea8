"""The data contract form: rows ⇄ contract document, every mistake named, the client's parser as judge."""

from __future__ import annotations

from typing import Any

import pytest

from client_image.contract import parse_contract
from webserver.errors import ApplicationError
from webserver.problems.contracts import (
    ContractFormError,
    contract_from_form,
    contract_from_json,
    contract_rows,
    contract_settings,
    contract_to_form,
)


def field(name: str, type: str = "number", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type, **extra}


def form_errors(**kwargs: Any) -> dict[str, list[str]]:
    with pytest.raises(ContractFormError) as caught:
        contract_from_form(**kwargs)
    return caught.value.errors


def test_tabular_rows_make_a_contract_the_client_accepts() -> None:
    doc = contract_from_form(
        kind="tabular",
        settings={
            "files": "*.csv",
            "min_rows": 50,
            "label": "diagnosis",
            "extra_columns": "forbid",
            "description": "Biopsies",
        },
        fields=[
            field("patient_id", "string", required=True, unique=True, pattern="P[0-9]{5}"),
            field("mean radius", minimum="0", maximum="50", required=True),
            field("age", "integer", minimum="18", maximum="120"),
            field("biopsy_date", "date", minimum="2000-01-01"),
            field("smoker", "boolean", enum="true, false"),
            field("diagnosis", "string", required=True, enum="B, M"),
        ],
    )
    assert doc["label"] == "diagnosis" and doc["min_rows"] == 50 and doc["description"] == "Biopsies"
    fields = {f["name"]: f for f in doc["schema"]["fields"]}
    assert fields["mean radius"]["constraints"] == {"required": True, "minimum": 0, "maximum": 50}
    assert fields["age"]["constraints"] == {"minimum": 18, "maximum": 120}
    assert fields["smoker"]["constraints"] == {"enum": [True, False]}
    assert fields["diagnosis"]["constraints"]["enum"] == ["B", "M"]
    assert fields["patient_id"]["constraints"]["pattern"] == "P[0-9]{5}"
    assert parse_contract(doc).kind == "tabular"


def test_duplicate_field_names_are_named() -> None:
    errors = form_errors(kind="tabular", settings={}, fields=[field("age"), field("bmi"), field("age")])
    assert errors["fields.2.name"] == ["duplicate field name 'age' (rows 1 and 3)"]


def test_a_label_that_is_not_a_field_is_refused() -> None:
    errors = form_errors(kind="tabular", settings={"label": "outcome"}, fields=[field("age"), field("bmi")])
    assert errors["label"] == ["the label 'outcome' is not one of the fields (age, bmi)"]


@pytest.mark.parametrize(
    ("row", "key", "text"),
    [
        (field("age", "integer", minimum="eighteen"), "fields.0.minimum", "expected a whole number, got 'eighteen'"),
        (field("bmi", maximum="x"), "fields.0.maximum", "expected a number, got 'x'"),
        (field("bmi", maximum="nan"), "fields.0.maximum", "expected a finite number, got 'nan'"),
        (field("bmi", minimum="-inf"), "fields.0.minimum", "expected a finite number, got '-inf'"),
        (field("bmi", enum="1, inf"), "fields.0.enum", "every allowed value must be a valid number"),
        (field("name", "string", minimum="3"), "fields.0.minimum", "only number, integer and date fields have bounds"),
        (field("age", "integer", enum="1, two"), "fields.0.enum", "every allowed value must be a valid integer"),
        ({"name": "", "type": "number", "minimum": "1"}, "fields.0.name", "a field needs a name"),
    ],
)
def test_bad_cells_are_reported_on_their_row(row: dict[str, Any], key: str, text: str) -> None:
    errors = form_errors(kind="tabular", settings={}, fields=[row])
    assert text in errors[key][0]


def test_a_tabular_contract_needs_fields() -> None:
    assert "at least one field" in form_errors(kind="tabular", settings={}, fields=[])["fields"][0]


def test_the_client_parser_judges_what_the_form_cannot() -> None:
    with pytest.raises(ApplicationError) as caught:
        contract_from_form(kind="tabular", settings={}, fields=[field("age", minimum="10", maximum="5")])
    assert caught.value.field == "contract"
    assert any("minimum" in issue and "maximum" in issue for issue in caught.value.extra["issues"])
    with pytest.raises(ApplicationError) as caught:
        contract_from_form(kind="tabular", settings={}, fields=[field("when", "date", minimum="2020-02-30")])
    assert caught.value.extra["issues"]


def test_an_unknown_kind_is_refused() -> None:
    assert "choose a kind of data" in form_errors(kind="video", settings={})["kind"][0]


def test_image_folder_settings_make_a_contract() -> None:
    doc = contract_from_form(
        kind="image-folder",
        settings={
            "classes": "0, 1, 2",
            "extensions": "png, .jpg",
            "image_width": 8,
            "image_height": 8,
            "mode": "L",
            "min_images": 10,
        },
    )
    assert doc == {
        "kind": "image-folder",
        "classes": ["0", "1", "2"],
        "extensions": [".png", ".jpg"],
        "image_size": [8, 8],
        "mode": "L",
        "min_images": 10,
    }
    assert "list the class names" in form_errors(kind="image-folder", settings={"classes": ""})["classes"][0]
    assert (
        "both the width and the height"
        in form_errors(kind="image-folder", settings={"classes": "a", "image_width": 8})["image_width"][0]
    )


def test_numpy_rows_make_a_contract_with_any_size_dimensions() -> None:
    doc = contract_from_form(
        kind="numpy",
        settings={"same_length": True},
        arrays=[
            {"file": "train.npz", "name": "x", "dtype": "float32", "shape": "-1,30"},
            {"file": "train.npz", "name": "y", "dtype": "int64", "shape": "-1"},
        ],
    )
    assert doc["files"] == {
        "train.npz": {"x": {"dtype": "float32", "shape": [None, 30]}, "y": {"dtype": "int64", "shape": [None]}}
    }
    assert doc["same_length"] is True
    errors = form_errors(kind="numpy", settings={}, arrays=[{"file": "a.npz", "name": "x", "shape": "ten"}])
    assert "shape must be sizes separated by commas" in errors["arrays.0.shape"][0]
    errors = form_errors(kind="numpy", settings={}, arrays=[{"name": "x"}, {"name": "x"}])
    assert "listed twice" in errors["arrays.1.name"][0]
    with pytest.raises(ApplicationError) as caught:
        contract_from_form(kind="numpy", settings={}, arrays=[{"file": "a.npz", "name": "x", "dtype": "object"}])
    assert "Python objects" in caught.value.message


def test_contracts_round_trip_through_the_form(breast_cancer_contract: dict[str, Any]) -> None:
    data = contract_to_form(breast_cancer_contract)
    assert data is not None and data.kind == "tabular"
    rebuilt = contract_from_form(kind=data.kind, settings=data.settings, fields=data.fields, arrays=data.arrays)
    assert parse_contract(rebuilt) == parse_contract(breast_cancer_contract)
    numpy_doc = {"kind": "numpy", "files": {"a.npz": {"x": {"dtype": "float32", "shape": [None, 3]}}}}
    assert contract_to_form(numpy_doc) is not None


def test_a_contract_the_form_cannot_show_is_left_to_json() -> None:
    doc = {"kind": "tabular", "delimiter": ";", "schema": {"fields": [{"name": "a", "type": "number"}]}}
    assert contract_to_form(doc) is None


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_contract_with_a_number_json_cannot_carry_is_refused_saying_where(number: str) -> None:
    """Python's json reads NaN and Infinity; PostgreSQL cannot store them and JSON has none."""
    text = (
        '{"kind": "tabular", "schema": {"fields": [{"name": "age", "type": "number", '
        f'"constraints": {{"minimum": 0, "maximum": {number}}}}}]}}}}'
    )
    with pytest.raises(ApplicationError) as caught:
        contract_from_json(text)
    assert caught.value.field == "contract"
    assert "contract.schema.fields[0].constraints.maximum is not a finite number" in caught.value.message


def test_json_import_names_syntax_errors_and_contract_issues() -> None:
    with pytest.raises(ApplicationError) as caught:
        contract_from_json('{"kind": "tabular",')
    assert "not valid JSON" in caught.value.message and "line 1" in caught.value.message
    with pytest.raises(ApplicationError) as caught:
        contract_from_json('{"kind": "tabular", "min_row": 3, "schema": {"fields": [{"name": "a"}]}}')
    assert "unknown key 'min_row'" in caught.value.message
    with pytest.raises(ApplicationError):
        contract_from_json("[1, 2]")


def test_readable_table(breast_cancer_contract: dict[str, Any]) -> None:
    settings = dict(contract_settings(breast_cancer_contract))
    assert settings["Kind"] == "tabular"
    rows = contract_rows(breast_cancer_contract)
    assert any(row["name"].endswith("(label)") for row in rows)


def test_none_kind_is_a_contract_that_checks_nothing() -> None:
    doc = contract_from_form(kind="none", settings={"description": "The app downloads its own partition"})
    assert doc == {"kind": "none", "description": "The app downloads its own partition"}
    assert parse_contract(doc).kind == "none"
    form = contract_to_form(doc)
    assert form is not None and form.kind == "none"
    assert contract_from_json('{"kind": "none"}') == {"kind": "none"}
    assert ("Checked", "nothing: the app loads its own data, so the client checks no data before joining") in (
        contract_settings(doc)
    )
    with pytest.raises(ApplicationError, match="unknown key 'files'"):
        contract_from_json('{"kind": "none", "files": "*.csv"}')
