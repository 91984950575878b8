"""URL converters of every route (console pages, API, plugins' blueprints)."""

from __future__ import annotations

import builtins
from typing import Any

from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter, Map, ValidationError

# the largest id a database column holds (SQLite INTEGER, PostgreSQL bigint)
MAX_ID = 2**63 - 1


class IdConverter(IntegerConverter):
    """``<int:...>``: a database id, 0 to :data:`MAX_ID` in ASCII digits.

    A larger number is not found (404): given to the database, it raised
    (SQLite: OverflowError; PostgreSQL: out of range for bigint) and the request
    answered 500.  Raised here, not as a ``ValidationError``: with that, Werkzeug
    answers 405 when a rule of the same path has another method.
    """

    regex = r"[0-9]+"

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None,
                 max: int | None = None, signed: bool = False) -> None:  # fmt: skip
        bound = MAX_ID if max is None else builtins.min(max, MAX_ID)
        super().__init__(map, fixed_digits, min, bound, signed)

    def to_python(self, value: str) -> Any:
        try:
            return super().to_python(value)
        except ValidationError:
            raise NotFound("no such id") from None
