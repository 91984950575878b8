"""Background jobs: the list by state, making one due now, deleting one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peewee import ModelSelect

from pacscore.jobs import STATES
from pacscore.models import Job
from pacscore.services import Actor, Conflict, Invalid, NotFound, record

if TYPE_CHECKING:
    from pacscore.app import Pacs


def query(state: str | None) -> ModelSelect:
    """Jobs newest first, of one state if given."""
    if state and state not in STATES:
        raise Invalid({"state": [f"unknown state {state!r}: one of {', '.join(STATES)}"]})
    found = Job.select().order_by(Job.id.desc())
    return found.where(Job.state == state) if state else found


def counts() -> dict[str, int]:
    """How many jobs are in each state."""
    return {s: Job.select().where(Job.state == s).count() for s in STATES}


def retry(pacs: Pacs, job_id: int, actor: Actor | None = None) -> Job:
    """Make a pending, failed or done job due now (:class:`Conflict` if it is running)."""
    if not pacs.jobs.retry_now(job_id):
        if pacs.jobs.get(job_id) is None:
            raise NotFound("no such job")
        raise Conflict("the job is running")
    record(actor, "job_retry", target=str(job_id))
    return pacs.jobs.get(job_id)


def delete(pacs: Pacs, job_id: int, actor: Actor | None = None) -> None:
    if not pacs.jobs.delete(job_id):
        raise NotFound("no such job")
    record(actor, "job_delete", target=str(job_id))
