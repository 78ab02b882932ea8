"""Project-wide REST framework defaults that keep hostile input to a 4xx.

DRF's own classes answered some requests with a 500:
- `?limit=` or `?offset=` past what the database's integers hold
  (`?limit=33715892560541433856`) made the query fail; both are now cut to a
  bound, as DRF already does for `limit` when `max_limit` is set;
- a JSON body nested deeper than Python's recursion limit (`[[[[...`)
  raised RecursionError in the parser; it is now a 400 parse error.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_offset(self, request: Request) -> int:
        return min(super().get_offset(request), MAX_OFFSET)


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document nests too deeply") from None
