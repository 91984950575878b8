"""Creating and upgrading the schema: the core's tables and every plugin's.

Additive changes need no code: a field added to a model (in ``models.py``, or
in a plugin's models, hook ``database_models``) is added to the existing
table by :func:`add_missing_columns` (with its default filled in), and new
tables and indexes are created by :func:`create_tables`.  A change that is
not additive (a rename, a type change, data to move) is a named step: the
core's are appended to ``STEPS``, a plugin's are in its own package (hook
``database_migrations``).  Each runs once per database, in order, and is
recorded in ``AppliedMigration`` (a plugin's as ``"<plugin>:<step>"``).

``create_tables`` lives here rather than in ``models.py``: it runs the
migration machinery, and the tables it prepares are the core's and the
plugins' alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peewee import Model
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate

from pacscore.db import connection, db, is_sqlite, write_transaction
from pacscore.models import (
    ALL_MODELS,
    SCHEMA_VERSION,
    AppliedMigration,
    BaseModel,
    SchemaVersion,
    ServiceFilter,
    User,
)

if TYPE_CHECKING:
    from pacscore.plugins import PluginHost

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], None]]

# any constant of our own: the PostgreSQL advisory lock held while a schema changes
SCHEMA_LOCK_KEY = 0x70616373  # "pacs"


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
STEPS: list[Step] = [("service_filters", service_filters)]


@dataclass(frozen=True)
class Schema:
    """The tables and named upgrade steps of the core or of one plugin."""

    owner: str  # "" for the core, else the plugin's name
    models: Sequence[type[Model]]
    steps: Sequence[Step] = ()

    def recorded_name(self, step: str) -> str:
        """The step's name in ``AppliedMigration``: a plugin's is prefixed with the plugin's."""
        return f"{self.owner}:{step}" if self.owner else step


class PluginSchemaError(Exception):
    """A plugin's answer to ``database_models``/``database_migrations`` cannot be used."""


def _migrator():
    return SqliteMigrator(db.obj) if is_sqlite() else PostgresqlMigrator(db.obj)


def add_missing_columns(models: Sequence[type[Model]] = ALL_MODELS) -> list[str]:
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
            # SQLite: peewee rebuilds the table to make the column NOT NULL; with foreign
            # keys enforced, dropping the old table deleted the rows referencing it
            # (ON DELETE CASCADE): the context turns them off meanwhile
            with migrator.migration_context():
                migrate(migrator.add_column(table, field.column_name, field))
            added.append(f"{table}.{field.column_name}")
    return added


@contextmanager
def _schema_lock() -> Iterator[None]:
    """One process at a time changes the schema on PostgreSQL, whose concurrent
    ``CREATE TABLE IF NOT EXISTS`` may fail: every server process prepares a plugin
    switched on while it runs at about the same moment.  On SQLite each statement
    already holds the write lock, and each step takes it for its whole transaction."""
    if is_sqlite():
        yield
        return
    with db.atomic():
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        yield


def _record(name: str) -> None:
    AppliedMigration.insert(name=name).on_conflict_ignore().execute()


def _run_steps(schema: Schema) -> None:
    """Run the steps not yet recorded, each in its own transaction, in order."""
    done = {row.name for row in AppliedMigration.select(AppliedMigration.name)}
    for step, function in schema.steps:
        name = schema.recorded_name(step)
        if name in done:
            continue
        with write_transaction():
            # another process may have run it meanwhile (SQLite: no lock until now)
            if AppliedMigration.select().where(AppliedMigration.name == name).exists():
                continue
            function()
            AppliedMigration.create(name=name)
        log.warning("schema upgrade: applied %s", name)


def core_schema() -> Schema:
    return Schema("", ALL_MODELS, STEPS)


def create_tables() -> None:
    """Create the core's missing tables and indexes, then upgrade existing tables."""
    with connection():
        _prepare(
            core_schema(),
            fresh=lambda: not db.table_exists(SchemaVersion._meta.table_name),
            first=lambda: SchemaVersion.create(version=SCHEMA_VERSION),
        )


def prepare_plugin(schema: Schema) -> None:
    """Create a plugin's missing tables and indexes, then upgrade its existing tables.

    When none of its tables existed (its first start on this database), its
    steps are recorded without running: the models have the shape they produce.
    """
    tables = [model._meta.table_name for model in schema.models]
    with connection():
        _prepare(schema, fresh=lambda: bool(tables) and not any(map(db.table_exists, tables)))


