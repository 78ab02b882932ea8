"""Data contracts on the website: form rows ⇄ the contract document, validation, display.

The document format is the client's (docs/data-contract.md) and the client's
parser (`client_image.contract.parse_contract`) is the judge of validity, so
the website never accepts a contract the client would refuse. The form layer
adds errors a person filling in rows needs: which row, which cell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client_image.contract import FIELD_TYPES, KINDS, ContractSpecError, parse_contract
from webserver.errors import ApplicationError

__all__ = [
    "FIELD_TYPES",
    "KINDS",
    "ContractFormData",
    "ContractFormError",
    "contract_from_form",
    "contract_from_json",
    "contract_settings",
    "contract_to_form",
    "validate_contract",
]

IMAGE_DEFAULT_EXTENSIONS = [".png", ".jpg", ".jpeg"]
# What the pages say about a `none` contract.
NOTHING_CHECKED_PAGE = "nothing: the app loads its own data, so the client checks no data before joining"


class ContractFormError(ApplicationError):
    """Problems in the contract form; `errors` maps a form key to its messages.

    Keys: a setting name (`label`, `files`, ...), `fields.<row>.<column>` for a
    tabular field row, `arrays.<row>.<column>` for a numpy array row.
    """

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        lines = [msg for msgs in errors.values() for msg in msgs]
        super().__init__("invalid data contract: " + "; ".join(lines), field="contract")


@dataclass
class ContractFormData:
    """What the contract form shows: the kind, its settings, and the rows."""

    kind: str = "tabular"
    settings: dict[str, Any] = field(default_factory=dict)
    fields: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[dict[str, Any]] = field(default_factory=list)


def validate_contract(doc: Any) -> dict[str, Any]:
    """`doc` if the client would accept it, else ApplicationError (field `contract`) with every issue."""
    if not isinstance(doc, Mapping):
        message = f"the data contract must be a JSON object; got {type(doc).__name__}"
        raise ApplicationError(message, field="contract", extra={"issues": [message]})
    where = _not_finite(doc, "contract")
    if where:
        message = (
            f"{where} is not a finite number (NaN or Infinity): a contract's numbers must be finite, "
            "as JSON's are; write the bound as a number, or leave it out for no bound"
        )
        raise ApplicationError(message, field="contract", extra={"issues": [message]})
    try:
        parse_contract(dict(doc))
    except ContractSpecError as exc:
        raise ApplicationError(
            "invalid data contract: " + "; ".join(exc.issues), field="contract", extra={"issues": exc.issues}
        ) from exc
    return dict(doc)


def _not_finite(value: Any, path: str) -> str:
    """Where in `value` a NaN or infinite number is ("" if nowhere): Python's json reads them,
    but PostgreSQL cannot store them in a JSON column and JSON itself has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, Mapping):
        items: Any = ((f"{path}.{key}", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", item) for i, item in enumerate(value))
    else:
        return ""
    return next((found for at, item in items if (found := _not_finite(item, at))), "")


def contract_from_json(text: str) -> dict[str, Any]:
    """A contract typed or uploaded as JSON, validated."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApplicationError(
            f"the contract is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", field="contract"
        ) from exc
    except RecursionError:
        raise ApplicationError("the contract is not usable JSON: it nests too deeply", field="contract") from None
    return validate_contract(doc)


# ------------------------------------------------------------------ form -> document


def _split(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _bound(ftype: str, text: str) -> int | float | str:
    """A minimum/maximum cell in the field's type; ValueError says what was expected."""
    if ftype == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
    if ftype == "number":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r} (leave the cell empty for no bound)")
        return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    if ftype == "date":
        return text  # the contract parser checks it is a real YYYY-MM-DD date
    raise ValueError(f"only number, integer and date fields have bounds, and this field is {ftype}")


def _enum_value(ftype: str, text: str) -> Any:
    if ftype == "integer":
        return int(text)
    if ftype == "number":
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    if ftype == "boolean":
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(text)
    return text


def _tabular(
    settings: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], errors: dict[str, list[str]]
) -> dict[str, Any]:
    def fail(key: str, message: str) -> None:
        errors.setdefault(key, []).append(message)

    fields: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        name = str(row.get("name") or "").strip()
        if not name:
            fail(f"fields.{index}.name", f"row {index + 1}: a field needs a name")
            continue
        if name in seen:
            fail(f"fields.{index}.name", f"duplicate field name {name!r} (rows {seen[name] + 1} and {index + 1})")
            continue
        seen[name] = index
        ftype = str(row.get("type") or "string")
        descriptor: dict[str, Any] = {"name": name, "type": ftype}
        constraints: dict[str, Any] = {}
        if row.get("required"):
            constraints["required"] = True
        if row.get("unique"):
            constraints["unique"] = True
        for key in ("minimum", "maximum"):
            text = str(row.get(key) or "").strip()
            if text:
                try:
                    constraints[key] = _bound(ftype, text)
                except ValueError as exc:
                    fail(f"fields.{index}.{key}", f"field {name!r}: {key}: {exc}")
        enum_text = str(row.get("enum") or "")
        if enum_text.strip():
            try:
                constraints["enum"] = [_enum_value(ftype, part) for part in _split(enum_text)]
            except ValueError:
                fail(
                    f"fields.{index}.enum",
                    f"field {name!r}: every allowed value must be a valid {ftype}; got {enum_text!r}",
                )
        pattern = str(row.get("pattern") or "")
        if pattern:
            constraints["pattern"] = pattern
        if constraints:
            descriptor["constraints"] = constraints
        fields.append(descriptor)
    if not rows or (not fields and not errors):
        fail("fields", "a tabular contract needs at least one field")

    doc: dict[str, Any] = {"kind": "tabular"}
    files = str(settings.get("files") or "").strip()
    doc["files"] = files or "*.csv"
    min_rows: Any = settings.get("min_rows")
    if min_rows not in (None, ""):
        doc["min_rows"] = int(min_rows)
    label = str(settings.get("label") or "").strip()
    if label:
        if fields and label not in seen:
            fail("label", f"the label {label!r} is not one of the fields ({', '.join(seen)})")
        doc["label"] = label
    doc["extra_columns"] = settings.get("extra_columns") or "forbid"
    doc["schema"] = {"fields": fields}
    return doc


