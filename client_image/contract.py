"""Data contracts: check a data holder's data folder before it joins a federation.

A problem setter publishes a *data contract* (JSON) describing what every data
holder's mounted data folder must contain.  The client checks the folder against
it before connecting anywhere, so a data holder learns about a missing column or
a corrupt image from a precise local message instead of a failed training round.

Four kinds of contract are supported (see ``docs/data-contract.md``):

* ``none``: the app brings its own data loading; nothing is checked;
* ``tabular``: CSV files validated against a subset of the Frictionless Table
  Schema spec (https://specs.frictionlessdata.io/table-schema/);
* ``image-folder``: one sub-folder per class label holding image files;
* ``numpy``: ``.npz`` files with named arrays of a given dtype and shape.

Only the standard library, numpy and Pillow are used.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = [
    "ArraySpec",
    "ContractSpecError",
    "DataContract",
    "DataContractError",
    "DataSummary",
    "FieldSpec",
    "ImageFolderContract",
    "NoneContract",
    "NumpyContract",
    "Problem",
    "ProblemList",
    "TabularContract",
    "check_data",
    "check_or_raise",
    "main",
    "parse_contract",
]

KINDS = ("tabular", "image-folder", "numpy", "none")
FIELD_TYPES = ("string", "number", "integer", "boolean", "date")
DEFAULT_TRUE_VALUES = ("true", "True", "TRUE", "1")
DEFAULT_FALSE_VALUES = ("false", "False", "FALSE", "0")

# How many problems DataContractError prints before "... and N more".
_MAX_LINES_SHOWN = 20
# How many directory entries / allowed values to quote in a message.
_MAX_LISTED = 10


# --------------------------------------------------------------------------
# Public result and error types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data, located as precisely as possible."""

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {_quote(self.column)}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ProblemList(list[Problem]):
    """A list of problems that also knows how many were found in total.

    ``check_data`` stops *storing* problems after ``max_problems``, but keeps
    counting them, so ``total`` can be larger than ``len(self)``.
    """

    def __init__(self, problems: Iterable[Problem] = (), total: int | None = None) -> None:
        super().__init__(problems)
        self.total: int = len(self) if total is None else max(total, len(self))


class ContractSpecError(ValueError):
    """The data contract itself is malformed; ``issues`` lists every issue found."""

    def __init__(self, issues: Sequence[str]) -> None:
        self.issues: list[str] = list(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"invalid data contract ({len(self.issues)} issue(s)):\n{lines}")


