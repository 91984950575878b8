"""Worklist pages and API: search entries, add one from a study type, edit, delete, reset,
clear.

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
from pacscore.services.schemas import UtcDateTime
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
from pacscore.worklist import IN_PROGRESS, STATUSES, StepInProgress, UnknownEntry, WorklistError

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


class StepChangeSchema(Schema):
    """A step to change: its ``id``, then only the fields to change (as POST takes them)."""

    id = fields.Integer(validate=validate.Range(min=1), metadata={"help": "the step (needed)"})
    study_type = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={"help": "the step's modality, description and protocol become the type's"},
    )
    node = fields.String(validate=TEXT, metadata={"help": "station (a node); empty: any"})
    start_date = fields.String(validate=_date)
    start_time = fields.String(validate=TIME)


class EntryChangeSchema(Schema):
    """PATCH of an entry: only the fields given change (no field is required).

    ``study_type``, ``node``, ``start_date`` and ``start_time`` at the top
    level are those of POST: the study type sets the procedure's code and
    description and, like the others, changes the entry's step when it has
    one; an entry of several steps changes them in ``steps``, by id.
    """

    patient_id = fields.String(validate=validate.Length(min=1, max=64))
    patient_name = fields.String(validate=LONG_TEXT)
    birth_date = fields.String(validate=_date)
    sex = fields.String(validate=validate.OneOf(["", "M", "F", "O"]))
    accession_number = fields.String(validate=TEXT)
    referring_physician = fields.String(validate=LONG_TEXT)
    reason = fields.String(validate=LONG_TEXT)
    study_type = fields.String(validate=validate.Length(min=1, max=64))
    node = fields.String(validate=TEXT)
    start_date = fields.String(validate=_date)
    start_time = fields.String(validate=TIME)
    steps = fields.List(fields.Nested(StepChangeSchema))


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
    updated = UtcDateTime()


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
    created = UtcDateTime()
    updated = UtcDateTime()
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
        "start_time": dicom_time(values["start_time"]),
        "description": study_type.description,
        "protocol_code": study_type.code,
    }
    try:
        return get_pacs().worklist.create(procedure, [step])
    except WorklistError as exc:
        raise ValidationError({"_schema": [str(exc)]}) from None


def dicom_time(value: str) -> str:
    """HH:MM (or HHMM) from a form or the API to a DICOM time HHMMSS; empty stays empty."""
    return value.replace(":", "") + "00" if value else ""


ENTRY_FIELDS = ("patient_id", "patient_name", "birth_date", "sex", "accession_number",
                "referring_physician", "reason")  # fmt: skip
STEP_CHANGES = ("study_type", "node", "start_date", "start_time")


def edit_entry(entry: dict, values: dict[str, Any], confirmed: bool) -> dict:
    """Apply validated ``EntryChangeSchema`` values to an entry; field errors raise
    ``ValidationError``, a step IN_PROGRESS without ``confirmed`` ``StepInProgress``."""
    procedure = {name: values[name] for name in ENTRY_FIELDS if name in values}
    if "birth_date" in procedure:
        procedure["birth_date"] = procedure["birth_date"].replace("-", "")
    if "study_type" in values:
        study_type = _study_type(values["study_type"])
        procedure.update(
            procedure_code=study_type.code, procedure_description=study_type.description
        )
    changes = _steps_of_change(entry, values)
    try:
        return get_pacs().worklist.edit(entry["id"], procedure, changes, confirmed)
    except (StepInProgress, UnknownEntry):
        raise
    except WorklistError as exc:
        raise ValidationError({"_schema": [str(exc)]}) from None


def _steps_of_change(entry: dict, values: dict[str, Any]) -> dict[int, dict[str, str]]:
    """Step id -> column changes, from the top-level step fields or from ``steps``.

    The top-level fields change the entry's step when it has one (``study_type``
    included, as in POST); otherwise ``study_type`` there is the procedure's only.
    """
    top = {name: values[name] for name in STEP_CHANGES if name in values}
    by_id = {step["id"]: step for step in entry["steps"]}
    if set(top) - {"study_type"}:
        if "steps" in values:
            raise ValidationError({"steps": ["give the step fields at the top level or here"]})
        if len(by_id) != 1:
            raise ValidationError(
                {"_schema": [f"this entry has {len(by_id)} steps: change them in steps, by id"]}
            )
    if top and len(by_id) == 1 and "steps" not in values:
        [(step_id, step)] = by_id.items()
        return {step_id: _step_columns(step, top)}
    changes: dict[int, dict[str, str]] = {}
    for index, item in enumerate(values.get("steps", [])):
        try:
            if item.get("id") not in by_id:
                message = "required" if "id" not in item else "not a step of this entry"
                raise ValidationError({"id": [message]})
            changes.setdefault(item["id"], {}).update(_step_columns(by_id[item["id"]], item))
        except ValidationError as exc:
            raise ValidationError({"steps": {index: exc.normalized_messages()}}) from None
    return changes


def _study_type(code: str) -> StudyType:
    study_type = StudyType.get_or_none(StudyType.code == code)
    if study_type is None:
        raise ValidationError({"study_type": ["no such study type"]})
    return study_type


def _step_columns(step: dict, item: dict[str, Any]) -> dict[str, str]:
    """The step columns a change sets, checked against the step's study type and nodes."""
    columns: dict[str, str] = {}
    if "study_type" in item:
        study_type: StudyType | None = _study_type(item["study_type"])
        columns.update(
            modality=study_type.modality,
            description=study_type.description,
            protocol_code=study_type.code,
        )
    else:
        study_type = StudyType.get_or_none(StudyType.code == step["protocol_code"])
    allowed = study_type_nodes(study_type) if study_type else []
    if "node" in item:
        columns["station_aet"] = _station(item["node"], allowed)
    elif "study_type" in item and allowed:
        columns["station_aet"] = _station_for_new_type(step["station_aet"], allowed)
    if "start_date" in item:
        columns["start_date"] = item["start_date"].replace("-", "")
    if "start_time" in item:
        columns["start_time"] = dicom_time(item["start_time"])
    return columns