def _image_folder(settings: Mapping[str, Any], errors: dict[str, list[str]]) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "image-folder", "classes": _split(settings.get("classes") or "")}
    if not doc["classes"]:
        errors.setdefault("classes", []).append("list the class names, separated by commas")
    extensions = _split(settings.get("extensions") or "")
    doc["extensions"] = [e if e.startswith(".") else f".{e}" for e in extensions] or list(IMAGE_DEFAULT_EXTENSIONS)
    # Raw form input: a number, a numeric string, "" or None; int() below is guarded by the checks.
    width: Any = settings.get("image_width")
    height: Any = settings.get("image_height")
    if width not in (None, "") or height not in (None, ""):
        if width in (None, "") or height in (None, ""):
            errors.setdefault("image_width", []).append("give both the width and the height, or neither")
        else:
            doc["image_size"] = [int(width), int(height)]
    if settings.get("mode"):
        doc["mode"] = settings["mode"]
    for key in ("min_images", "min_images_per_class"):
        if settings.get(key) not in (None, ""):
            doc[key] = int(settings[key])
    return doc


def _shape(text: str) -> list[int | None]:
    """`-1,30` → [null, 30]: -1 (or `?`, `*`, `any`) means any size, as in numpy's reshape."""
    shape: list[int | None] = []
    for part in _split(text):
        if part in ("-1", "?", "*", "any", "None", "null"):
            shape.append(None)
        else:
            size = int(part)  # ValueError is reported by the caller
            if size < 0:
                raise ValueError(part)
            shape.append(size)
    return shape


