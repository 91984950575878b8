"""Schema upgrades of an existing database.

Additive changes need no code: a field added to a model in ``models.py`` is
added to the existing table by :func:`add_missing_columns` (with its default
filled in), and new tables and indexes are created by ``create_tables``.
A change that is not additive (a rename, a type change, data to move) is a
named step appended to ``STEPS``; each runs once per database, in order, and
is recorded in ``AppliedMigration``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from peewee import Model
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate

from pacscore.models import ALL_MODELS, AppliedMigration, ServiceFilter, User, db, is_sqlite

log = logging.getLogger(__name__)


def service_filters() -> None:
    """Each service name users hold becomes a named filter that matches what it matched.

    Before named filters, a user's service name matched a study whose
    InstitutionName or RequestingService was that name; that is the filter's
    ``institution_or_service`` criterion, so nobody sees more or less, and the
    filters show on the Service filters page, where they can be edited into
    conjunctions.  (A name without a filter would match the same way, see
    ``web/studyops.py``; the rows make it visible.)
    """
    known = {name.casefold() for (name,) in ServiceFilter.select(ServiceFilter.name).tuples()}
    for (services,) in User.select(User.services).tuples():
        try:
            names = json.loads(services or "[]")
        except ValueError:
            continue  # not a JSON list: nothing to carry over
        for name in names if isinstance(names, list) else []:
            name = str(name).strip()
            if name and name.casefold() not in known and len(name) <= 128:
                ServiceFilter.create(name=name, institution_or_service=name)
                known.add(name.casefold())


# (name, function) in the order they must run; never reorder or rename a step
STEPS: list[tuple[str, Callable[[], None]]] = [("service_filters", service_filters)]


def _migrator():
    return SqliteMigrator(db.obj) if is_sqlite() else PostgresqlMigrator(db.obj)


def add_missing_columns(models: list[type[Model]] = ALL_MODELS) -> list[str]:
    """Add to each existing table the columns its model gained; return them."""
    migrator = _migrator()
    added = []
    for model in models:
        table = model._meta.table_name
        if not db.table_exists(table):
            continue
        present = {column.name for column in db.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name in present:
                continue
            if not field.null and field.default is None:
                raise RuntimeError(f"{table}.{field.column_name}: a new column needs a default")
            migrate(migrator.add_column(table, field.column_name, field))
            added.append(f"{table}.{field.column_name}")
    return added


def upgrade() -> None:
    """Bring the connected database to the current schema (idempotent)."""
    for column in add_missing_columns():
        log.warning("schema upgrade: added column %s", column)
    done = {row.name for row in AppliedMigration.select()}
    for name, step in STEPS:
        if name in done:
            continue
        with db.atomic():
            step()
            AppliedMigration.create(name=name)
        log.warning("schema upgrade: applied %s", name)