def _station(name: str, allowed: list[str]) -> str:
    if not name:
        return ""  # any station
    node = Node.get_or_none(Node.name == name)
    if node is None:
        raise ValidationError({"node": ["no such node"]})
    if allowed and node.name not in allowed:
        raise ValidationError({"node": ["not a node allowed for this study type"]})
    return node.aet


def _station_for_new_type(station_aet: str, allowed: list[str]) -> str:
    """As POST: a type scheduled on one node goes there; another station must be allowed."""
    nodes = list(Node.select().where(Node.name.in_(allowed)).order_by(Node.name))
    if len(allowed) == 1 and nodes:
        return nodes[0].aet
    if station_aet and station_aet not in {n.aet for n in nodes}:
        raise ValidationError({"node": ["the station is not allowed for this study type"]})
    return station_aet


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


# -- editing an entry (console) ----------------------------------------------------------------


def _iso_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 else value


def _form_time(value: str) -> str:
    digits = value.replace(":", "")
    return f"{digits[:2]}:{digits[2:4]}" if len(digits) >= 4 else value


def _node_choice(station_aet: str, nodes: list[Node]) -> str:
    """The node option showing a station: its node, "" (any) or the bare AE title."""
    if not station_aet:
        return ""
    names = [n.name for n in nodes if n.aet == station_aet]
    return names[0] if names else f"aet:{station_aet}"


def _shown(entry: dict, nodes: list[Node]) -> dict[str, str]:
    """The edit form's values for an entry, by input name (what "unchanged" means)."""
    shown = {name: entry[name] for name in ENTRY_FIELDS}
    shown["birth_date"] = _iso_date(entry["birth_date"])
    for step in entry["steps"]:
        prefix = f"step-{step['id']}-"
        shown[prefix + "study_type"] = ""
        shown[prefix + "node"] = _node_choice(step["station_aet"], nodes)
        shown[prefix + "start_date"] = _iso_date(step["start_date"])
        shown[prefix + "start_time"] = _form_time(step["start_time"])
    return shown


def _changes_from_form(entry: dict, shown: dict[str, str], form) -> dict[str, Any]:
    """The PATCH body of what the form changed: the inputs that differ from what was
    shown (a single-step entry's step fields at the top level, as the API takes them)."""

    def changed(name: str) -> bool:
        return name in form and form[name].strip() != shown[name]

    body: dict[str, Any] = {name: form[name].strip() for name in ENTRY_FIELDS if changed(name)}
    steps = []
    for step in entry["steps"]:
        prefix = f"step-{step['id']}-"
        item = {
            name: form[prefix + name].strip() for name in STEP_CHANGES if changed(prefix + name)
        }
        if item:
            steps.append({"id": step["id"], **item})
    if len(entry["steps"]) == 1 and steps:
        body.update({k: v for k, v in steps[0].items() if k != "id"})
    elif steps:
        body["steps"] = steps
    return body