def _numpy(
    settings: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], errors: dict[str, list[str]]
) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        fname = str(row.get("file") or "").strip() or "data.npz"
        name = str(row.get("name") or "").strip()
        if not name:
            errors.setdefault(f"arrays.{index}.name", []).append(f"row {index + 1}: an array needs a name")
            continue
        arrays = files.setdefault(fname, {})
        if name in arrays:
            errors.setdefault(f"arrays.{index}.name", []).append(f"array {name!r} is listed twice for {fname}")
            continue
        spec: dict[str, Any] = {}
        if row.get("dtype"):
            spec["dtype"] = str(row["dtype"]).strip()
        shape_text = str(row.get("shape") or "").strip()
        if shape_text:
            try:
                spec["shape"] = _shape(shape_text)
            except ValueError:
                errors.setdefault(f"arrays.{index}.shape", []).append(
                    f"array {name!r}: shape must be sizes separated by commas, -1 for any size (e.g. -1,30); got {shape_text!r}"
                )
        arrays[name] = spec
    if not files and not errors:
        errors.setdefault("arrays", []).append("a numpy contract needs at least one array")
    return {
        "kind": "numpy",
        "files": files,
        "same_length": bool(settings.get("same_length")),
        "extra_arrays": settings.get("extra_arrays") or "forbid",
    }


