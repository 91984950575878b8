"""Console page of background jobs: pending, running, failed (with the error), done."""

from __future__ import annotations

import json

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from pacscore.jobs import STATES
from pacscore.models import Job
from pacscore.web.common import get_pacs, page_args, record
from pacscore.web.security import require_right

bp = Blueprint("jobs", __name__, url_prefix="/jobs")


def jobs_query(state: str | None):
    if state and state not in STATES:
        abort(400, f"unknown state {state!r}: one of {', '.join(STATES)}")
    query = Job.select().order_by(Job.id.desc())
    return query.where(Job.state == state) if state else query


@bp.get("/")
@require_right("manage_jobs")
def index():
    state = request.args.get("state") or None
    page, size = page_args()
    query = jobs_query(state)
    counts = {s: Job.select().where(Job.state == s).count() for s in STATES}
    return render_template(
        "jobs.html",
        jobs=list(query.paginate(page, size)),
        state=state,
        states=STATES,
        counts=counts,
        loads=json.loads,
    )


@bp.post("/<int:job_id>/retry")
@require_right("manage_jobs")
def retry(job_id: int):
    if get_pacs().jobs.retry_now(job_id):
        record("job_retry", target=str(job_id))
        flash(f"Job {job_id} is due now.", "success")
    else:
        flash(f"Job {job_id} is running or gone.", "error")
    return redirect(url_for("jobs.index", state=request.args.get("state") or None))


@bp.post("/<int:job_id>/delete")
@require_right("manage_jobs")
def delete(job_id: int):
    if get_pacs().jobs.delete(job_id):
        record("job_delete", target=str(job_id))
        flash(f"Job {job_id} deleted.", "success")
    else:
        flash(f"Job {job_id} does not exist.", "error")
    return redirect(url_for("jobs.index", state=request.args.get("state") or None))
