"""Built-in plugin: runs the ``mail`` jobs enqueued by ``pacs.send_mail``."""

from __future__ import annotations

from pacscore.hookspecs import hookimpl
from pacscore.jobs import JobHandler
from pacscore.mail import MAIL_JOB_KIND, MAIL_RETRY_SCHEDULE, run_mail_job


@hookimpl
def job_handlers(pacs):
    return {
        MAIL_JOB_KIND: JobHandler(run_mail_job, concurrency=1, retry_schedule=MAIL_RETRY_SCHEDULE)
    }
