"""pacscore-purge: retention rules and size thresholds, dry run, audit, schedule.

Hooks used: ``settings_schema`` (rules, thresholds, schedule), ``cli_commands``
(``pacscore purge``), ``job_handlers`` (the ``purge`` job) and
``periodic_tasks`` (enqueue the daily and threshold runs).  Deleting goes
through ``pacs.archive.delete_series`` (crash-safe, fires ``on_delete``,
audited as ``system:purge``) after asking ``retention_holds``.  For a console
page: :func:`pacscore_purge.planner.make_plan` is the dry run; ``register_blueprints``
adds the Purge page and ``/api/v1/purge`` routes (``web.py``).
"""

from __future__ import annotations

from pacscore import hookimpl
from pacscore_purge import cli, schedule
from pacscore_purge.planner import Plan, PlanItem, make_plan
from pacscore_purge.runner import RunReport, run_purge
from pacscore_purge.settings import PurgeSettingsSchema

__all__ = ["Plan", "PlanItem", "RunReport", "make_plan", "run_purge"]


@hookimpl
def settings_schema():
    return PurgeSettingsSchema()


@hookimpl
def cli_commands(subparsers):
    cli.add_command(subparsers)


@hookimpl
def job_handlers():
    return schedule.job_handlers()


@hookimpl
def periodic_tasks():
    return schedule.periodic_tasks()


@hookimpl
def register_blueprints(pacs, app):
    from pacscore.web.menu import add_menu_item
    from pacscore_purge.web import make_blueprints

    for blueprint in make_blueprints():
        app.register_blueprint(blueprint)
    add_menu_item(app, "Purge", "purge.index", "view_audit")
