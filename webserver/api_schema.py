"""What the API's error answers look like in the OpenAPI schema, shared by every API module.

Every refusal has the shape `webserver.errors.api_exception_handler` and DRF
give it: an object with `detail` (a sentence), and for input errors one key per
input at fault holding a list of sentences (`{"title": ["This field is
required."]}`); a body of field errors alone has no `detail`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ERROR_BODY = inline_serializer(
    name="Error",
    fields={
        "detail": serializers.CharField(
            required=False,
            help_text="What was refused and why. Input errors also name each input at fault as a key "
            "holding a list of sentences.",
        )
    },
)

_MEANING = {
    400: "Invalid input; the body names the input at fault.",
    401: "No credentials, or credentials that name no account: send `Authorization: Token <key>`.",
    403: "Not allowed for your role or ownership.",
    404: "No such object, or not visible to you.",
    409: "Not possible in the object's current state.",
    413: "The request body is too large.",
    415: "The request body's Content-Type is none of those the operation takes.",
}


def errors(*codes: int, **meanings: str) -> dict[int, OpenApiResponse]:
    """The error answers `codes` with their body; `meanings` (`_404="..."`) words one for an operation."""
    return {
        code: OpenApiResponse(response=ERROR_BODY, description=meanings.get(f"_{code}", _MEANING[code]))
        for code in codes
    }


def declare_generic_errors(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the refusals any operation of a kind can answer, declared on each.

    An operation with a path parameter answers 404 for an id that names nothing (or does not parse); one
    with a request body, 413 and 415 for a body too large or of another type; one that needs credentials,
    401 without them (token authentication comes first, so DRF says 401 and names the scheme) and 403
    when they name an account that may not do it.
    """
    ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            codes = []
            if "{" in path:
                codes.append(404)
            if "requestBody" in operation:
                codes += [413, 415]
            security = operation.get("security")
            if security and {} not in security:
                codes += [401, 403]
            for code in codes:
                responses.setdefault(
                    str(code), {"content": {"application/json": {"schema": ref}}, "description": _MEANING[code]}
                )
    return result
