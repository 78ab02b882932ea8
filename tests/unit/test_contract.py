"""Tests for the data-contract checker the data holder's client runs before joining."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from client_image.contract import (
    ContractSpecError,
    DataContract,
    DataContractError,
    Problem,
    TabularContract,
    check_data,
    check_or_raise,
    main,
    parse_contract,
)

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

HEADER = ["id", "mean radius", "diagnosis", "visit", "smoker"]


def tabular_contract(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "tabular",
        "files": "*.csv",
        "min_rows": 20,
        "label": "diagnosis",
        "schema": {
            "fields": [
                {"name": "id", "type": "integer", "constraints": {"required": True, "unique": True}},
                {"name": "mean radius", "type": "number", "constraints": {"minimum": 0, "maximum": 50}},
                {"name": "diagnosis", "type": "string", "constraints": {"required": True, "enum": ["B", "M"]}},
                {"name": "visit", "type": "date"},
                {"name": "smoker", "type": "boolean"},
            ],
            "missingValues": ["", "NA"],
        },
    }
    spec.update(overrides)
    return spec


def good_rows(n: int = 30) -> list[list[str]]:
    return [
        [str(i), f"{10 + i * 0.5:.2f}", "BM"[i % 2], f"2024-01-{i % 28 + 1:02d}", "true" if i % 3 else "false"]
        for i in range(1, n + 1)
    ]


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER if header is None else header)
        writer.writerows(rows)
    return path


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# --------------------------------------------------------------------------
# Tabular
# --------------------------------------------------------------------------


def test_valid_tabular_folder_passes(tmp_path: Path) -> None:
    write_csv(tmp_path / "hospital.csv", good_rows(30))
    (tmp_path / ".hidden.csv").write_text('garbage,"\n', encoding="utf-8")
    (tmp_path / "README.txt").write_text("not data", encoding="utf-8")

    assert check_data(tabular_contract(), tmp_path) == []
    summary = check_or_raise(tabular_contract(), tmp_path)
    assert (summary.kind, summary.files, summary.rows) == ("tabular", 1, 30)
    assert "30 rows" in str(summary)


def test_missing_values_and_column_order_are_accepted(tmp_path: Path) -> None:
    rows = [[r[4], r[3], r[2], r[1], r[0]] for r in good_rows(25)]
    rows[3][0] = "NA"  # smoker is optional
    rows[4][3] = ""  # mean radius is optional
    write_csv(tmp_path / "a.csv", rows, header=HEADER[::-1])
    assert check_data(tabular_contract(), tmp_path) == []


def test_wrong_type_reports_spreadsheet_row_17(tmp_path: Path) -> None:
    rows = good_rows(30)
    rows[15][1] = "abc"  # header is row 1, so rows[15] is spreadsheet row 17
    write_csv(tmp_path / "hospital.csv", rows)

    problem = only(check_data(tabular_contract(), tmp_path))
    assert (problem.file, problem.row, problem.column) == ("hospital.csv", 17, "mean radius")
    assert "expected a number" in problem.message and "'abc'" in problem.message
    assert str(problem) == ("hospital.csv, row 17, column 'mean radius': expected a number, got 'abc'")


def test_row_numbers_follow_records_not_physical_lines(tmp_path: Path) -> None:
    rows = good_rows(25)
    rows[0][2] = "B"
    rows[0].append("")
    header = [*HEADER, "notes"]
    for row in rows:
        row[5:] = ["line one\nline two"]
    rows[4][0] = "x"  # spreadsheet row 6, after several multi-line cells
    write_csv(tmp_path / "a.csv", rows, header=header)

    problem = only(check_data(tabular_contract(extra_columns="allow"), tmp_path))
    assert (problem.row, problem.column) == (6, "id")
    assert "expected an integer" in problem.message


def test_missing_column_is_named_with_columns_found(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "mean radius"]
    write_csv(tmp_path / "hospital.csv", [r[:1] + r[2:] for r in good_rows(30)], header=header)

    problem = only(check_data(tabular_contract(), tmp_path))
    assert (problem.file, problem.row, problem.column) == ("hospital.csv", 1, "mean radius")
    assert "missing column 'mean radius'" in problem.message
    assert "'id', 'diagnosis', 'visit', 'smoker'" in problem.message


def test_missing_column_hints_at_case_mismatch(tmp_path: Path) -> None:
    header = ["ID", *HEADER[1:]]
    write_csv(tmp_path / "a.csv", good_rows(25), header=header)

    problems = check_data(tabular_contract(), tmp_path)
    missing = [p for p in problems if p.column == "id"]
    assert missing and "found 'ID'" in missing[0].message
    assert any(p.column == "ID" and "unexpected column" in p.message for p in problems)


def test_extra_column_rejected_unless_allowed(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", [[*r, "Ann"] for r in good_rows(25)], header=[*HEADER, "name"])

    problem = only(check_data(tabular_contract(), tmp_path))
    assert (problem.row, problem.column) == (1, "name")
    assert "unexpected column 'name'" in problem.message and "'mean radius'" in problem.message
    assert check_data(tabular_contract(extra_columns="allow"), tmp_path) == []


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    problem = only(check_data(tabular_contract(), tmp_path))
    assert (problem.file, problem.row, problem.column) == ("", None, None)
    assert "no CSV files matching '*.csv' in the data folder" in problem.message
    assert "empty" in problem.message


def test_folder_without_csv_says_what_it_contains(tmp_path: Path) -> None:
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    (tmp_path / "images").mkdir()

    problem = only(check_data(tabular_contract(), tmp_path))
    assert "no CSV files matching '*.csv'" in problem.message
    assert "data.xlsx" in problem.message and "images/" in problem.message


def test_missing_data_folder(tmp_path: Path) -> None:
    problem = only(check_data(tabular_contract(), tmp_path / "nope"))
    assert "does not exist" in problem.message


def test_out_of_range_value(tmp_path: Path) -> None:
    rows = good_rows(30)
    rows[4][1] = "-1.5"
    rows[5][1] = "NaN"  # a bounded column must hold real numbers
    write_csv(tmp_path / "a.csv", rows)

    low, nan = check_data(tabular_contract(), tmp_path)
    assert (low.row, low.column) == (6, "mean radius")
    assert low.message == "expected a value >= 0, got '-1.5'"
    assert nan.row == 7 and ">= 0" in nan.message


def test_enum_violation_lists_allowed_values(tmp_path: Path) -> None:
    rows = good_rows(30)
    rows[9][2] = "benign"
    write_csv(tmp_path / "a.csv", rows)

    problem = only(check_data(tabular_contract(), tmp_path))
    assert (problem.row, problem.column) == (11, "diagnosis")
    assert problem.message == "expected one of 'B', 'M', got 'benign'"


def test_required_unique_date_and_boolean_cells(tmp_path: Path) -> None:
    rows = good_rows(30)
    rows[0][2] = ""  # row 2: required label empty
    rows[1][0] = "1"  # row 3: duplicate id of row 2
    rows[2][3] = "03/04/2024"  # row 4: not ISO
    rows[3][3] = "2024-02-30"  # row 5: not a real day
    rows[4][4] = "yes"  # row 6
    write_csv(tmp_path / "a.csv", rows)

    problems = {(p.row, p.column): p.message for p in check_data(tabular_contract(), tmp_path)}
    assert problems == {
        (2, "diagnosis"): "a value is required (expected text), got an empty cell",
        (3, "id"): "expected a unique value, but '1' also appears in row 2",
        (4, "visit"): "expected a date as YYYY-MM-DD, got '03/04/2024'",
        (5, "visit"): "expected a valid date as YYYY-MM-DD, got '2024-02-30'",
        (6, "smoker"): "expected a boolean (true/True/TRUE/1 or false/False/FALSE/0), got 'yes'",
    }


def test_pattern_and_length_constraints(tmp_path: Path) -> None:
    spec = {
        "kind": "tabular",
        "schema": {
            "fields": [
                {"name": "code", "constraints": {"pattern": "[A-Z]{2}[0-9]+", "maxLength": 5}},
            ]
        },
    }
    write_csv(tmp_path / "a.csv", [["AB12"], ["ab12"], ["AB1234"]], header=["code"])

    bad_pattern, too_long = check_data(spec, tmp_path)
    assert bad_pattern.row == 3 and "pattern '[A-Z]{2}[0-9]+'" in bad_pattern.message
    assert too_long.row == 4 and "at most 5 characters" in too_long.message


def test_number_parsing_is_strict(tmp_path: Path) -> None:
    spec = {"kind": "tabular", "schema": {"fields": [{"name": "x", "type": "number"}]}}
    cells = ["1", "-2.5", "1e3", ".5", "INF", "NaN", "1,5", " 3", "1_000", "nan", "0x10"]
    write_csv(tmp_path / "a.csv", [[c] for c in cells], header=["x"])

    bad_rows = [p.row for p in check_data(spec, tmp_path)]
    assert bad_rows == [8, 9, 10, 11, 12]


def test_too_few_rows_counts_across_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", good_rows(5))
    write_csv(tmp_path / "b.csv", good_rows(11)[5:])

    problem = only(check_data(tabular_contract(min_rows=50), tmp_path))
    assert problem.file == "" and problem.row is None
    assert problem.message == "expected at least 50 data rows in total, found 11 in 2 files"


def test_unique_is_checked_across_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", good_rows(15))
    write_csv(tmp_path / "b.csv", good_rows(15)[-1:])

    problem = only(check_data(tabular_contract(min_rows=1), tmp_path))
    assert (problem.file, problem.row, problem.column) == ("b.csv", 2, "id")
    assert "also appears in a.csv, row 16" in problem.message


def test_ragged_row_is_reported_with_its_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", good_rows(25))
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[9] += ",extra"  # spreadsheet row 10
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    problem = only(check_data(tabular_contract(), tmp_path))
    assert (problem.row, problem.column) == (10, None)
    assert problem.message == "expected 5 cells (one per header column), got 6"


def test_unclosed_quote_is_malformed_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", good_rows(25))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('26,"12.5,B,2024-01-01,true\n')

    problem = only(check_data(tabular_contract(), tmp_path))
    assert problem.row == 27 and "malformed CSV" in problem.message
    assert "quoted value is never closed" in problem.message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", good_rows(25))
    path.write_bytes(path.read_bytes() + "26,1,B,2024-01-01,true,café\n".encode("latin-1"))

    problems = check_data(tabular_contract(), tmp_path)
    assert any("not valid UTF-8" in p.message and "line 27" in p.message for p in problems)


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("", encoding="utf-8")
    write_csv(tmp_path / "b.csv", [])

    empty, too_few = check_data(tabular_contract(), tmp_path)
    assert empty.file == "a.csv" and "file is empty" in empty.message
    assert "'mean radius'" in empty.message
    assert "found 0" in too_few.message


def test_max_problems_caps_list_but_counts_total(tmp_path: Path) -> None:
    rows = good_rows(100)
    for row in rows:
        row[1] = "oops"
    write_csv(tmp_path / "a.csv", rows)

    problems = check_data(tabular_contract(), tmp_path, max_problems=5)
    assert len(problems) == 5 and problems.total == 100
    with pytest.raises(DataContractError) as info:
        check_or_raise(tabular_contract(), tmp_path)
    text = str(info.value)
    assert info.value.total == 100 and len(info.value.problems) == 50
    assert "(100 problems)" in text and text.endswith("... and 80 more")
    assert "a.csv, row 2, column 'mean radius': expected a number, got 'oops'" in text


def test_large_csv_is_checked_in_full(tmp_path: Path) -> None:
    # Speed is measured by bench/, not asserted here; this proves every row is read.
    n_rows = 100_000
    header = [f"f{i}" for i in range(30)]
    spec = {
        "kind": "tabular",
        "min_rows": n_rows,
        "schema": {"fields": [{"name": name, "type": "number", "constraints": {"minimum": 0}} for name in header]},
    }
    line = ",".join(f"{i}.25" for i in range(30)) + "\n"
    with (tmp_path / "big.csv").open("w", encoding="utf-8") as handle:
        handle.write(",".join(header) + "\n")
        handle.write(line * n_rows)

    summary = check_or_raise(spec, tmp_path)
    assert summary.rows == n_rows


# --------------------------------------------------------------------------
# Contract parsing
# --------------------------------------------------------------------------


def spec_issues(spec: Any) -> list[str]:
    with pytest.raises(ContractSpecError) as info:
        parse_contract(spec)
    return info.value.issues


def test_duplicate_field_is_rejected() -> None:
    spec = tabular_contract()
    spec["schema"]["fields"].append({"name": "visit", "type": "string"})
    assert spec_issues(spec) == ["field 'visit': duplicate field name in schema.fields"]


def test_label_must_be_a_field() -> None:
    (issue,) = spec_issues(tabular_contract(label="target"))
    assert "label 'target' is not a field" in issue and "mean radius" in issue


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ({"name": "a", "type": "float"}, "field 'a': unknown type 'float'"),
        (
            {"name": "a", "type": "number", "constraints": {"minimum": 5, "maximum": 1}},
            "field 'a': minimum 5 is greater than maximum 1",
        ),
        ({"name": "a", "constraints": {"enum": "B"}}, "field 'a': constraint 'enum' must be a non-empty list"),
        ({"name": "a", "constraints": {"pattern": "(["}}, "field 'a': invalid regex pattern '(['"),
        (
            {"name": "a", "type": "integer", "constraints": {"enum": [1, "two"]}},
            "field 'a': enum value 'two': expected an integer",
        ),
        (
            {"name": "a", "constraints": {"minimum": 1}},
            "field 'a': constraint 'minimum' does not apply to string fields",
        ),
        ({"name": "a", "constraints": {"requried": True}}, "unknown key 'requried'"),
    ],
)
def test_malformed_field_specs(field: dict[str, Any], expected: str) -> None:
    spec = {"kind": "tabular", "schema": {"fields": [field]}}
    (issue,) = spec_issues(spec)
    assert issue.startswith(expected) or expected in issue


def test_every_issue_is_listed_at_once() -> None:
    spec = tabular_contract(label="nope", min_rows=-1)
    spec["schema"]["fields"].append({"name": "id"})
    spec["schema"]["fields"].append({"name": "z", "type": "decimal"})
    issues = spec_issues(spec)
    assert len(issues) == 4
    message = str(ContractSpecError(issues))
    assert "4 issue(s)" in message and "duplicate" in message and "'nope'" in message


def test_unknown_kind_and_bad_json() -> None:
    assert "unknown contract kind" in spec_issues({"kind": "parquet"})[0]
    assert "not valid JSON" in spec_issues('{"kind": ')[0]
    assert "must be a JSON object" in spec_issues("[1, 2]")[0]


def test_contract_from_json_text_and_file(tmp_path: Path) -> None:
    text = json.dumps(tabular_contract())
    path = tmp_path / "contract.json"
    path.write_text(text, encoding="utf-8")

    from_text, from_path = parse_contract(text), parse_contract(path)
    assert isinstance(from_text, DataContract) and from_text == from_path
    assert parse_contract(str(path)) == from_text
    assert from_text.kind == "tabular" and isinstance(from_text.body, TabularContract)
    assert from_text.body.label == "diagnosis"
    assert parse_contract(from_text) is from_text


def test_check_data_raises_for_bad_contract(tmp_path: Path) -> None:
    with pytest.raises(ContractSpecError):
        check_data({"kind": "tabular"}, tmp_path)


# --------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------

IMAGE_CONTRACT: dict[str, Any] = {
    "kind": "image-folder",
    "classes": [str(d) for d in range(10)],
    "extensions": [".png", ".jpg"],
    "image_size": [8, 8],
    "mode": "L",
    "min_images": 3,
}


def save_image(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=0).save(path)


def image_folder(root: Path) -> Path:
    for label, count in (("0", 2), ("3", 2)):  # a non-IID site: most classes absent
        for i in range(count):
            save_image(root / label / f"img{i}.png")
    save_image(root / "3" / "photo.JPG")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "3" / ".thumbs").write_bytes(b"\0")
    return root


def test_valid_image_folder_passes(tmp_path: Path) -> None:
    image_folder(tmp_path)
    assert check_data(IMAGE_CONTRACT, tmp_path) == []
    summary = check_or_raise(IMAGE_CONTRACT, tmp_path)
    assert summary.images == 5 and summary.images_per_class == (("0", 2), ("3", 3))


def test_corrupt_png_is_named(tmp_path: Path) -> None:
    image_folder(tmp_path)
    (tmp_path / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    noise = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    (tmp_path / "0" / "truncated.png").write_bytes(buffer.getvalue()[:70])

    problems = check_data(IMAGE_CONTRACT, tmp_path)
    assert [p.file for p in problems] == ["0/truncated.png", "3/broken.png"]
    assert all("cannot be opened as an image" in p.message for p in problems)
    assert all("expected a valid .png file" in p.message for p in problems)


def test_wrong_size_and_mode(tmp_path: Path) -> None:
    image_folder(tmp_path)
    save_image(tmp_path / "0" / "big.png", size=(16, 12))
    save_image(tmp_path / "3" / "colour.png", mode="RGB")

    size, mode = check_data(IMAGE_CONTRACT, tmp_path)
    assert size.file == "0/big.png" and size.row is None
    assert size.message == "expected 8x8 pixels (width x height), got 16x12"
    assert mode.file == "3/colour.png"
    assert mode.message == "expected image mode 'L' (8-bit grayscale), got 'RGB' (colour)"


def test_unknown_class_folder_and_wrong_extension(tmp_path: Path) -> None:
    image_folder(tmp_path)
    save_image(tmp_path / "cat" / "a.png")
    (tmp_path / "0" / "notes.txt").write_text("hi", encoding="utf-8")
    (tmp_path / "labels.csv").write_text("a,b", encoding="utf-8")

    problems = {p.file: p.message for p in check_data(IMAGE_CONTRACT, tmp_path)}
    assert problems.keys() == {"0/notes.txt", "cat/", "labels.csv"}
    assert "unexpected file type ('.txt'); expected one of .png, .jpg" == problems["0/notes.txt"]
    assert "'cat' is not one of the contract's classes (0, 1, 2" in problems["cat/"]
    assert "expected only class sub-folders" in problems["labels.csv"]


def test_empty_image_folder(tmp_path: Path) -> None:
    problem = only(check_data(IMAGE_CONTRACT, tmp_path))
    assert "the data folder is empty" in problem.message and ".png, .jpg" in problem.message


def test_too_few_images(tmp_path: Path) -> None:
    save_image(tmp_path / "0" / "a.png")
    (tmp_path / "1").mkdir()

    problem = only(check_data(IMAGE_CONTRACT, tmp_path))
    assert "expected at least 3 valid .png, .jpg image(s)" in problem.message
    assert "found 1" in problem.message


def test_min_images_per_class(tmp_path: Path) -> None:
    image_folder(tmp_path)
    spec = {**IMAGE_CONTRACT, "classes": ["0", "3", "7"], "min_images_per_class": 3}

    problems = {p.file: p.message for p in check_data(spec, tmp_path)}
    assert problems == {
        "0/": "expected at least 3 valid images for class '0', found 2",
        "7/": "expected at least 3 valid images for class '7', found 0",
    }


def test_malformed_image_contract() -> None:
    issues = spec_issues({"kind": "image-folder", "classes": ["a", "a", "../x"], "image_size": [8], "mode": "GREY"})
    assert len(issues) == 4
    assert any("'a' is listed twice" in i for i in issues)
    assert any("image_size" in i for i in issues) and any("Pillow image mode" in i for i in issues)


# --------------------------------------------------------------------------
# NumPy
# --------------------------------------------------------------------------

NUMPY_CONTRACT: dict[str, Any] = {
    "kind": "numpy",
    "files": {
        "train.npz": {
            "x": {"dtype": "float32", "shape": [None, 30]},
            "y": {"dtype": "int64", "shape": [None]},
        },
    },
    "same_length": True,
}


def save_npz(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def good_arrays(n: int = 40) -> dict[str, Any]:
    return {"x": np.zeros((n, 30), dtype=np.float32), "y": np.zeros(n, dtype=np.int64)}


def test_valid_npz_passes(tmp_path: Path) -> None:
    save_npz(tmp_path / "train.npz", **good_arrays())
    assert check_data(NUMPY_CONTRACT, tmp_path) == []
    summary = check_or_raise(NUMPY_CONTRACT, tmp_path)
    assert (summary.files, summary.arrays) == (1, 2)


def test_big_endian_arrays_match(tmp_path: Path) -> None:
    arrays = good_arrays()
    save_npz(tmp_path / "train.npz", x=arrays["x"].astype(">f4"), y=arrays["y"])
    assert check_data(NUMPY_CONTRACT, tmp_path) == []


def test_npz_wrong_dtype(tmp_path: Path) -> None:
    save_npz(tmp_path / "train.npz", x=np.zeros((40, 30)), y=np.zeros(40, dtype=np.int64))

    problem = only(check_data(NUMPY_CONTRACT, tmp_path))
    assert problem.file == "train.npz"
    assert problem.message == "array 'x': expected dtype float32, got float64"


def test_npz_wrong_shape(tmp_path: Path) -> None:
    save_npz(tmp_path / "train.npz", x=np.zeros((40, 29), dtype=np.float32), y=np.zeros((40, 1), dtype=np.int64))

    x_shape, y_shape = check_data(NUMPY_CONTRACT, tmp_path)
    assert x_shape.message == "array 'x': expected shape (any, 30), got (40, 29)"
    assert y_shape.message == "array 'y': expected shape (any,), got (40, 1)"


def test_npz_missing_file_and_array(tmp_path: Path) -> None:
    problem = only(check_data(NUMPY_CONTRACT, tmp_path))
    assert problem.file == "train.npz" and "missing file 'train.npz'" in problem.message

    save_npz(tmp_path / "train.npz", x=good_arrays()["x"], labels=good_arrays()["y"])
    problems = [p.message for p in check_data(NUMPY_CONTRACT, tmp_path)]
    assert problems == [
        "unexpected array 'labels'; expected only: x, y",
        "missing array 'y'; the file has: x, labels",
    ]


def test_npz_same_length(tmp_path: Path) -> None:
    save_npz(tmp_path / "train.npz", x=good_arrays(40)["x"], y=good_arrays(39)["y"])

    problem = only(check_data(NUMPY_CONTRACT, tmp_path))
    assert "same length" in problem.message and "x has 40, y has 39" in problem.message


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    save_npz(tmp_path / "train.npz", x=good_arrays()["x"], y=np.array([{"a": 1}], dtype=object))

    problem = only(check_data(NUMPY_CONTRACT, tmp_path))
    assert "array 'y' cannot be read" in problem.message and "Python objects" in problem.message


def test_not_an_npz_file(tmp_path: Path) -> None:
    (tmp_path / "train.npz").write_bytes(b"hello")

    problem = only(check_data(NUMPY_CONTRACT, tmp_path))
    assert problem.file == "train.npz"
    assert problem.message == (
        "cannot be read: it is not a zip archive; expected a .npz archive written by "
        "numpy.savez or numpy.savez_compressed holding arrays x, y"
    )


def test_malformed_numpy_contract() -> None:
    issues = spec_issues(
        {
            "kind": "numpy",
            "files": {
                "train.npy": {"x": {}},
                "a.npz": {"x": {"dtype": "float33"}, "y": {"shape": [-1]}},
            },
        }
    )
    assert len(issues) == 3
    assert "float33" in issues[1] and "'shape'" in issues[2]


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contract = tmp_path / "contract.json"
    contract.write_text(json.dumps(NUMPY_CONTRACT), encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()

    assert main([str(contract), str(data)]) == 1
    assert "missing file 'train.npz'" in capsys.readouterr().err
    save_npz(data / "train.npz", **good_arrays())
    assert main([str(contract), str(data)]) == 0
    assert "numpy data OK" in capsys.readouterr().out
    contract.write_text("{}", encoding="utf-8")
    assert main([str(contract), str(data)]) == 2


# --------------------------------------------------------------------------
# none: apps that bring their own data loading
# --------------------------------------------------------------------------


def test_none_contract_checks_nothing_not_even_the_folder(tmp_path: Path) -> None:
    contract = parse_contract({"kind": "none", "description": "downloads MNIST itself"})
    assert contract.kind == "none" and contract.description == "downloads MNIST itself"
    assert check_data(contract, tmp_path / "no-such-folder") == []
    summary = check_or_raise(contract, tmp_path / "no-such-folder")
    assert "nothing checked" in str(summary) and "loads its own data" in str(summary)


def test_none_contract_refuses_settings_of_other_kinds() -> None:
    issues = spec_issues({"kind": "none", "files": "*.csv"})
    assert len(issues) == 1 and "unknown key 'files'" in issues[0]