class DataContractError(Exception):
    """The data folder does not satisfy the contract; ``problems`` says why."""

    def __init__(self, problems: Sequence[Problem], total: int | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.total: int = len(self.problems) if total is None else max(total, len(self.problems))
        super().__init__(self._render())

    def _render(self) -> str:
        count = f"{self.total} problem" + ("" if self.total == 1 else "s")
        lines = [f"the data folder does not match the data contract ({count}):"]
        shown = self.problems[:_MAX_LINES_SHOWN]
        lines.extend(f"  {problem}" for problem in shown)
        if self.total > len(shown):
            lines.append(f"  ... and {self.total - len(shown)} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class DataSummary:
    """What a successful check counted, for a log line."""

    kind: str
    files: int
    rows: int = 0
    images: int = 0
    arrays: int = 0
    images_per_class: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        files = f"{self.files} file" + ("" if self.files == 1 else "s")
        if self.kind == "none":
            return NOTHING_CHECKED
        if self.kind == "tabular":
            return f"tabular data OK: {files}, {self.rows} rows"
        if self.kind == "image-folder":
            per_class = ", ".join(f"{name}: {n}" for name, n in self.images_per_class[:20])
            if len(self.images_per_class) > 20:
                per_class += f", ... ({len(self.images_per_class)} classes)"
            return f"image folder OK: {self.images} images ({per_class})"
        return f"numpy data OK: {files}, {self.arrays} arrays"


# --------------------------------------------------------------------------
# Parsed contract types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One column of a tabular contract (a Frictionless field descriptor)."""

    name: str
    type: str = "string"
    required: bool = False
    unique: bool = False
    minimum: float | int | date | None = None
    maximum: float | int | date | None = None
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    true_values: tuple[str, ...] = DEFAULT_TRUE_VALUES
    false_values: tuple[str, ...] = DEFAULT_FALSE_VALUES


@dataclass(frozen=True)
class TabularContract:
    """CSV files validated against a Frictionless Table Schema subset."""

    files: str
    fields: tuple[FieldSpec, ...]
    min_rows: int = 1
    label: str | None = None
    missing_values: tuple[str, ...] = ("",)
    primary_key: tuple[str, ...] = ()
    extra_columns: Literal["forbid", "allow"] = "forbid"
    delimiter: str = ","


@dataclass(frozen=True)
class ImageFolderContract:
    """One sub-folder per class label, each holding image files."""

    classes: tuple[str, ...]
    extensions: tuple[str, ...]
    image_size: tuple[int, int] | None = None
    mode: str | None = None
    min_images_per_class: int = 0
    min_images: int = 1


@dataclass(frozen=True)
class ArraySpec:
    """Expected dtype and shape of one array; ``None`` means "anything"."""

    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None


@dataclass(frozen=True)
class NumpyContract:
    """``.npz`` files holding named arrays."""

    files: tuple[tuple[str, tuple[tuple[str, ArraySpec], ...]], ...]
    same_length: bool = False
    extra_arrays: Literal["forbid", "allow"] = "forbid"


@dataclass(frozen=True)
class NoneContract:
    """The app brings its own data loading (it downloads or generates its data): nothing is checked."""


# What a check of a `none` contract says, on the client and the join page alike.
NOTHING_CHECKED = "nothing checked: the app loads its own data (data contract kind 'none')"

ContractBody = TabularContract | ImageFolderContract | NumpyContract | NoneContract


@dataclass(frozen=True)
class DataContract:
    """A validated data contract."""

    kind: str
    body: ContractBody
    description: str = ""


ContractLike = DataContract | Mapping[str, Any] | str | Path


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"


def _show(value: object, limit: int = 40) -> str:
    """Quote a found value for a message, shortening long ones."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _list(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(_quote(item) for item in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown or "(none)"


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _visible_entries(folder: Path) -> list[str]:
    """Top-level, non-hidden entry names, directories marked with a slash."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [e.name + ("/" if e.is_dir() else "") for e in entries if not e.name.startswith(".")]


def _describe_folder(folder: Path) -> str:
    entries = _visible_entries(folder)
    if not entries:
        return "the data folder is empty"
    return f"the data folder contains: {', '.join(entries[:_MAX_LISTED])}" + (
        f", ... ({len(entries) - _MAX_LISTED} more)" if len(entries) > _MAX_LISTED else ""
    )


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `"min_rows": true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _safe_relative(path: str) -> bool:
    p = Path(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts and "\\" not in path


class _Collector:
    """Stores up to ``limit`` problems but counts all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[Problem] = []
        self.total = 0

    def add(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(Problem(file, row, column, message))

    def result(self) -> ProblemList:
        return ProblemList(self.items, self.total)


# --------------------------------------------------------------------------
# Contract parsing
# --------------------------------------------------------------------------

_COMMON_KEYS = {"kind", "description", "title"}
_TABULAR_KEYS = _COMMON_KEYS | {
    "files",
    "min_rows",
    "label",
    "schema",
    "extra_columns",
    "delimiter",
}
_IMAGE_KEYS = _COMMON_KEYS | {
    "classes",
    "extensions",
    "image_size",
    "mode",
    "min_images_per_class",
    "min_images",
}
_NUMPY_KEYS = _COMMON_KEYS | {"files", "same_length", "extra_arrays"}
_NONE_KEYS = _COMMON_KEYS
_SCHEMA_KEYS = {"fields", "missingValues", "primaryKey"}
_FIELD_KEYS = {
    "name",
    "type",
    "format",
    "constraints",
    "title",
    "description",
    "example",
    "trueValues",
    "falseValues",
}
_CONSTRAINT_KEYS = {
    "required",
    "unique",
    "minimum",
    "maximum",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
}


def _load_spec(spec: ContractLike) -> Any:
    if isinstance(spec, Path):
        try:
            text = spec.read_text(encoding="utf-8")
        except OSError as exc:
            raise ContractSpecError([f"cannot read contract file {spec}: {exc}"]) from exc
        return _load_json(text, source=str(spec))
    if isinstance(spec, str):
        if not spec.lstrip().startswith(("{", "[")):
            # A str that is not a JSON object is most likely a path.
            return _load_spec(Path(spec))
        return _load_json(spec, source="contract")
    return spec


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractSpecError(
            [f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"]
        ) from exc


def parse_contract(spec: ContractLike) -> DataContract:
    """Validate a data contract and return it parsed.

    ``spec`` is a dict, JSON text, or a path (``Path``, or a ``str`` that does
    not start with ``{``) to a ``.json`` file.  An already parsed
    ``DataContract`` is returned unchanged.  Raises ``ContractSpecError``
    listing every issue found.
    """
    if isinstance(spec, DataContract):
        return spec
    data = _load_spec(spec)
    if not isinstance(data, Mapping):
        raise ContractSpecError([f"the contract must be a JSON object, got {type(data).__name__}"])
    issues: list[str] = []
    kind = data.get("kind")
    description = data.get("description", "")
    if not isinstance(description, str):
        issues.append("'description' must be a string")
        description = ""
    body: ContractBody | None
    if kind == "tabular":
        body = _parse_tabular(data, issues)
    elif kind == "image-folder":
        body = _parse_image_folder(data, issues)
    elif kind == "numpy":
        body = _parse_numpy(data, issues)
    elif kind == "none":
        _check_keys(data, _NONE_KEYS, "none contract", issues)
        body = NoneContract()
    else:
        got = "no 'kind'" if kind is None else f"kind {kind!r}"
        issues.append(f"unknown contract kind: got {got}, expected one of {', '.join(KINDS)}")
        body = None
    if issues or body is None:
        raise ContractSpecError(issues)
    return DataContract(kind=str(kind), body=body, description=description)


def _check_keys(obj: Mapping[str, Any], allowed: set[str], where: str, issues: list[str]) -> None:
    for key in obj:
        if key not in allowed:
            issues.append(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _int_setting(data: Mapping[str, Any], key: str, default: int, minimum: int, issues: list[str]) -> int:
    value = data.get(key, default)
    if not _is_int(value) or value < minimum:
        issues.append(f"{key!r} must be an integer >= {minimum}, got {value!r}")
        return default
    return int(value)


def _choice_setting(data: Mapping[str, Any], key: str, choices: tuple[str, ...], issues: list[str]) -> str:
    value = data.get(key, choices[0])
    if value not in choices:
        issues.append(f"{key!r} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return choices[0]
    return str(value)


def _parse_tabular(data: Mapping[str, Any], issues: list[str]) -> TabularContract:
    _check_keys(data, _TABULAR_KEYS, "tabular contract", issues)
    files = data.get("files", "*.csv")
    if not isinstance(files, str) or not _safe_relative(files):
        issues.append(f"'files' must be a relative glob pattern such as '*.csv', got {files!r}")
        files = "*.csv"
    min_rows = _int_setting(data, "min_rows", 1, 0, issues)
    extra = _choice_setting(data, "extra_columns", ("forbid", "allow"), issues)
    delimiter = data.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
        issues.append(f"'delimiter' must be a single character such as ',', got {delimiter!r}")
        delimiter = ","

    schema = data.get("schema")
    fields: list[FieldSpec] = []
    declared: list[str] = []
    missing_values: tuple[str, ...] = ("",)
    primary_key: tuple[str, ...] = ()
    if not isinstance(schema, Mapping):
        issues.append("'schema' must be an object with a 'fields' list (a Frictionless Table Schema)")
    else:
        _check_keys(schema, _SCHEMA_KEYS, "schema", issues)
        raw_fields = schema.get("fields")
        if not isinstance(raw_fields, list) or not raw_fields:
            issues.append("'schema.fields' must be a non-empty list of field descriptors")
            raw_fields = []
        for index, raw in enumerate(raw_fields):
            name = raw.get("name") if isinstance(raw, Mapping) else None
            if isinstance(name, str) and name in declared:
                issues.append(f"field {name!r}: duplicate field name in schema.fields")
                continue
            if isinstance(name, str) and name:
                declared.append(name)
            parsed = _parse_field(raw, index, issues)
            if parsed is not None:
                fields.append(parsed)
        mv = schema.get("missingValues", [""])
        if not isinstance(mv, list) or not all(isinstance(v, str) for v in mv):
            issues.append(f"'schema.missingValues' must be a list of strings, got {mv!r}")
        else:
            missing_values = tuple(mv)
        pk = schema.get("primaryKey", [])
        pk_list = [pk] if isinstance(pk, str) else pk
        if not isinstance(pk_list, list) or not all(isinstance(v, str) for v in pk_list):
            issues.append(f"'schema.primaryKey' must be a field name or list of names, got {pk!r}")
        else:
            for name in pk_list:
                if name not in declared:
                    issues.append(f"'schema.primaryKey' names {name!r}, which is not a field")
            primary_key = tuple(pk_list)

    # Judge the label against every declared name, even fields with other issues.
    names = declared
    label = data.get("label")
    if label is not None and not isinstance(label, str):
        issues.append(f"'label' must be a field name (string), got {label!r}")
        label = None
    elif label is not None and names and label not in names:
        issues.append(f"label {label!r} is not a field in schema.fields (fields: {', '.join(names)})")

    # A primary key implies required + unique (Frictionless spec).
    if len(primary_key) == 1:
        fields = [replace(f, required=True, unique=True) if f.name == primary_key[0] else f for f in fields]
    elif primary_key:
        fields = [replace(f, required=True) if f.name in primary_key else f for f in fields]
    return TabularContract(
        files=files,
        fields=tuple(fields),
        min_rows=min_rows,
        label=label,
        missing_values=missing_values,
        primary_key=primary_key if len(primary_key) > 1 else (),
        extra_columns=extra,  # type: ignore[arg-type]
        delimiter=delimiter,
    )


def _parse_field(raw: Any, index: int, issues: list[str]) -> FieldSpec | None:
    if not isinstance(raw, Mapping):
        issues.append(f"schema.fields[{index}] must be an object, got {raw!r}")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        issues.append(f"schema.fields[{index}] needs a non-empty string 'name', got {name!r}")
        return None
    where = f"field {name!r}"
    start = len(issues)
    _check_keys(raw, _FIELD_KEYS, where, issues)
    ftype = raw.get("type", "string")
    if ftype not in FIELD_TYPES:
        issues.append(f"{where}: unknown type {ftype!r} (supported: {', '.join(FIELD_TYPES)})")
        return None
    fmt = raw.get("format", "default")
    if fmt not in ("default", "any") and not (ftype == "string" and fmt in ("email", "uri")):
        issues.append(f"{where}: format {fmt!r} is not supported (use 'default')")

    true_values = _string_list(raw, "trueValues", DEFAULT_TRUE_VALUES, where, issues)
    false_values = _string_list(raw, "falseValues", DEFAULT_FALSE_VALUES, where, issues)
    if ftype != "boolean" and ("trueValues" in raw or "falseValues" in raw):
        issues.append(f"{where}: trueValues/falseValues only apply to boolean fields")
    if set(true_values) & set(false_values):
        issues.append(f"{where}: trueValues and falseValues overlap")

    constraints = raw.get("constraints", {})
    if not isinstance(constraints, Mapping):
        issues.append(f"{where}: 'constraints' must be an object, got {constraints!r}")
        constraints = {}
    _check_keys(constraints, _CONSTRAINT_KEYS, f"{where} constraints", issues)

    def flag(key: str) -> bool:
        value = constraints.get(key, False)
        if not isinstance(value, bool):
            issues.append(f"{where}: constraint {key!r} must be true or false, got {value!r}")
            return False
        return value

    required = flag("required")
    unique = flag("unique")

    # A parser that turns a contract value (JSON or string) into the field's type.
    def typed(key: str, value: Any) -> Any:
        if ftype in ("number", "integer") and _is_number(value):
            if ftype == "integer" and not (_is_int(value) or float(value).is_integer()):
                raise _CellError(f"expected an integer, got {value!r}")
            return value
        if ftype == "boolean" and isinstance(value, bool):
            return value
        if not isinstance(value, str):
            raise _CellError(f"expected a {ftype} value, got {value!r}")
        return _make_parser(ftype, true_values, false_values)(value)

    bounds: dict[str, Any] = {}
    for key in ("minimum", "maximum"):
        if key not in constraints:
            continue
        if ftype not in ("number", "integer", "date"):
            issues.append(f"{where}: constraint {key!r} does not apply to {ftype} fields")
            continue
        try:
            bounds[key] = typed(key, constraints[key])
        except _CellError as exc:
            issues.append(f"{where}: constraint {key!r}: {exc}")
    if "minimum" in bounds and "maximum" in bounds and bounds["minimum"] > bounds["maximum"]:
        issues.append(f"{where}: minimum {constraints['minimum']!r} is greater than maximum {constraints['maximum']!r}")

    lengths: dict[str, int] = {}
    for key in ("minLength", "maxLength"):
        if key not in constraints:
            continue
        value = constraints[key]
        if ftype != "string":
            issues.append(f"{where}: constraint {key!r} only applies to string fields")
        elif not _is_int(value) or value < 0:
            issues.append(f"{where}: constraint {key!r} must be an integer >= 0, got {value!r}")
        else:
            lengths[key] = value
    if lengths.get("minLength", 0) > lengths.get("maxLength", sys.maxsize):
        issues.append(f"{where}: minLength {lengths['minLength']} is greater than maxLength {lengths['maxLength']}")

    enum: tuple[Any, ...] | None = None
    if "enum" in constraints:
        values = constraints["enum"]
        if not isinstance(values, list) or not values:
            issues.append(f"{where}: constraint 'enum' must be a non-empty list, got {values!r}")
        else:
            parsed: list[Any] = []
            for value in values:
                try:
                    parsed.append(typed("enum", value))
                except _CellError as exc:
                    issues.append(f"{where}: enum value {value!r}: {exc}")
            enum = tuple(parsed)

    pattern = constraints.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            issues.append(f"{where}: constraint 'pattern' must be a string, got {pattern!r}")
            pattern = None
        else:
            try:
                re.compile(pattern)
            except re.error as exc:
                issues.append(f"{where}: invalid regex pattern {pattern!r}: {exc}")
                pattern = None

    if len(issues) > start:
        return None
    return FieldSpec(
        name=name,
        type=ftype,
        required=required,
        unique=unique,
        minimum=bounds.get("minimum"),
        maximum=bounds.get("maximum"),
        enum=enum,
        pattern=pattern,
        min_length=lengths.get("minLength"),
        max_length=lengths.get("maxLength"),
        true_values=true_values,
        false_values=false_values,
    )


def _string_list(
    raw: Mapping[str, Any], key: str, default: tuple[str, ...], where: str, issues: list[str]
) -> tuple[str, ...]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        issues.append(f"{where}: {key!r} must be a non-empty list of strings, got {value!r}")
        return default
    return tuple(value)


def _parse_image_folder(data: Mapping[str, Any], issues: list[str]) -> ImageFolderContract:
    _check_keys(data, _IMAGE_KEYS, "image-folder contract", issues)
    classes = data.get("classes")
    class_list: list[str] = []
    if not isinstance(classes, list) or not classes:
        issues.append(f"'classes' must be a non-empty list of class names, got {classes!r}")
    else:
        for name in classes:
            if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
                issues.append(
                    f"class {name!r} cannot be a folder name (use a non-empty string "
                    "without slashes that does not start with '.')"
                )
            elif name in class_list:
                issues.append(f"class {name!r} is listed twice in 'classes'")
            else:
                class_list.append(name)

    extensions = data.get("extensions", [".png", ".jpg", ".jpeg"])
    ext_list: list[str] = []
    if not isinstance(extensions, list) or not extensions:
        issues.append(f"'extensions' must be a non-empty list such as ['.png'], got {extensions!r}")
    else:
        for ext in extensions:
            if not isinstance(ext, str) or not ext.strip(".") or "/" in ext:
                issues.append(f"extension {ext!r} is not a file extension such as '.png'")
                continue
            ext_list.append("." + ext.lower().lstrip("."))

    size = data.get("image_size")
    image_size: tuple[int, int] | None = None
    if size is not None:
        if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
            issues.append(f"'image_size' must be [width, height] with positive integers, got {size!r}")
        else:
            image_size = (int(size[0]), int(size[1]))

    mode = data.get("mode")
    if mode is not None and mode not in Image.MODES:
        issues.append(f"'mode' must be a Pillow image mode such as 'L' or 'RGB', got {mode!r}")
        mode = None

    return ImageFolderContract(
        classes=tuple(class_list),
        extensions=tuple(dict.fromkeys(ext_list)),
        image_size=image_size,
        mode=mode,
        min_images_per_class=_int_setting(data, "min_images_per_class", 0, 0, issues),
        min_images=_int_setting(data, "min_images", 1, 1, issues),
    )


def _parse_numpy(data: Mapping[str, Any], issues: list[str]) -> NumpyContract:
    _check_keys(data, _NUMPY_KEYS, "numpy contract", issues)
    same_length = data.get("same_length", False)
    if not isinstance(same_length, bool):
        issues.append(f"'same_length' must be true or false, got {same_length!r}")
        same_length = False
    extra = _choice_setting(data, "extra_arrays", ("forbid", "allow"), issues)
    files = data.get("files")
    parsed_files: list[tuple[str, tuple[tuple[str, ArraySpec], ...]]] = []
    if not isinstance(files, Mapping) or not files:
        issues.append(f"'files' must be an object mapping .npz file names to their arrays, got {files!r}")
        files = {}
    for fname, arrays in files.items():
        if not _safe_relative(fname) or not fname.endswith(".npz") or _is_hidden(Path(fname)):
            issues.append(f"file {fname!r}: must be a relative path ending in '.npz', not hidden")
            continue
        if not isinstance(arrays, Mapping) or not arrays:
            issues.append(f"file {fname!r}: must map array names to {{dtype, shape}}, got {arrays!r}")
            continue
        specs: list[tuple[str, ArraySpec]] = []
        for aname, aspec in arrays.items():
            parsed = _parse_array_spec(f"file {fname!r} array {aname!r}", aspec, issues)
            if parsed is not None:
                specs.append((aname, parsed))
        parsed_files.append((fname, tuple(specs)))
    return NumpyContract(
        files=tuple(parsed_files),
        same_length=same_length,
        extra_arrays=extra,  # type: ignore[arg-type]
    )


def _parse_array_spec(where: str, raw: Any, issues: list[str]) -> ArraySpec | None:
    if not isinstance(raw, Mapping):
        issues.append(f'{where}: must be an object such as {{"dtype": "float32"}}, got {raw!r}')
        return None
    _check_keys(raw, {"dtype", "shape"}, where, issues)
    dtype = raw.get("dtype")
    if dtype is not None:
        try:
            resolved = np.dtype(dtype)
        except TypeError:
            issues.append(f"{where}: unknown numpy dtype {dtype!r}")
            return None
        if resolved.hasobject:
            issues.append(f"{where}: dtype {dtype!r} holds Python objects, which cannot be loaded safely")
            return None
        dtype = resolved.name if resolved.fields is None else str(resolved)
    shape = raw.get("shape")
    if shape is not None:
        sizes_ok = isinstance(shape, list) and all(v is None or (_is_int(v) and v >= 0) for v in shape)
        if not sizes_ok:
            issues.append(f"{where}: 'shape' must be a list of sizes (integers >= 0, or null for any), got {shape!r}")
            return None
        shape = tuple(shape)
    return ArraySpec(dtype=dtype, shape=shape)


# --------------------------------------------------------------------------
# Tabular checking
# --------------------------------------------------------------------------


class _CellError(Exception):
    """A cell value is invalid; the message says what was expected."""


_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Frictionless spells the non-finite numbers this way, and only this way.
_SPECIAL_NUMBERS = {"NaN": math.nan, "INF": math.inf, "-INF": -math.inf}


def _parse_number(cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    else:
        # float() is fast but lenient (" 1", "1_0", "nan", non-ASCII digits), so only a
        # finite result from plain ASCII text skips the strict regex.
        if (
            -math.inf < value < math.inf
            and cell.isascii()
            and "_" not in cell
            and not cell[0].isspace()
            and not cell[-1].isspace()
        ):
            return value
    if _NUMBER_RE.fullmatch(cell):
        return float(cell)
    special = _SPECIAL_NUMBERS.get(cell)
    if special is not None:
        return special
    raise _CellError(f"expected a number, got {_show(cell)}")


def _parse_integer(cell: str) -> int:
    # int() also accepts " 1", "1_0" and non-ASCII digits; the spec does not.
    if cell and cell.isascii() and "_" not in cell and not cell[0].isspace() and not cell[-1].isspace():
        try:
            return int(cell)
        except ValueError:  # not digits, or more digits than int() allows
            pass
    raise _CellError(f"expected an integer, got {_show(cell)}")


def _parse_date(cell: str) -> date:
    if _DATE_RE.fullmatch(cell):
        try:
            return date.fromisoformat(cell)
        except ValueError:
            raise _CellError(f"expected a valid date as YYYY-MM-DD, got {_show(cell)}") from None
    raise _CellError(f"expected a date as YYYY-MM-DD, got {_show(cell)}")


def _parse_string(cell: str) -> str:
    return cell


def _make_parser(ftype: str, true_values: Sequence[str], false_values: Sequence[str]) -> Callable[[str], Any]:
    if ftype == "number":
        return _parse_number
    if ftype == "integer":
        return _parse_integer
    if ftype == "date":
        return _parse_date
    if ftype == "boolean":
        lookup = {v: True for v in true_values} | {v: False for v in false_values}
        expected = f"expected a boolean ({'/'.join(true_values)} or {'/'.join(false_values)})"

        def parse_boolean(cell: str) -> bool:
            try:
                return lookup[cell]
            except KeyError:
                raise _CellError(f"{expected}, got {_show(cell)}") from None

        return parse_boolean
    return _parse_string


def _plain(value: Any) -> str:
    """Spell a contract value the way it would appear in a CSV cell."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _make_checker(spec: FieldSpec) -> Callable[[str], Any]:
    """Build a function that parses one cell and raises _CellError if it is invalid."""
    parse = _make_parser(spec.type, spec.true_values, spec.false_values)
    low, high = spec.minimum, spec.maximum
    allowed = frozenset(spec.enum) if spec.enum is not None else None
    regex = re.compile(spec.pattern) if spec.pattern is not None else None
    min_len, max_len = spec.min_length, spec.max_length
    if low is None and high is None and allowed is None and regex is None and min_len is None and max_len is None:
        return parse

    low_text = _plain(low) if low is not None else ""
    high_text = _plain(high) if high is not None else ""
    allowed_text = _list([_plain(v) for v in spec.enum or ()])

    # One closure with inline checks: this runs once per cell, so call overhead matters.
    def check(cell: str) -> Any:
        value = parse(cell)
        # `not >=` so NaN fails too: a bounded column must hold real numbers.
        if low is not None and not value >= low:
            raise _CellError(f"expected a value >= {low_text}, got {_show(cell)}")
        if high is not None and not value <= high:
            raise _CellError(f"expected a value <= {high_text}, got {_show(cell)}")
        if allowed is not None and value not in allowed:
            raise _CellError(f"expected one of {allowed_text}, got {_show(cell)}")
        if regex is not None and not regex.fullmatch(cell):
            raise _CellError(f"expected text matching pattern {spec.pattern!r}, got {_show(cell)}")
        if min_len is not None and len(value) < min_len:
            raise _CellError(f"expected at least {min_len} characters, got {len(value)} ({_show(cell)})")
        if max_len is not None and len(value) > max_len:
            raise _CellError(f"expected at most {max_len} characters, got {len(value)} ({_show(cell)})")
        return value

    return check


_TYPE_WORDS = {
    "string": "text",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "date": "a date (YYYY-MM-DD)",
}

_CSV_HINTS = {
    "unexpected end of data": "a quoted value is never closed (missing '\"')",
    "',' expected after '\"'": "text directly follows a closing quote; quote the whole value",
}


@dataclass
class _TabularState:
    rows: int = 0
    files: int = 0
    # field name -> value -> (file, row) of first occurrence, for `unique`.
    seen: dict[str, dict[Any, tuple[str, int]]] = field(default_factory=dict)
    seen_keys: dict[tuple[Any, ...], tuple[str, int]] = field(default_factory=dict)


def _check_tabular(contract: TabularContract, data_dir: Path, out: _Collector) -> DataSummary:
    paths = sorted(p for p in data_dir.glob(contract.files) if p.is_file() and not _is_hidden(p.relative_to(data_dir)))
    if not paths:
        out.add(
            "",
            None,
            None,
            f"no CSV files matching {contract.files!r} in the data folder; {_describe_folder(data_dir)}",
        )
        return DataSummary(kind="tabular", files=0)

    checkers = {f.name: _make_checker(f) for f in contract.fields}
    state = _TabularState(seen={f.name: {} for f in contract.fields if f.unique})
    for path in paths:
        rel = path.relative_to(data_dir).as_posix()
        state.files += 1
        try:
            _check_csv_file(contract, checkers, path, rel, state, out)
        except UnicodeDecodeError:
            line = _first_bad_utf8_line(path)
            where = f" (first invalid byte on line {line})" if line else ""
            out.add(
                rel,
                None,
                None,
                f"file is not valid UTF-8 text{where}; expected a UTF-8 encoded CSV (e.g. save as 'CSV UTF-8')",
            )
        except OSError as exc:
            out.add(rel, None, None, f"cannot read file: {exc.strerror or exc}")

    if state.rows < contract.min_rows:
        in_files = f" in {state.files} files" if state.files > 1 else ""
        out.add(
            "",
            None,
            None,
            f"expected at least {contract.min_rows} data rows in total, found {state.rows}{in_files}",
        )
    return DataSummary(kind="tabular", files=state.files, rows=state.rows)


def _first_bad_utf8_line(path: Path) -> int | None:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _check_header(contract: TabularContract, header: list[str], rel: str, out: _Collector) -> dict[str, int]:
    """Report header problems; return the column index of each contract field found."""
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(header):
        positions.setdefault(name, []).append(index)
    field_names = [f.name for f in contract.fields]
    found = _list(header, limit=30)

    for name, where in positions.items():
        if len(where) > 1 and (name in field_names or contract.extra_columns == "forbid"):
            cols = ", ".join(str(i + 1) for i in where)
            out.add(
                rel,
                1,
                name or None,
                f"column appears {len(where)} times in the header (columns {cols}); expected it once",
            )

    by_loose_name = {h.strip().casefold(): h for h in header}
    for name in field_names:
        if name in positions:
            continue
        near = by_loose_name.get(name.strip().casefold())
        hint = f" (found {_quote(near)}: names must match exactly)" if near is not None else ""
        out.add(rel, 1, name, f"missing column {_quote(name)}{hint}; the header has: {found}")

    if contract.extra_columns == "forbid":
        expected = ", ".join(_quote(n) for n in field_names)
        for index, name in enumerate(header):
            if name in field_names or positions[name][0] != index:
                continue
            label = _quote(name) if name else f"#{index + 1} (no name)"
            out.add(
                rel,
                1,
                name or None,
                f"unexpected column {label}; expected only the contract's columns: {expected}",
            )
    return {name: where[0] for name, where in positions.items() if name in field_names}


def _check_csv_file(
    contract: TabularContract,
    checkers: Mapping[str, Callable[[str], Any]],
    path: Path,
    rel: str,
    state: _TabularState,
    out: _Collector,
) -> None:
    specs = {f.name: f for f in contract.fields}
    missing_values = frozenset(contract.missing_values)
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=contract.delimiter, strict=True)
        row_no = 1
        try:
            header = next(reader, None)
            if header is None:
                out.add(
                    rel,
                    None,
                    None,
                    "file is empty; expected a header row with the columns: "
                    + ", ".join(_quote(f.name) for f in contract.fields),
                )
                return
            index_of = _check_header(contract, header, rel, out)
            width = len(header)
            columns = [
                (
                    index_of[name],
                    name,
                    checkers[name],
                    specs[name].required,
                    state.seen.get(name),
                    _TYPE_WORDS[specs[name].type],
                )
                for name in specs
                if name in index_of
            ]
            pk_columns = [(index_of[name], checkers[name]) for name in contract.primary_key if name in index_of]
            if len(pk_columns) != len(contract.primary_key):
                pk_columns = []

            for row_no, row in enumerate(reader, start=2):
                if not row:
                    continue  # blank line: skipped, but still counted for row numbers
                state.rows += 1
                if len(row) != width:
                    out.add(rel, row_no, None, f"expected {width} cells (one per header column), got {len(row)}")
                    continue
                for index, name, check, required, seen, type_word in columns:
                    cell = row[index]
                    if cell in missing_values:
                        if required:
                            got = "an empty cell" if cell == "" else _show(cell)
                            out.add(rel, row_no, name, f"a value is required (expected {type_word}), got {got}")
                        continue
                    try:
                        value = check(cell)
                    except _CellError as exc:
                        out.add(rel, row_no, name, str(exc))
                        continue
                    if seen is not None:
                        first = seen.setdefault(value, (rel, row_no))
                        if first[1] != row_no or first[0] != rel:
                            out.add(
                                rel,
                                row_no,
                                name,
                                f"expected a unique value, but {_show(cell)} also appears in " + _where(first, rel),
                            )
                if pk_columns:
                    _check_primary_key(contract, pk_columns, row, rel, row_no, missing_values, state, out)
        except csv.Error as exc:
            message = str(exc)
            hint = _CSV_HINTS.get(message.replace(contract.delimiter, ","), "")
            out.add(rel, row_no + 1, None, f"malformed CSV: {message}" + (f" ({hint})" if hint else ""))


def _where(first: tuple[str, int], rel: str) -> str:
    return f"row {first[1]}" if first[0] == rel else f"{first[0]}, row {first[1]}"


def _check_primary_key(
    contract: TabularContract,
    pk_columns: Sequence[tuple[int, Callable[[str], Any]]],
    row: Sequence[str],
    rel: str,
    row_no: int,
    missing_values: frozenset[str],
    state: _TabularState,
    out: _Collector,
) -> None:
    try:
        key = tuple(None if row[i] in missing_values else check(row[i]) for i, check in pk_columns)
    except _CellError:
        return  # already reported as a cell problem
    if None in key:
        return
    first = state.seen_keys.setdefault(key, (rel, row_no))
    if first != (rel, row_no):
        names = ", ".join(_quote(n) for n in contract.primary_key)
        values = ", ".join(_show(row[i]) for i, _ in pk_columns)
        out.add(
            rel,
            row_no,
            None,
            f"expected a unique primary key ({names}), but ({values}) also appears in " + _where(first, rel),
        )


# --------------------------------------------------------------------------
# Image folder checking
# --------------------------------------------------------------------------

_MODE_NAMES = {
    "1": "black and white",
    "L": "8-bit grayscale",
    "LA": "grayscale with alpha",
    "P": "palette",
    "RGB": "colour",
    "RGBA": "colour with alpha",
    "I": "32-bit integer",
    "F": "32-bit float",
    "CMYK": "CMYK",
    "I;16": "16-bit grayscale",
}


def _mode_text(mode: str) -> str:
    name = _MODE_NAMES.get(mode)
    return f"{mode!r} ({name})" if name else repr(mode)


def _check_image_folder(contract: ImageFolderContract, data_dir: Path, out: _Collector) -> DataSummary:
    classes_text = ", ".join(contract.classes[:_MAX_LISTED]) + (", ..." if len(contract.classes) > _MAX_LISTED else "")
    ext_text = ", ".join(contract.extensions)
    entries = sorted(p for p in data_dir.iterdir() if not p.name.startswith("."))
    if not entries:
        out.add(
            "",
            None,
            None,
            f"the data folder is empty; expected one sub-folder per class ({classes_text}) holding {ext_text} images",
        )
        return DataSummary(kind="image-folder", files=0)

    counts = {name: 0 for name in contract.classes}
    for entry in entries:
        if not entry.is_dir():
            out.add(
                entry.name,
                None,
                None,
                f"unexpected file at the top of the data folder; expected only class sub-folders ({classes_text})",
            )
        elif entry.name not in counts:
            out.add(
                entry.name + "/",
                None,
                None,
                f"folder {entry.name!r} is not one of the contract's classes ({classes_text})",
            )
        else:
            counts[entry.name] = _check_class_folder(contract, entry, data_dir, out)

    for name, n in counts.items():
        if n < contract.min_images_per_class:
            out.add(
                name + "/",
                None,
                None,
                f"expected at least {contract.min_images_per_class} valid images for class {name!r}, found {n}",
            )
    total = sum(counts.values())
    if total < contract.min_images:
        out.add(
            "",
            None,
            None,
            f"expected at least {contract.min_images} valid {ext_text} image(s) in the class "
            f"sub-folders ({classes_text}), found {total}; {_describe_folder(data_dir)}",
        )
    return DataSummary(
        kind="image-folder",
        files=total,
        images=total,
        images_per_class=tuple((name, n) for name, n in counts.items() if n),
    )


def _check_class_folder(contract: ImageFolderContract, folder: Path, data_dir: Path, out: _Collector) -> int:
    valid = 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        rel = path.relative_to(data_dir).as_posix()
        if path.is_dir():
            out.add(rel + "/", None, None, "unexpected sub-folder; images must sit directly in their class folder")
            continue
        if path.suffix.lower() not in contract.extensions:
            found = f"{path.suffix!r}" if path.suffix else "no extension"
            out.add(
                rel, None, None, f"unexpected file type ({found}); expected one of {', '.join(contract.extensions)}"
            )
            continue
        if _check_image(contract, path, rel, out):
            valid += 1
    return valid


def _check_image(contract: ImageFolderContract, path: Path, rel: str, out: _Collector) -> bool:
    if path.stat().st_size == 0:
        out.add(rel, None, None, f"file is empty; expected a valid {path.suffix.lower()} image")
        return False
    try:
        with Image.open(path) as image:
            # load() decodes the pixels, so truncated files are caught, not just bad headers.
            image.load()
            size, mode = image.size, image.mode
    # Pillow raises many unrelated exception types for corrupt files.
    except Exception as exc:  # noqa: BLE001
        detail = str(exc).replace(str(path), rel) or type(exc).__name__
        out.add(
            rel, None, None, f"cannot be opened as an image ({detail}); expected a valid {path.suffix.lower()} file"
        )
        return False
    ok = True
    if contract.image_size is not None and size != contract.image_size:
        w, h = contract.image_size
        out.add(rel, None, None, f"expected {w}x{h} pixels (width x height), got {size[0]}x{size[1]}")
        ok = False
    if contract.mode is not None and mode != contract.mode:
        out.add(rel, None, None, f"expected image mode {_mode_text(contract.mode)}, got {_mode_text(mode)}")
        ok = False
    return ok


# --------------------------------------------------------------------------
# Numpy checking
# --------------------------------------------------------------------------


def _shape_text(shape: Sequence[int | None]) -> str:
    inner = ", ".join("any" if v is None else str(v) for v in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _dtype_matches(actual: np.dtype[Any], expected: str) -> bool:
    # A file written on a big-endian machine is still the right data.
    return actual.newbyteorder("=") == np.dtype(expected).newbyteorder("=")


def _check_numpy(contract: NumpyContract, data_dir: Path, out: _Collector) -> DataSummary:
    files = arrays_seen = 0
    for fname, specs in contract.files:
        path = data_dir / fname
        if not path.is_file():
            others = sorted(
                p.relative_to(data_dir).as_posix()
                for p in data_dir.rglob("*.npz")
                if not _is_hidden(p.relative_to(data_dir))
            )
            found = (
                f"; .npz files found: {', '.join(others[:_MAX_LISTED])}"
                if others
                else f"; {_describe_folder(data_dir)}"
            )
            out.add(fname, None, None, f"missing file {fname!r}{found}")
            continue
        files += 1
        arrays_seen += _check_npz(contract, path, fname, dict(specs), out)
    return DataSummary(kind="numpy", files=files, arrays=arrays_seen)


def _check_npz(
    contract: NumpyContract,
    path: Path,
    fname: str,
    specs: Mapping[str, ArraySpec],
    out: _Collector,
) -> int:
    expected = "expected a .npz archive written by numpy.savez or numpy.savez_compressed"
    if not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            magic = handle.read(6)
        found = (
            "a single .npy array" if magic == b"\x93NUMPY" else "an empty file" if not magic else "not a zip archive"
        )
        out.add(fname, None, None, f"cannot be read: it is {found}; {expected} holding arrays {', '.join(specs)}")
        return 0
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        out.add(fname, None, None, f"cannot be read ({exc}); {expected}")
        return 0

    lengths: dict[str, int | None] = {}
    count = 0
    with loaded:
        names = list(loaded.files)
        for name in names:
            if name not in specs and contract.extra_arrays == "forbid":
                out.add(fname, None, None, f"unexpected array {name!r}; expected only: {', '.join(specs)}")
        for name, spec in specs.items():
            if name not in names:
                out.add(fname, None, None, f"missing array {name!r}; the file has: {', '.join(names) or '(no arrays)'}")
                continue
            try:
                array = loaded[name]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                detail = (
                    "it holds Python objects (dtype=object), which cannot be loaded safely"
                    if "allow_pickle" in str(exc)
                    else str(exc)
                )
                expected = f"; expected dtype {spec.dtype}" if spec.dtype else ""
                out.add(fname, None, None, f"array {name!r} cannot be read: {detail}{expected}")
                continue
            count += 1
            lengths[name] = array.shape[0] if array.ndim else None
            if spec.dtype is not None and not _dtype_matches(array.dtype, spec.dtype):
                out.add(fname, None, None, f"array {name!r}: expected dtype {spec.dtype}, got {array.dtype.name}")
            if spec.shape is not None and not _shape_matches(array.shape, spec.shape):
                out.add(
                    fname,
                    None,
                    None,
                    f"array {name!r}: expected shape {_shape_text(spec.shape)}, got {_shape_text(array.shape)}",
                )
    if contract.same_length and len(lengths) > 1:
        scalars = [n for n, length in lengths.items() if length is None]
        for name in scalars:
            out.add(
                fname,
                None,
                None,
                f"array {name!r} is a scalar (0-d) and has no length; "
                "same_length expects every array to have a first dimension",
            )
        sized = {n: length for n, length in lengths.items() if length is not None}
        if len(set(sized.values())) > 1:
            detail = ", ".join(f"{n} has {length}" for n, length in sized.items())
            out.add(fname, None, None, f"expected all arrays to have the same length (first dimension), got: {detail}")
    return count


def _shape_matches(actual: tuple[int, ...], expected: Sequence[int | None]) -> bool:
    return len(actual) == len(expected) and all(e is None or a == e for a, e in zip(actual, expected, strict=True))


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def _run(contract: DataContract, data_dir: Path, out: _Collector) -> DataSummary:
    if isinstance(contract.body, NoneContract):
        # Not even the folder: such an app may need no data folder at all.
        return DataSummary(kind="none", files=0)
    data_dir = Path(data_dir)
    if not data_dir.exists():
        out.add(
            "",
            None,
            None,
            f"the data folder {str(data_dir)!r} does not exist; "
            "expected the folder holding your data to be mounted there",
        )
        return DataSummary(kind=contract.kind, files=0)
    if not data_dir.is_dir():
        out.add("", None, None, f"{str(data_dir)!r} is a file; expected a data folder")
        return DataSummary(kind=contract.kind, files=0)
    body = contract.body
    if isinstance(body, TabularContract):
        return _check_tabular(body, data_dir, out)
    if isinstance(body, ImageFolderContract):
        return _check_image_folder(body, data_dir, out)
    if isinstance(body, NumpyContract):
        return _check_numpy(body, data_dir, out)
    raise AssertionError(f"no checker for {type(body).__name__}")


def check_data(spec: ContractLike, data_dir: Path, *, max_problems: int = 50) -> ProblemList:
    """Check ``data_dir`` against a contract; return its problems (empty when fine).

    At most ``max_problems`` problems are kept; the returned ``ProblemList`` has
    a ``total`` attribute counting all of them.  Raises ``ContractSpecError`` if
    the contract itself is malformed.
    """
    if max_problems < 1:
        raise ValueError(f"max_problems must be >= 1, got {max_problems}")
    out = _Collector(max_problems)
    _run(parse_contract(spec), Path(data_dir), out)
    return out.result()


def check_or_raise(spec: ContractLike, data_dir: Path) -> DataSummary:
    """Check ``data_dir`` against a contract and return a summary for a log line.

    Raises ``DataContractError`` (with every problem found) if the data does not
    match, or ``ContractSpecError`` if the contract itself is malformed.
    """
    out = _Collector(50)
    summary = _run(parse_contract(spec), Path(data_dir), out)
    if out.total:
        raise DataContractError(out.items, out.total)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m client_image.contract CONTRACT.json DATA_DIR``: exit 0, 1 (bad data) or 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m client_image.contract CONTRACT.json DATA_DIR", file=sys.stderr)
        return 2
    try:
        summary = check_or_raise(Path(args[0]), Path(args[1]))
    except ContractSpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except DataContractError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
