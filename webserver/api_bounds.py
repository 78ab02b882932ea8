"""Project-wide REST framework defaults that keep hostile input to a 4xx.

DRF's own classes answered some requests with a 500:
- `?limit=` or `?offset=` past what the database's integers hold
  (`?limit=33715892560541433856`) made the query fail; both are now cut to a
  bound, as DRF already does for `limit` when `max_limit` is set;
- a JSON body nested deeper than Python's recursion limit (`[[[[...`)
  raised RecursionError in the parser; it is now a 400 parse error.

And DRF quietly read a `?limit=` or `?offset=` that is not a whole number (or
is below its least value) as if absent, so a typo answered 200 with another
page than asked; it is now a 400 naming the parameter, and the schema says the
least value of each.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000


def _whole_number(request: Request, name: str, *, least: int, most: int) -> int | None:
    """The query parameter as an int cut to `most`, None when absent; a 400 when not a whole number ≥ `least`."""
    # Imported here: webserver.errors imports rest_framework.views, which reads the settings naming this module.
    from webserver.errors import ApplicationError

    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise ApplicationError(f"{name}: must be a whole number ≥ {least}", field=name)
    return min(value, most)


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_limit(self, request: Request) -> int | None:
        limit = _whole_number(request, self.limit_query_param, least=1, most=MAX_LIMIT)
        return self.default_limit if limit is None else limit

    def get_offset(self, request: Request) -> int:
        return _whole_number(request, self.offset_query_param, least=0, most=MAX_OFFSET) or 0

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        least = {self.limit_query_param: 1, self.offset_query_param: 0}
        for parameter in parameters:
            parameter["schema"]["minimum"] = least[parameter["name"]]
            parameter["description"] += f" A whole number ≥ {least[parameter['name']]}; otherwise a 400."
        return parameters


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document nests too deeply") from None
