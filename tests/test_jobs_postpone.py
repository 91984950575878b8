"""Jobs a handler postpones (``pacscore.jobs.Postpone``) and ``pacs.jobs.current()``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pacscore.db import connection, utcnow
from pacscore.hookspecs import hookimpl
from pacscore.jobs import JobHandler, Postpone
from pacscore.models import Job

pytestmark = pytest.mark.timeout(60)


class Waiting:
    def __init__(self) -> None:
        self.current_ids: list[int] = []

    def wait(self, pacs, payload):
        self.current_ids.append(pacs.jobs.current().id)
        if payload.get("later"):
            raise Postpone(600, "the window opens at 20:00")

    @hookimpl
    def job_handlers(self, pacs):
        return {"wait": JobHandler(self.wait, retry_schedule=[10])}


def test_a_postponed_job_is_pending_later_without_using_an_attempt(make_pacs):
    plugin = Waiting()
    pacs = make_pacs(plugin)
    job_id = pacs.jobs.enqueue("wait", {"later": True})
    assert pacs.jobs.current() is None
    assert pacs.jobs.run(pacs.jobs.take(["wait"], "test")) is False
    with connection():
        row = Job.get_by_id(job_id)
    assert (row.state, row.attempts) == ("pending", 0)
    assert row.last_error == "the window opens at 20:00"
    assert abs((row.next_attempt - (utcnow() + timedelta(seconds=600))).total_seconds()) < 5
    assert pacs.jobs.current() is None  # reset after the handler

    other = pacs.jobs.enqueue("wait", {})
    assert pacs.jobs.run(pacs.jobs.take(["wait"], "test")) is True
    assert plugin.current_ids == [job_id, other]
