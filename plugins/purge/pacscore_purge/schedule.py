"""The purge as a durable job: a daily run at ``schedule_time`` (server local
time) and a size run whenever a threshold is crossed, both checked by a
periodic task that only enqueues (the job worker does the deleting)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from pacscore.db import write_transaction
from pacscore.jobs import JobHandler
from pacscore.models import Job
from pacscore.scheduler import PeriodicTask
from pacscore_purge.planner import size_needs
from pacscore_purge.runner import run_purge
from pacscore_purge.settings import PLUGIN_NAME

if TYPE_CHECKING:
    from pacscore.app import Pacs

JOB_KIND = "purge"
TICK_SECONDS = 60
# a failed purge is retried soon: the next daily run is far away
RETRY_SCHEDULE = [600, 3600, 6 * 3600]

# per Pacs object (a process may hold several, as tests do)
_last_size_check: WeakKeyDictionary = WeakKeyDictionary()


def run_job(pacs: Pacs, payload: dict) -> None:
    run_purge(pacs, scope=payload.get("scope", "all"))


def scheduled_moment(schedule_time: str, now_local: datetime) -> datetime | None:
    """Today's scheduled run as a naive UTC datetime, or None if not due yet / no schedule."""
    if not schedule_time:
        return None
    hour, minute = (int(part) for part in schedule_time.split(":"))
    moment = now_local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if now_local < moment:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None)


def _enqueue_once(pacs: Pacs, trigger: str, scope: str, since: datetime | None) -> int | None:
    """Enqueue a purge job unless one of this trigger exists since ``since``
    (or, without ``since``, unless one is pending or running)."""
    with write_transaction():
        query = Job.select().where((Job.kind == JOB_KIND) & Job.payload.contains(trigger))
        if since is not None:
            query = query.where(Job.created >= since)
        else:
            query = query.where(Job.state.in_(["pending", "running"]))
        if query.exists():
            return None
        return pacs.jobs.enqueue(JOB_KIND, {"scope": scope, "trigger": trigger})


def tick(pacs: Pacs, now_local: datetime | None = None) -> int | None:
    """The periodic task: enqueue the daily run once, or a size run when needed."""
    settings = pacs.plugin_settings(PLUGIN_NAME)
    now_local = now_local or datetime.now().astimezone()
    moment = scheduled_moment(settings["schedule_time"], now_local)
    if moment is not None:
        job_id = _enqueue_once(pacs, "schedule", "all", since=moment)
        if job_id is not None:
            return job_id
    if not settings["thresholds"]:
        return None
    last = _last_size_check.get(pacs, float("-inf"))
    if time.monotonic() - last < settings["size_check_minutes"] * 60:
        return None
    _last_size_check[pacs] = time.monotonic()
    if size_needs(pacs, settings["thresholds"], []):
        return _enqueue_once(pacs, "threshold", "size", since=None)
    return None


def job_handlers() -> dict[str, JobHandler]:
    return {JOB_KIND: JobHandler(run_job, concurrency=1, retry_schedule=RETRY_SCHEDULE)}


def periodic_tasks() -> list[PeriodicTask]:
    return [PeriodicTask("purge_schedule", TICK_SECONDS, tick)]
