"""SQL text of the C-STORE hot path, written once per database and reused.

peewee builds every query anew from its expression tree, about 0.15 ms of
CPU per statement; a C-STORE runs ten of them, which was the largest part
of the store path's CPU.  These statements keep peewee's models as the only
schema (table and column names, Python-side defaults, value conversion) and
only skip the per-call SQL generation.  Anything off the hot path uses
peewee queries as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peewee import Model

from pacscore.db import db


class Statements:
    """Per-database cache of SQL text; rebuilt when another database is bound."""

    def __init__(self) -> None:
        self._database = None
        self._sql: dict[tuple, str] = {}

    def text(self, key: tuple, build) -> str:
        database = db.obj
        if database is not self._database:
            self._database, self._sql = database, {}
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = build(database)
        return sql

    def execute(self, key: tuple, build, params: Sequence[Any]):
        return db.execute_sql(self.text(key, build), params)


_statements = Statements()


def _quoter(database):
    opening, closing = database.quote
    return lambda name: f"{opening}{name}{closing}"


def _columns(model: type[Model]) -> list:
    return [f for f in model._meta.sorted_fields if f is not model._meta.primary_key]


def _insert_sql(database, model: type[Model], ignore_conflict: bool) -> str:
    quote, param = _quoter(database), database.param
    fields = _columns(model)
    sql = (
        f"INSERT INTO {quote(model._meta.table_name)} "
        f"({', '.join(quote(f.column_name) for f in fields)}) "
        f"VALUES ({', '.join(param for _ in fields)})"
    )
    if ignore_conflict:
        sql += f" ON CONFLICT DO NOTHING RETURNING {quote(model._meta.primary_key.column_name)}"
    return sql


def _row_params(model: type[Model], values: dict[str, Any]) -> list[Any]:
    """Every column's value: the given one, else the field's default (as peewee would)."""
    params = []
    for field in _columns(model):
        if field.name in values:
            value = values[field.name]
        else:
            value = field.default() if callable(field.default) else field.default
        params.append(field.db_value(value))
    return params


def insert(model: type[Model], values: dict[str, Any]) -> None:
    """INSERT one row of ``model`` (columns left out take their peewee default)."""
    _statements.execute(
        ("insert", model), lambda d: _insert_sql(d, model, False), _row_params(model, values)
    )


def insert_ignore(model: type[Model], values: dict[str, Any]) -> int | None:
    """INSERT unless a unique key exists; the new row's id, or None if it existed."""
    cursor = _statements.execute(
        ("insert_ignore", model),
        lambda d: _insert_sql(d, model, True),
        _row_params(model, values),
    )
    row = cursor.fetchone()
    return row[0] if row else None


def select_value(model: type[Model], wanted: str, key: str, value: Any) -> Any:
    """``SELECT wanted FROM model WHERE key = value`` (first row), or None."""

    def build(database) -> str:
        quote = _quoter(database)
        column = getattr(model, wanted).column_name
        return (
            f"SELECT {quote(column)} FROM {quote(model._meta.table_name)} "
            f"WHERE {quote(getattr(model, key).column_name)} = {database.param} LIMIT 1"
        )

    row = _statements.execute(("select", model, wanted, key), build, [value]).fetchone()
    return row[0] if row else None


def add_to_counters(
    model: type[Model], row_id: int, increments: dict[str, Any], values: dict[str, Any]
) -> None:
    """``UPDATE model SET counter = counter + n, ..., column = value, ... WHERE id = row_id``."""

    def build(database) -> str:
        quote, param = _quoter(database), database.param
        sets = [
            f"{quote(getattr(model, name).column_name)} = "
            f"{quote(getattr(model, name).column_name)} + {param}"
            for name in increments
        ]
        sets += [f"{quote(getattr(model, name).column_name)} = {param}" for name in values]
        primary_key = quote(model._meta.primary_key.column_name)
        return (
            f"UPDATE {quote(model._meta.table_name)} SET {', '.join(sets)} "
            f"WHERE {primary_key} = {param}"
        )

    params = list(increments.values())
    params += [getattr(model, name).db_value(value) for name, value in values.items()]
    key = ("counters", model, tuple(increments), tuple(values))
    _statements.execute(key, build, params + [row_id])