def contract_from_form(
    *,
    kind: str,
    settings: Mapping[str, Any],
    fields: Sequence[Mapping[str, Any]] = (),
    arrays: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The contract document the form describes, checked by the client's parser.

    Raises ContractFormError for problems a row or setting can be blamed for,
    then ApplicationError with the parser's issues for anything else.
    """
    errors: dict[str, list[str]] = {}
    if kind == "tabular":
        doc = _tabular(settings, fields, errors)
    elif kind == "image-folder":
        doc = _image_folder(settings, errors)
    elif kind == "numpy":
        doc = _numpy(settings, arrays, errors)
    elif kind == "none":
        doc = {"kind": "none"}
    else:
        raise ContractFormError({"kind": [f"choose a kind of data: {', '.join(KINDS)}; got {kind!r}"]})
    description = str(settings.get("description") or "").strip()
    if description:
        doc["description"] = description
    if errors:
        raise ContractFormError(errors)
    return validate_contract(doc)


# ------------------------------------------------------------------ document -> form


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def contract_to_form(doc: Mapping[str, Any]) -> ContractFormData | None:
    """The form's view of `doc`, or None if the form cannot show it without losing something.

    A contract that uses what the form has no box for (a delimiter, missing
    values, a primary key, ...) is edited as JSON instead.
    """
    try:
        data = _to_form(doc)
        rebuilt = contract_from_form(kind=data.kind, settings=data.settings, fields=data.fields, arrays=data.arrays)
    except (ApplicationError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return data if _normalise(rebuilt) == _normalise(doc) else None


def _normalise(doc: Mapping[str, Any]) -> str:
    """Compare contracts up to the defaults the form writes out."""
    filled = dict(doc)
    if filled.get("kind") == "tabular":
        filled.setdefault("files", "*.csv")
        filled.setdefault("extra_columns", "forbid")
    elif filled.get("kind") == "image-folder":
        filled.setdefault("extensions", list(IMAGE_DEFAULT_EXTENSIONS))
    elif filled.get("kind") == "numpy":
        filled.setdefault("same_length", False)
        filled.setdefault("extra_arrays", "forbid")
    return json.dumps(filled, sort_keys=True)


def _to_form(doc: Mapping[str, Any]) -> ContractFormData:
    kind = str(doc.get("kind"))
    settings: dict[str, Any] = {"description": doc.get("description", "")}
    data = ContractFormData(kind=kind, settings=settings)
    if kind == "tabular":
        settings.update(
            files=doc.get("files", "*.csv"),
            min_rows=doc.get("min_rows", ""),
            label=doc.get("label", ""),
            extra_columns=doc.get("extra_columns", "forbid"),
        )
        for f in doc["schema"]["fields"]:
            c = f.get("constraints", {})
            data.fields.append(
                {
                    "name": f["name"],
                    "type": f.get("type", "string"),
                    "required": bool(c.get("required", False)),
                    "unique": bool(c.get("unique", False)),
                    "minimum": _show(c["minimum"]) if "minimum" in c else "",
                    "maximum": _show(c["maximum"]) if "maximum" in c else "",
                    "enum": ", ".join(_show(v) for v in c.get("enum", [])),
                    "pattern": c.get("pattern", ""),
                }
            )
    elif kind == "image-folder":
        size = doc.get("image_size") or ["", ""]
        settings.update(
            classes=", ".join(doc.get("classes", [])),
            extensions=", ".join(doc.get("extensions", IMAGE_DEFAULT_EXTENSIONS)),
            image_width=size[0],
            image_height=size[1],
            mode=doc.get("mode", ""),
            min_images=doc.get("min_images", ""),
            min_images_per_class=doc.get("min_images_per_class", ""),
        )
    elif kind == "numpy":
        settings.update(same_length=bool(doc.get("same_length", False)), extra_arrays=doc.get("extra_arrays", "forbid"))
        for fname, arrays in doc["files"].items():
            for name, spec in arrays.items():
                shape = spec.get("shape")
                data.arrays.append(
                    {
                        "file": fname,
                        "name": name,
                        "dtype": spec.get("dtype", ""),
                        "shape": "" if shape is None else ",".join("-1" if s is None else str(s) for s in shape),
                    }
                )
    elif kind != "none":
        raise ValueError(kind)
    return data


# ------------------------------------------------------------------ display


def contract_settings(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The contract's top-level settings as (label, value) pairs for a readable table."""
    kind = doc.get("kind")
    pairs: list[tuple[str, str]] = [("Kind", str(kind))]
    if kind == "tabular":
        pairs += [
            ("Files", str(doc.get("files", "*.csv"))),
            ("Minimum rows", str(doc.get("min_rows", 1))),
            ("Label column", str(doc.get("label", "—"))),
            ("Extra columns", str(doc.get("extra_columns", "forbid"))),
        ]
    elif kind == "image-folder":
        size = doc.get("image_size")
        pairs += [
            ("Classes", ", ".join(doc.get("classes", []))),
            ("Extensions", ", ".join(doc.get("extensions", IMAGE_DEFAULT_EXTENSIONS))),
            ("Image size", f"{size[0]} × {size[1]}" if size else "any"),
            ("Mode", str(doc.get("mode", "any"))),
            ("Minimum images", str(doc.get("min_images", 1))),
            ("Minimum images per class", str(doc.get("min_images_per_class", 0))),
        ]
    elif kind == "numpy":
        pairs += [
            ("Same length", "yes" if doc.get("same_length") else "no"),
            ("Extra arrays", str(doc.get("extra_arrays", "forbid"))),
        ]
    elif kind == "none":
        pairs += [("Checked", NOTHING_CHECKED_PAGE)]
    return pairs


def contract_rows(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """Tabular fields or numpy arrays as rows for a readable table."""
    rows: list[dict[str, str]] = []
    if doc.get("kind") == "tabular":
        for f in doc.get("schema", {}).get("fields", []):
            c = f.get("constraints", {})
            rules = []
            if c.get("required"):
                rules.append("required")
            if c.get("unique"):
                rules.append("unique")
            if "minimum" in c:
                rules.append(f"≥ {_show(c['minimum'])}")
            if "maximum" in c:
                rules.append(f"≤ {_show(c['maximum'])}")
            if "enum" in c:
                rules.append("one of " + ", ".join(_show(v) for v in c["enum"]))
            for key in ("pattern", "minLength", "maxLength"):
                if key in c:
                    rules.append(f"{key} {c[key]}")
            label = " (label)" if f.get("name") == doc.get("label") else ""
            rows.append({"name": f"{f.get('name')}{label}", "type": f.get("type", "string"), "rules": "; ".join(rules)})
    elif doc.get("kind") == "numpy":
        for fname, arrays in doc.get("files", {}).items():
            for name, spec in arrays.items():
                shape = spec.get("shape")
                shown = "any" if shape is None else "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
                rows.append({"name": f"{fname}: {name}", "type": spec.get("dtype", "any"), "rules": f"shape {shown}"})
    return rows