def _prepare(
    schema: Schema, fresh: Callable[[], bool], first: Callable[[], object] | None = None
) -> None:
    """Create the missing tables and indexes of ``schema`` (and record its steps if it is
    ``fresh``), add the columns its models gained, then run its steps not yet applied.
    A step that raises is rolled back and its exception raised once what came before
    is committed."""
    failure = None
    with _schema_lock():
        new = fresh()
        db.create_tables(schema.models, safe=True)
        if new:
            if first is not None:
                first()
            # a new database already has the shape every named step produces
            for name, _ in schema.steps:
                _record(schema.recorded_name(name))
        for column in add_missing_columns(schema.models):
            log.warning("schema upgrade: added column %s", column)
        try:
            _run_steps(schema)
        except Exception as exc:  # noqa: BLE001 - raised below, outside the transaction
            failure = exc
    if failure is not None:
        raise failure


# -- plugins ------------------------------------------------------------------------------


def _check_models(models: object) -> list[type[Model]]:
    if models is None:
        return []
    if not isinstance(models, list | tuple):
        raise PluginSchemaError(f"database_models returned {type(models).__name__}, not a list")
    core_tables = {model._meta.table_name for model in ALL_MODELS}
    for model in models:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise PluginSchemaError(
                f"database_models: {model!r} is not a model subclassing pacscore.models.BaseModel"
            )
        if model._meta.table_name in core_tables:
            raise PluginSchemaError(
                f"database_models: table {model._meta.table_name!r} is the core's"
            )
    return list(models)


def _is_step(step: object) -> bool:
    return (
        isinstance(step, tuple)
        and len(step) == 2
        and isinstance(step[0], str)
        and callable(step[1])
    )


def _check_steps(steps: object) -> list[Step]:
    if steps is None:
        return []
    if not isinstance(steps, list | tuple) or not all(_is_step(step) for step in steps):
        raise PluginSchemaError("database_migrations must return a list of (name, function)")
    return list(steps)


def plugin_schemas(hooks: PluginHost, names: set[str]) -> tuple[list[Schema], dict[str, str]]:
    """The schemas of the registered plugins named, and the plugins whose answer
    failed (name -> error; failures of the hooks themselves are recorded already)."""
    models, failed_models = hooks.relay.database_models()
    steps, failed_steps = hooks.relay.database_migrations()
    raised = [plugin for plugin in failed_models + failed_steps if plugin in names]
    failed = {plugin: _last_failure(hooks, plugin) for plugin in raised}
    by_plugin: dict[str, dict[str, object]] = {}
    for key, answers in (("models", models), ("steps", steps)):
        for plugin, answer in answers:
            by_plugin.setdefault(plugin, {})[key] = answer
    schemas = []
    for plugin in sorted(names - failed.keys()):
        answers = by_plugin.get(plugin, {})
        if not answers:
            continue
        try:
            schema = Schema(
                plugin,
                _check_models(answers.get("models")),
                _check_steps(answers.get("steps")),
            )
        except PluginSchemaError as exc:
            hooks.record_failure(plugin, "database_models", exc)
            failed[plugin] = str(exc)
            continue
        schemas.append(schema)
    return schemas, failed


def _last_failure(hooks: PluginHost, plugin: str) -> str:
    return next((f.error for f in reversed(hooks.failures) if f.plugin == plugin), "raised")


def prepare_plugins(hooks: PluginHost, names: set[str]) -> set[str]:
    """Create and upgrade the tables of the registered plugins named; return those
    that failed, which are marked failed and unregistered (their hooks would
    meet tables that are missing or of an older shape)."""
    schemas, failed = plugin_schemas(hooks, names)
    for schema in schemas:
        try:
            prepare_plugin(schema)
        except Exception as exc:  # noqa: BLE001 - a plugin's tables or steps are the plugin's
            hooks.record_failure(schema.owner, "database_migrations", exc)
            failed[schema.owner] = f"{type(exc).__name__}: {exc}"
    for plugin, error in failed.items():
        info = hooks.infos.get(plugin)
        if info is not None:
            info.error = f"its tables could not be prepared ({error})"
        if hooks.pm.get_plugin(plugin) is not None:
            hooks.pm.unregister(name=plugin)
    return set(failed)
