"""Console page of background jobs: pending, running, failed (with the error), done."""

from __future__ import annotations

import json

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from pacscore.jobs import STATES
from pacscore.services import Invalid, ServiceError
from pacscore.services import jobs as job_service
from pacscore.web.common import actor, get_pacs, page_args
from pacscore.web.security import require_right

bp = Blueprint("jobs", __name__, url_prefix="/jobs")


@bp.get("/")
@require_right("manage_jobs")
def index():
    state = request.args.get("state") or None
    page, size = page_args()
    try:
        query = job_service.query(state)
    except Invalid as exc:
        abort(400, exc.message)
    return render_template(
        "jobs.html",
        jobs=list(query.paginate(page, size)),
        state=state,
        states=STATES,
        counts=job_service.counts(),
        loads=json.loads,
    )


@bp.post("/<int:job_id>/retry")
@require_right("manage_jobs")
def retry(job_id: int):
    try:
        job_service.retry(get_pacs(), job_id, actor())
    except ServiceError:
        flash(f"Job {job_id} is running or gone.", "error")
    else:
        flash(f"Job {job_id} is due now.", "success")
    return redirect(url_for("jobs.index", state=request.args.get("state") or None))


@bp.post("/<int:job_id>/delete")
@require_right("manage_jobs")
def delete(job_id: int):
    try:
        job_service.delete(get_pacs(), job_id, actor())
    except ServiceError:
        flash(f"Job {job_id} does not exist.", "error")
    else:
        flash(f"Job {job_id} deleted.", "success")
    return redirect(url_for("jobs.index", state=request.args.get("state") or None))
