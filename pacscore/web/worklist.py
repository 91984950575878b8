"""Worklist pages and API: search entries, add one from a study type, delete, reset, clear.

Every change goes through ``pacs.worklist`` so ``on_worklist_change`` fires.
All views need ``manage_worklist``: worklist entries carry patient data that
the service filter of the study list does not cover, so ``view_studies``
alone does not open them (see docs/worklist.md).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from marshmallow import Schema, ValidationError, fields, validate
from peewee import IntegrityError

from pacscore.models import Node, ScheduledStep, StudyType
from pacscore.web.api import doc
from pacscore.web.common import (
    InvalidInput,
    get_pacs,
    json_body,
    load,
    load_args,
    load_json,
    record,
)
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.schemas import _date
from pacscore.web.security import require_right
from pacscore.web.studyops import DATE_PRESETS, date_range
from pacscore.worklist import IN_PROGRESS, STATUSES, UnknownEntry, WorklistError

RIGHT = "manage_worklist"
SEARCH_LIMIT = 200
bp = Blueprint("worklist", __name__, url_prefix="/worklist")
api = Blueprint("worklist_api", __name__, url_prefix="/api/v1/worklist")

# -- schemas ---------------------------------------------------------------------------

TIME = validate.Regexp(r"^(([01]\d|2[0-3]):?[0-5]\d)?$", error="a time HH:MM")
MODALITY = validate.Regexp(r"^[A-Z0-9]{0,16}$", error="upper-case letters and digits")
TEXT = validate.Length(max=64)
LONG_TEXT = validate.Length(max=324)


class WorklistSearchSchema(Schema):
    patient_name = fields.String(load_default="", validate=LONG_TEXT)
    patient_id = fields.String(load_default="", validate=TEXT)
    accession = fields.String(load_default="", validate=TEXT)
    modality = fields.String(load_default="", validate=MODALITY)
    date_preset = fields.String(load_default="any", validate=validate.OneOf(DATE_PRESETS))
    date = fields.String(load_default="", validate=_date)
    date_from = fields.String(load_default="", validate=_date)
    date_to = fields.String(load_default="", validate=_date)
    status = fields.String(load_default="", validate=validate.OneOf(["", *STATUSES]))
    limit = fields.Integer(load_default=SEARCH_LIMIT, validate=validate.Range(min=1, max=1000))


class EntryCreateSchema(Schema):
    """A new entry: the patient, the order, and one step built from a study type."""

    patient_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    patient_name = fields.String(load_default="", validate=LONG_TEXT, metadata={"help": "DOE^JOHN"})
    birth_date = fields.String(load_default="", validate=_date)
    sex = fields.String(load_default="", validate=validate.OneOf(["", "M", "F", "O"]))
    accession_number = fields.String(load_default="", validate=TEXT)
    study_type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    node = fields.String(load_default="", validate=TEXT, metadata={"help": "station (a node)"})
    start_date = fields.String(load_default="", validate=_date)
    start_time = fields.String(load_default="", validate=TIME)
    referring_physician = fields.String(load_default="", validate=LONG_TEXT)
    reason = fields.String(load_default="", validate=LONG_TEXT)


class StudyTypeSchema(Schema):
    code = fields.String(required=True, validate=validate.Regexp(r"^\S{1,64}$"))
    description = fields.String(load_default="", validate=LONG_TEXT)
    modality = fields.String(load_default="", validate=MODALITY)
    duration_minutes = fields.Integer(load_default=15, validate=validate.Range(min=1, max=1440))
    nodes = fields.List(fields.String(validate=TEXT), load_default=list)


class StudyTypeOutSchema(StudyTypeSchema):
    id = fields.Integer()
    nodes = fields.Function(lambda t: json.loads(t.nodes))


class StepOutSchema(Schema):
    id = fields.Integer()
    sps_id = fields.String()
    modality = fields.String()
    station_aet = fields.String()
    start_date = fields.String()
    start_time = fields.String()
    description = fields.String()
    protocol_code = fields.String()
    status = fields.String()
    updated = fields.String()


class EntryOutSchema(Schema):
    id = fields.Integer()
    patient_id = fields.String()
    patient_name = fields.String()
    birth_date = fields.String()
    sex = fields.String()
    accession_number = fields.String()
    study_uid = fields.String()
    procedure_code = fields.String()
    procedure_description = fields.String()
    referring_physician = fields.String()
    reason = fields.String()
    created = fields.String()
    updated = fields.String()
    steps = fields.List(fields.Nested(StepOutSchema))


class ClearedSchema(Schema):
    deleted = fields.Integer()


# -- operations shared by pages and API ---------------------------------------------------


def search_entries(filters: dict[str, Any]) -> list[dict]:
    wanted = {
        "patient_name": filters["patient_name"],
        "patient_id": filters["patient_id"],
        "accession_number": filters["accession"],
        "modality": filters["modality"],
        "start_date": date_range(
            filters["date_preset"], filters["date"], filters["date_from"], filters["date_to"]
        ),
        "status": filters["status"],
    }
    return get_pacs().worklist.search(
        limit=filters["limit"], **{k: v for k, v in wanted.items() if v}
    )


def study_type_nodes(study_type: StudyType) -> list[str]:
    return json.loads(study_type.nodes)


def create_entry(values: dict[str, Any]) -> dict:
    """Build procedure and step from the form values and a study type; field errors raise."""
    study_type = StudyType.get_or_none(StudyType.code == values["study_type"])
    if study_type is None:
        raise ValidationError({"study_type": ["no such study type"]})
    allowed = study_type_nodes(study_type)
    node = None
    if values["node"]:
        node = Node.get_or_none(Node.name == values["node"])
        if node is None or (allowed and node.name not in allowed):
            raise ValidationError({"node": ["not a node allowed for this study type"]})
    elif len(allowed) == 1:
        node = Node.get_or_none(Node.name == allowed[0])
    procedure = {
        name: values[name]
        for name in ("patient_id", "patient_name", "sex", "accession_number")
        + ("referring_physician", "reason")
    }
    procedure.update(
        birth_date=values["birth_date"].replace("-", ""),
        procedure_code=study_type.code,
        procedure_description=study_type.description,
    )
    step = {
        "modality": study_type.modality,
        "station_aet": node.aet if node else "",
        "start_date": values["start_date"].replace("-", ""),
        "start_time": values["start_time"].replace(":", "") + "00" if values["start_time"] else "",
        "description": study_type.description,
        "protocol_code": study_type.code,
    }
    try:
        return get_pacs().worklist.create(procedure, [step])
    except WorklistError as exc:
        raise ValidationError({"_schema": [str(exc)]}) from None


def entry_or_404(entry_id: int) -> dict:
    entry = get_pacs().worklist.get(entry_id)
    if entry is None:
        abort(404, "no such worklist entry")
    return entry


def step_or_404(step_id: int) -> ScheduledStep:
    step = ScheduledStep.get_or_none(ScheduledStep.id == step_id)
    if step is None:
        abort(404, "no such scheduled step")
    return step


def save_study_type(study_type: StudyType, values: dict[str, Any]) -> None:
    unknown = [n for n in values.get("nodes", []) if not Node.get_or_none(Node.name == n)]
    if unknown:
        raise ValidationError({"nodes": [f"unknown node(s): {', '.join(unknown)}"]})
    for name, value in values.items():
        setattr(study_type, name, json.dumps(value) if name == "nodes" else value)
    try:
        study_type.save()
    except IntegrityError:
        raise ValidationError({"code": ["a study type with this code already exists"]}) from None


def study_type_or_404(type_id: int) -> StudyType:
    found = StudyType.get_or_none(StudyType.id == type_id)
    if found is None:
        abort(404, "no such study type")
    return found


def _changed_or_404(call, *args):
    try:
        return call(*args)
    except UnknownEntry:
        abort(404, "no such worklist entry or step")


# -- console pages ---------------------------------------------------------------------------


@bp.get("/")
@require_right(RIGHT)
def index():
    schema = WorklistSearchSchema()
    try:
        filters = schema.load({k: request.args.get(k) for k in schema.fields if k in request.args})
        errors = {}
    except ValidationError as exc:
        filters, errors = schema.load({}), exc.normalized_messages()
    entries = [] if errors else search_entries(filters)
    return render_template(
        "worklist.html",
        entries=entries,
        filters=filters,
        errors=errors,
        presets=DATE_PRESETS,
        statuses=STATUSES,
        in_progress=IN_PROGRESS,
    )


@bp.route("/new", methods=["GET", "POST"])
@require_right(RIGHT)
def create():
    schema = EntryCreateSchema()
    codes = [t.code for t in StudyType.select().order_by(StudyType.code)]
    nodes = ["", *[n.name for n in Node.select().order_by(Node.name)]]
    specs = form_fields(schema, choices={"study_type": codes, "node": nodes})
    errors: dict = {}
    shown = schema_defaults(schema)
    if request.method == "POST":
        shown = parse_form(specs, request.form)
        try:
            entry = create_entry(schema.load(shown))
        except ValidationError as exc:
            errors = exc.normalized_messages()
        else:
            record("worklist_create", target=entry["accession_number"] or str(entry["id"]))
            flash(f"Worklist entry for {entry['patient_id']} added.", "success")
            return redirect(url_for("worklist.index"))
    return render_template(
        "form.html",
        title="New worklist entry",
        intro=None if codes else "Declare a study type first.",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=url_for("worklist.index"),
    )


def _needs_confirmation(steps: list[dict], title: str, question: str, action: str):
    """The confirmation page when a step is IN_PROGRESS and the form did not confirm."""
    busy = any(s["status"] == IN_PROGRESS for s in steps)
    if not busy or request.form.get("confirm") == "yes":
        return None
    return render_template(
        "confirm.html",
        title=title,
        question=f"{question} A modality is performing it now (IN_PROGRESS).",
        action=action,
        button="Delete anyway",
        cancel=url_for("worklist.index"),
    )


@bp.post("/<int:entry_id>/delete")
@require_right(RIGHT)
def delete(entry_id: int):
    entry = entry_or_404(entry_id)
    page = _needs_confirmation(
        entry["steps"],
        "Delete a worklist entry",
        f"Delete the entry of {entry['patient_id']} ({entry['accession_number']})?",
        url_for("worklist.delete", entry_id=entry_id),
    )
    if page:
        return page
    _changed_or_404(get_pacs().worklist.delete, entry_id)
    record("worklist_delete", target=str(entry_id))
    flash("Worklist entry deleted.", "success")
    return redirect(url_for("worklist.index"))


@bp.post("/steps/<int:step_id>/delete")
@require_right(RIGHT)
def delete_step(step_id: int):
    step = step_or_404(step_id)
    page = _needs_confirmation(
        [{"status": step.status}],
        "Delete a scheduled step",
        f"Delete step {step.sps_id} ({step.modality} {step.description})?",
        url_for("worklist.delete_step", step_id=step_id),
    )
    if page:
        return page
    _changed_or_404(get_pacs().worklist.delete_step, step_id)
    record("worklist_delete_step", target=str(step_id))
    flash("Scheduled step deleted.", "success")
    return redirect(url_for("worklist.index"))


@bp.post("/steps/<int:step_id>/reset")
@require_right(RIGHT)
def reset_step(step_id: int):
    step_or_404(step_id)
    _changed_or_404(get_pacs().worklist.reset_step, step_id)
    record("worklist_reset_step", target=str(step_id))
    flash("Step back to SCHEDULED.", "success")
    return redirect(url_for("worklist.index"))


@bp.route("/clear", methods=["GET", "POST"])
@require_right(RIGHT)
def clear():
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render_template(
            "confirm.html",
            title="Clear finished entries",
            question="Delete every entry whose steps are all COMPLETED, DISCONTINUED, MISSED "
            "or CANCELED?",
            action=url_for("worklist.clear"),
            button="Clear",
            cancel=url_for("worklist.index"),
        )
    count = get_pacs().worklist.clear_finished()
    record("worklist_clear", deleted=count)
    flash(f"{count} finished entries deleted.", "success")
    return redirect(url_for("worklist.index"))


@bp.get("/study-types")
@require_right(RIGHT)
def study_types():
    rows = list(StudyType.select().order_by(StudyType.code))
    return render_template("study_types.html", study_types=rows, nodes_of=study_type_nodes)


def _study_type_form(study_type: StudyType | None):
    schema = StudyTypeSchema()
    specs = form_fields(schema)
    errors: dict = {}
    if request.method == "POST":
        shown = parse_form(specs, request.form)
        try:
            target = study_type or StudyType()
            save_study_type(target, schema.load(shown))
        except ValidationError as exc:
            errors = exc.normalized_messages()
        else:
            record("study_type_save", target=target.code, created=study_type is None)
            flash(f"Study type {target.code} saved.", "success")
            return redirect(url_for("worklist.study_types"))
    else:
        shown = StudyTypeOutSchema().dump(study_type) if study_type else schema_defaults(schema)
    return render_template(
        "form.html",
        title=f"Study type {study_type.code}" if study_type else "New study type",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=url_for("worklist.study_types"),
    )


@bp.route("/study-types/new", methods=["GET", "POST"])
@require_right(RIGHT)
def create_study_type():
    return _study_type_form(None)


@bp.route("/study-types/<int:type_id>", methods=["GET", "POST"])
@require_right(RIGHT)
def edit_study_type(type_id: int):
    return _study_type_form(study_type_or_404(type_id))


@bp.post("/study-types/<int:type_id>/delete")
@require_right(RIGHT)
def delete_study_type(type_id: int):
    target = study_type_or_404(type_id)
    target.delete_instance()
    record("study_type_delete", target=target.code)
    flash(f"Study type {target.code} deleted.", "success")
    return redirect(url_for("worklist.study_types"))


# -- API ---------------------------------------------------------------------------------------


def _confirmed_or_409(steps: list[dict]) -> None:
    busy = any(s["status"] == IN_PROGRESS for s in steps)
    if busy and request.args.get("confirm") != "yes":
        abort(409, "a step is IN_PROGRESS: repeat with ?confirm=yes to delete it anyway")


@api.get("")
@require_right(RIGHT)
@doc("Search worklist entries", query=WorklistSearchSchema, response=EntryOutSchema, many=True)
def api_search():
    entries = search_entries(load_args(WorklistSearchSchema()))
    return jsonify(EntryOutSchema(many=True).dump(entries))


@api.post("")
@require_right(RIGHT)
@doc("Add an entry from a study type", body=EntryCreateSchema, response=EntryOutSchema, status=201)
def api_create():
    try:
        entry = create_entry(load_json(EntryCreateSchema()))
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    record("worklist_create", target=entry["accession_number"] or str(entry["id"]), via="api")
    return jsonify(EntryOutSchema().dump(entry)), 201


@api.get("/<int:entry_id>")
@require_right(RIGHT)
@doc("One entry with its steps", response=EntryOutSchema)
def api_entry(entry_id: int):
    return jsonify(EntryOutSchema().dump(entry_or_404(entry_id)))


@api.delete("/<int:entry_id>")
@require_right(RIGHT)
@doc("Delete an entry (?confirm=yes when a step is IN_PROGRESS)")
def api_delete(entry_id: int):
    _confirmed_or_409(entry_or_404(entry_id)["steps"])
    _changed_or_404(get_pacs().worklist.delete, entry_id)
    record("worklist_delete", target=str(entry_id), via="api")
    return "", 204


@api.delete("/steps/<int:step_id>")
@require_right(RIGHT)
@doc("Delete a step (?confirm=yes when IN_PROGRESS); its entry goes with its last step")
def api_delete_step(step_id: int):
    _confirmed_or_409([{"status": step_or_404(step_id).status}])
    _changed_or_404(get_pacs().worklist.delete_step, step_id)
    record("worklist_delete_step", target=str(step_id), via="api")
    return "", 204


@api.post("/steps/<int:step_id>/reset")
@require_right(RIGHT)
@doc("Put a step back to SCHEDULED", response=EntryOutSchema)
def api_reset_step(step_id: int):
    step_or_404(step_id)
    entry = _changed_or_404(get_pacs().worklist.reset_step, step_id)
    record("worklist_reset_step", target=str(step_id), via="api")
    return jsonify(EntryOutSchema().dump(entry))


@api.post("/clear")
@require_right(RIGHT)
@doc("Delete every finished entry", response=ClearedSchema)
def api_clear():
    count = get_pacs().worklist.clear_finished()
    record("worklist_clear", deleted=count, via="api")
    return jsonify(deleted=count)


@api.get("/study-types")
@require_right(RIGHT)
@doc("Study types", response=StudyTypeOutSchema, many=True)
def api_study_types():
    rows = StudyType.select().order_by(StudyType.code)
    return jsonify(StudyTypeOutSchema(many=True).dump(rows))


@api.post("/study-types")
@require_right(RIGHT)
@doc("Declare a study type", body=StudyTypeSchema, response=StudyTypeOutSchema, status=201)
def api_create_study_type():
    target = StudyType()
    try:
        save_study_type(target, load_json(StudyTypeSchema()))
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    record("study_type_save", target=target.code, created=True, via="api")
    return jsonify(StudyTypeOutSchema().dump(target)), 201


@api.patch("/study-types/<int:type_id>")
@require_right(RIGHT)
@doc("Change a study type", body=StudyTypeSchema, response=StudyTypeOutSchema)
def api_update_study_type(type_id: int):
    target = study_type_or_404(type_id)
    given = json_body()
    values = load(StudyTypeSchema(), given, partial=True)
    try:
        save_study_type(target, {k: v for k, v in values.items() if k in given})
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    record("study_type_save", target=target.code, created=False, via="api")
    return jsonify(StudyTypeOutSchema().dump(target))


@api.delete("/study-types/<int:type_id>")
@require_right(RIGHT)
@doc("Delete a study type")
def api_delete_study_type(type_id: int):
    target = study_type_or_404(type_id)
    target.delete_instance()
    record("study_type_delete", target=target.code, via="api")
    return "", 204
