"""Console pages of studies: search, view, ZIP download, delete, send to a node."""

from __future__ import annotations

import math

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError

from pacscore.models import Node, Series
from pacscore.web import studyops
from pacscore.web.common import check_uid, get_pacs, record
from pacscore.web.schemas import StudySearchSchema
from pacscore.web.security import current_user, require_right

bp = Blueprint("studies", __name__, url_prefix="/studies")

COMMON_MODALITIES = ("CR", "CT", "DX", "MG", "MR", "NM", "OT", "PT", "RF", "SC", "US", "XA")


def modality_choices() -> list[str]:
    """The common modalities and any other the archive holds."""
    stored = {s.modality for s in Series.select(Series.modality).distinct() if s.modality}
    return sorted(set(COMMON_MODALITIES) | stored)


SEARCH_SCHEMA = StudySearchSchema()


def _filters() -> tuple[dict, dict]:
    raw = {k: v for k, v in request.args.items() if k in SEARCH_SCHEMA.fields and v != ""}
    raw["modalities"] = request.args.getlist("modalities")
    try:
        return SEARCH_SCHEMA.load(raw), {}
    except ValidationError as exc:
        return SEARCH_SCHEMA.load({}), exc.normalized_messages()


@bp.get("/")
@require_right("view_studies")
def search():
    filters, errors = _filters()
    query = studyops.search(current_user(), filters)
    total = query.count()
    pages = max(1, math.ceil(total / filters["page_size"]))
    studies = list(query.paginate(filters["page"], filters["page_size"]))
    args = {k: v for k, v in request.args.to_dict(flat=False).items() if k != "page"}
    return render_template(
        "studies.html",
        studies=studies,
        total=total,
        page=filters["page"],
        pages=pages,
        filters=filters,
        errors=errors,
        modalities=modality_choices(),
        args=args,
    )


@bp.get("/<uid>")
@require_right("view_studies")
def view(uid: str):
    study = studyops.study_or_404(current_user(), check_uid(uid))
    nodes = list(Node.select().where(Node.enabled).order_by(Node.name))
    return render_template("study.html", study=study, series=studyops.series_of(study), nodes=nodes)


def _zip_response(study, series=None) -> Response:
    entries = studyops.zip_entries(get_pacs(), study, series)
    record(
        "export",
        target=study.study_uid,
        series=series.series_uid if series else "",
        instances=len(entries),
    )
    name = studyops.zip_name(study, series)
    return Response(
        studyops.zip_stream(entries),
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/<uid>/download")
@require_right("download")
def download(uid: str):
    return _zip_response(studyops.study_or_404(current_user(), check_uid(uid)))


@bp.get("/<uid>/series/<series_uid>/download")
@require_right("download")
def download_series(uid: str, series_uid: str):
    study = studyops.study_or_404(current_user(), check_uid(uid))
    return _zip_response(study, studyops.series_or_404(study, check_uid(series_uid)))


@bp.route("/<uid>/delete", methods=["GET", "POST"])
@require_right("delete")
def delete(uid: str):
    study = studyops.study_or_404(current_user(), check_uid(uid))
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render_template(
            "confirm.html",
            title="Delete a study",
            question=f"Delete study {study.study_uid} of {study.patient.patient_name} "
            f"({study.num_instances} instances)? This cannot be undone.",
            action=url_for("studies.delete", uid=uid),
            button="Delete",
            cancel=url_for("studies.view", uid=uid),
        )
    count = studyops.delete_instances(get_pacs(), study, None, current_user().login)
    record("delete", target=study.study_uid, instances=count)
    flash(f"Study deleted ({count} instances).", "success")
    return redirect(url_for("studies.search"))


@bp.post("/<uid>/send")
@require_right("send")
def send(uid: str):
    study = studyops.study_or_404(current_user(), check_uid(uid))
    node = Node.get_or_none(Node.name == request.form.get("node", ""))
    if node is None or not node.enabled:
        flash("Choose a node to send to.", "error")
        return redirect(url_for("studies.view", uid=uid))
    job_id = studyops.enqueue_send(get_pacs(), study, node, current_user().login)
    record("send_request", target=study.study_uid, node=node.name, job_id=job_id)
    flash(f"Sending to {node.name} (job {job_id}): see the jobs page for the outcome.", "success")
    return redirect(url_for("studies.view", uid=uid))
