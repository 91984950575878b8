"""Console page and API routes of the purge plugin: the dry run and "run now".

Viewing needs ``view_audit``: the dry run lists what the audit trail will record
(study, patient ID, rule, bytes), so whoever reads that trail may read it ahead.
Running needs ``delete``, the right to delete studies by hand.  Rules and
thresholds stay on the generic plugin settings page.
"""

from __future__ import annotations

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from marshmallow import Schema, fields, validate

from pacscore.db import connection
from pacscore.services.schemas import UtcDateTime
from pacscore.web.common import get_pacs, load, load_json, record
from pacscore.web.openapi import doc
from pacscore.web.schemas import JobRefSchema
from pacscore.web.security import require_right

from .planner import make_plan
from .schedule import JOB_KIND

VIEW_RIGHT = "view_audit"
RUN_RIGHT = "delete"
SCOPES = ["all", "rules", "size"]


class ScopeSchema(Schema):
    scope = fields.String(load_default="all", validate=validate.OneOf(SCOPES))


class PlanItemSchema(Schema):
    series_uid = fields.String()
    study_uid = fields.String()
    patient_id = fields.String()
    modality = fields.String()
    description = fields.String()
    date = fields.String(metadata={"description": "YYYYMMDD the age is measured from"})
    instances = fields.Integer()
    bytes = fields.Integer()
    reason = fields.String()
    held = fields.String(metadata={"description": "why a plugin keeps it (empty: it goes)"})


class PlanTotalsSchema(Schema):
    series = fields.Integer()
    studies = fields.Integer()
    instances = fields.Integer()
    bytes = fields.Integer()


class PlanSchema(Schema):
    made_at = UtcDateTime()
    items = fields.List(fields.Nested(PlanItemSchema))
    held = fields.List(fields.Nested(PlanItemSchema))
    warnings = fields.List(fields.String())
    totals = fields.Nested(PlanTotalsSchema)


SCHEMA = ScopeSchema()


def enqueue_run(pacs, scope: str) -> int:
    with connection():
        job_id = pacs.jobs.enqueue(JOB_KIND, {"scope": scope, "trigger": "console"})
    record("purge_run", target=scope, job_id=job_id)
    return job_id


def make_blueprints() -> list[Blueprint]:
    page = Blueprint("purge", __name__, url_prefix="/purge", template_folder="console_templates")
    api = Blueprint("purge_api", __name__, url_prefix="/api/v1/purge")

    @page.get("/")
    @require_right(VIEW_RIGHT)
    def index():
        scope = load(SCHEMA, dict(request.args))["scope"]
        plan = make_plan(get_pacs(), scope=scope)
        return render_template("purge/index.html", plan=plan, scope=scope, scopes=SCOPES)

    @page.route("/run", methods=["GET", "POST"])
    @require_right(RUN_RIGHT)
    def run():
        scope = load(SCHEMA, {"scope": request.values.get("scope", "all")})["scope"]
        if request.method == "POST" and request.form.get("confirm") == "yes":
            job_id = enqueue_run(get_pacs(), scope)
            flash(f"Purge job {job_id} queued (scope {scope}); its outcome is on the Jobs page.",
                  "success")  # fmt: skip
            return redirect(url_for("purge.index", scope=scope))
        return render_template(
            "confirm.html",
            title="Run the purge now",
            question=f"Delete now, irreversibly, what the dry run lists (scope {scope})?",
            action=url_for("purge.run"),
            hidden={"scope": scope},
            button="Purge now",
            cancel=url_for("purge.index", scope=scope),
        )

    @api.get("/plan")
    @require_right(VIEW_RIGHT)
    @doc("The dry run: what a purge would delete now, and why", query=ScopeSchema,
         response=PlanSchema)  # fmt: skip
    def plan_api():
        scope = load(SCHEMA, dict(request.args))["scope"]
        return jsonify(PlanSchema().dump(make_plan(get_pacs(), scope=scope)))

    @api.post("/run")
    @require_right(RUN_RIGHT)
    @doc("Purge now (a background job)", body=ScopeSchema, response=JobRefSchema, status=202)
    def run_api():
        scope = load_json(SCHEMA)["scope"]
        return jsonify(job_id=enqueue_run(get_pacs(), scope), state="pending"), 202

    return [page, api]
