"""Built-in plugin: worklist steps not started in time become DISCONTINUED.

The timeout is the core setting ``worklist_timeout_hours`` (default 24, 0
disables), counted from each step's scheduled start.
"""

from __future__ import annotations

from pacscore.hookspecs import hookimpl
from pacscore.scheduler import PeriodicTask

CHECK_EVERY_SECONDS = 60


def expire_overdue_steps(pacs) -> None:
    pacs.worklist.expire_overdue()


@hookimpl
def periodic_tasks(pacs):
    return [PeriodicTask("expire_overdue_steps", CHECK_EVERY_SECONDS, expire_overdue_steps)]