def _error_lines(errors: dict, entry: dict, body: dict) -> list[str]:
    """Field errors as lines; a step's are named by its step ID and modality."""
    lines = []
    for name, messages in errors.items():
        if name == "steps" and isinstance(messages, dict):
            items = body.get("steps", [])
            for index, step_errors in messages.items():
                step_id = items[int(index)].get("id") if int(index) < len(items) else None
                step = next((s for s in entry["steps"] if s["id"] == step_id), {})
                label = f"step {step.get('sps_id', index)} {step.get('modality', '')}".rstrip()
                lines += [f"{label}: {line}" for line in _error_lines(step_errors, entry, {})]
        else:
            text = " ".join(map(str, messages if isinstance(messages, list) else [messages]))
            lines.append(text if name == "_schema" else f"{name.replace('_', ' ')}: {text}")
    return lines


@bp.route("/<int:entry_id>", methods=["GET", "POST"])
@require_right(RIGHT)
def edit(entry_id: int):
    entry = entry_or_404(entry_id)
    nodes = list(Node.select().order_by(Node.name))
    shown = _shown(entry, nodes)
    errors: list[str] = []
    if request.method == "POST":
        body = _changes_from_form(entry, shown, request.form)
        try:
            after = edit_entry(entry, EntryChangeSchema().load(body), _confirmed())
        except StepInProgress:
            return _confirm_edit(entry)
        except UnknownEntry:
            abort(404, "no such worklist entry")
        except ValidationError as exc:
            errors = _error_lines(exc.normalized_messages(), entry, body)
            shown = {**shown, **{k: v.strip() for k, v in request.form.items() if k in shown}}
        else:
            if body:
                record("worklist_update", target=str(entry_id), fields=_changed_names(body))
            flash(f"Worklist entry of {after['patient_id']} saved." if body else "No change.",
                  "success")  # fmt: skip
            return redirect(url_for("worklist.index"))
    return render_template(
        "worklist_entry.html",
        entry=entry,
        values=shown,
        errors=errors,
        study_types=list(StudyType.select().order_by(StudyType.code)),
        nodes=nodes,
        in_progress=IN_PROGRESS,
    )


def _confirmed() -> bool:
    return request.form.get("confirm") == "yes"


def _confirm_edit(entry: dict):
    """Asked again, the posted values carried over, as a deletion is."""
    hidden = {k: v for k, v in request.form.items() if k not in ("csrf_token", "confirm")}
    return render_template(
        "confirm.html",
        title="Change a worklist entry",
        question=f"Save the changes to the entry of {entry['patient_id']} "
        f"({entry['accession_number']})? A modality is performing it now (IN_PROGRESS) "
        "and may not see them.",
        action=url_for("worklist.edit", entry_id=entry["id"]),
        hidden=hidden,
        button="Save anyway",
        cancel=url_for("worklist.edit", entry_id=entry["id"]),
    )


def _changed_names(body: dict[str, Any]) -> list[str]:
    names = [k for k in body if k != "steps"]
    for item in body.get("steps", []):
        names += [f"step {item.get('id')} {k}" for k in item if k != "id"]
    return sorted(names)


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


@api.patch("/<int:entry_id>")
@require_right(RIGHT)
@doc("Change an entry and its steps: only the given fields (?confirm=yes when a step is "
     "IN_PROGRESS)", body=EntryChangeSchema, response=EntryOutSchema, errors=[409])  # fmt: skip
def api_update(entry_id: int):
    entry = entry_or_404(entry_id)
    values = load(EntryChangeSchema(), json_body())
    try:
        after = edit_entry(entry, values, request.args.get("confirm") == "yes")
    except StepInProgress as exc:
        abort(409, f"{exc}: repeat with ?confirm=yes to change it anyway")
    except UnknownEntry:
        abort(404, "no such worklist entry")
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    record("worklist_update", target=str(entry_id), fields=_changed_names(values), via="api")
    return jsonify(EntryOutSchema().dump(after))


@api.delete("/<int:entry_id>")
@require_right(RIGHT)
@doc("Delete an entry (?confirm=yes when a step is IN_PROGRESS)", status=204, errors=[409])
def api_delete(entry_id: int):
    _confirmed_or_409(entry_or_404(entry_id)["steps"])
    _changed_or_404(get_pacs().worklist.delete, entry_id)
    record("worklist_delete", target=str(entry_id), via="api")
    return "", 204


@api.delete("/steps/<int:step_id>")
@require_right(RIGHT)
@doc("Delete a step (?confirm=yes when IN_PROGRESS); its entry goes with its last step",
     status=204, errors=[409])  # fmt: skip
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
@doc("Delete a study type", status=204)
def api_delete_study_type(type_id: int):
    target = study_type_or_404(type_id)
    target.delete_instance()
    record("study_type_delete", target=target.code, via="api")
    return "", 204
