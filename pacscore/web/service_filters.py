"""Service filters: console pages (under Users) and ``/api/v1/service-filters``.

A filter is named; its criteria (InstitutionName, RequestingService,
Modality, and "institution or service", the form of the filters before
named ones) must all match.  A user lists filter names in ``services``; the
studies they see are those one of their filters matches (see
:mod:`pacscore.web.studyops`).  A filter that users hold cannot be deleted
or renamed: their names would stop designating it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from marshmallow import Schema, ValidationError, fields, validate
from peewee import IntegrityError

from pacscore.models import ServiceFilter, User, db
from pacscore.users import user_services
from pacscore.web.api import doc
from pacscore.web.common import InvalidInput, json_body, load, load_json, record
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.security import require_right

RIGHT = "manage_users"
bp = Blueprint("service_filters", __name__, url_prefix="/users/service-filters")
api = Blueprint("service_filters_api", __name__, url_prefix="/api/v1/service-filters")

CRITERIA = ("institution", "requesting_service", "modality", "institution_or_service")
TEXT = validate.Length(max=324)
NAME = validate.Regexp(r"^[^,]{1,128}$", error="1 to 128 characters, no comma")


class ServiceFilterSchema(Schema):
    """A filter as given (POST, and PATCH with only the fields to change)."""

    id = fields.Integer(dump_only=True)
    name = fields.String(
        required=True, validate=NAME, metadata={"help": "what users' services name"}
    )
    institution = fields.String(
        load_default="", validate=TEXT, metadata={"help": "InstitutionName (0008,0080)"}
    )
    requesting_service = fields.String(
        load_default="", validate=TEXT, metadata={"help": "RequestingService (0032,1033)"}
    )
    modality = fields.String(
        load_default="",
        validate=validate.Regexp(r"^[A-Z0-9]{0,16}$", error="upper-case letters and digits"),
        metadata={"help": "one of the study's modalities (ModalitiesInStudy), e.g. CT"},
    )
    institution_or_service = fields.String(
        load_default="",
        validate=TEXT,
        metadata={"help": "InstitutionName or RequestingService (the form of older filters)"},
    )


class ServiceFilterChangeSchema(ServiceFilterSchema):
    """PATCH: every field optional, only the given ones change."""

    name = fields.String(validate=NAME)


class ServiceFilterOutSchema(ServiceFilterSchema):
    users = fields.List(fields.String(), dump_only=True, metadata={"help": "logins holding it"})


# -- operations shared by pages and API -----------------------------------------------


def holders() -> dict[str, list[str]]:
    """Filter name (case-folded) -> logins of the users holding it."""
    result: dict[str, list[str]] = {}
    for user in User.select(User.login, User.services).order_by(User.login):
        for name in user_services(user):
            result.setdefault(name.strip().casefold(), []).append(user.login)
    return result


def described(service_filter: ServiceFilter, held: dict[str, list[str]]) -> dict[str, Any]:
    data = ServiceFilterSchema().dump(service_filter)
    data["users"] = held.get(service_filter.name.casefold(), [])
    return data


def save_filter(target: ServiceFilter, values: dict[str, Any]) -> ServiceFilter:
    """Create or change a filter from validated values; field errors raise."""
    values = {k: v.strip() if isinstance(v, str) else v for k, v in values.items()}
    merged = {name: values.get(name, getattr(target, name)) for name in CRITERIA}
    if not any(merged.values()):
        raise ValidationError({"_schema": ["give at least one criterion"]})
    name = values.get("name", target.name)
    clash = ServiceFilter.select().where(ServiceFilter.id != (target.id or 0))
    if any(other.name.casefold() == name.casefold() for other in clash):
        raise ValidationError({"name": ["a service filter with this name exists"]})
    if target.id and name.casefold() != target.name.casefold():
        users = holders().get(target.name.casefold())
        if users:
            raise ValidationError(
                {"name": [f"held by {', '.join(users)}: a filter in use cannot be renamed"]}
            )
    for key, value in values.items():
        setattr(target, key, value)
    try:
        with db.atomic():
            target.save()
    except IntegrityError:
        raise ValidationError({"name": ["a service filter with this name exists"]}) from None
    return target


def delete_filter(target: ServiceFilter) -> None:
    users = holders().get(target.name.casefold())
    if users:
        raise ValidationError(
            {"_schema": [f"held by {', '.join(users)}: remove it from their services first"]}
        )
    target.delete_instance()


def filter_or_404(filter_id: int) -> ServiceFilter:
    found = ServiceFilter.get_or_none(ServiceFilter.id == filter_id)
    if found is None:
        abort(404, "no such service filter")
    return found


def _messages(exc: ValidationError) -> str:
    return " ".join(str(m) for msgs in exc.normalized_messages().values() for m in msgs)


# -- console pages --------------------------------------------------------------------------


@bp.get("/")
@require_right(RIGHT)
def index():
    held = holders()
    rows = [described(f, held) for f in ServiceFilter.select().order_by(ServiceFilter.name)]
    defined = {row["name"].casefold() for row in rows}
    undefined = sorted({n for n in held if n not in defined})
    return render_template(
        "service_filters.html",
        filters=rows,
        undefined={name: held[name] for name in undefined},
    )


def _form(target: ServiceFilter | None):
    schema = ServiceFilterSchema()
    specs = form_fields(schema)
    errors: dict = {}
    if request.method == "POST":
        shown = parse_form(specs, request.form)
        try:
            saved = save_filter(target or ServiceFilter(), schema.load(shown))
        except ValidationError as exc:
            errors = exc.normalized_messages()
        else:
            record("service_filter_save", target=saved.name, created=target is None)
            flash(f"Service filter {saved.name} saved.", "success")
            return redirect(url_for("service_filters.index"))
    else:
        shown = schema.dump(target) if target else schema_defaults(schema)
    return render_template(
        "form.html",
        title=f"Service filter {target.name}" if target else "New service filter",
        intro="A study matches when every criterion given matches (case-insensitive); "
        "a user holding several filters sees what any of them matches.",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=url_for("service_filters.index"),
    )


@bp.route("/new", methods=["GET", "POST"])
@require_right(RIGHT)
def create():
    return _form(None)


@bp.route("/<int:filter_id>", methods=["GET", "POST"])
@require_right(RIGHT)
def edit(filter_id: int):
    return _form(filter_or_404(filter_id))


@bp.post("/<int:filter_id>/delete")
@require_right(RIGHT)
def delete(filter_id: int):
    target = filter_or_404(filter_id)
    try:
        delete_filter(target)
    except ValidationError as exc:
        flash(f"Service filter {target.name} not deleted: {_messages(exc)}", "error")
    else:
        record("service_filter_delete", target=target.name)
        flash(f"Service filter {target.name} deleted.", "success")
    return redirect(url_for("service_filters.index"))


# -- API ---------------------------------------------------------------------------------------


@api.get("")
@require_right(RIGHT)
@doc("Service filters, with the users holding each", response=ServiceFilterOutSchema, many=True)
def api_list():
    held = holders()
    return jsonify(
        [described(f, held) for f in ServiceFilter.select().order_by(ServiceFilter.name)]
    )


@api.post("")
@require_right(RIGHT)
@doc("Create a service filter", body=ServiceFilterSchema, response=ServiceFilterOutSchema,
     status=201)  # fmt: skip
def api_create():
    try:
        saved = save_filter(ServiceFilter(), load_json(ServiceFilterSchema()))
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    record("service_filter_save", target=saved.name, created=True, via="api")
    return jsonify(described(saved, holders())), 201


@api.get("/<int:filter_id>")
@require_right(RIGHT)
@doc("One service filter", response=ServiceFilterOutSchema)
def api_get(filter_id: int):
    return jsonify(described(filter_or_404(filter_id), holders()))


@api.patch("/<int:filter_id>")
@require_right(RIGHT)
@doc("Change a service filter (only the given fields)", body=ServiceFilterChangeSchema,
     response=ServiceFilterOutSchema)  # fmt: skip
def api_update(filter_id: int):
    target = filter_or_404(filter_id)
    given = json_body()
    values = load(ServiceFilterChangeSchema(), given, partial=True)
    try:
        save_filter(target, {k: v for k, v in values.items() if k in given})
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    record("service_filter_save", target=target.name, created=False, via="api")
    return jsonify(described(target, holders()))


@api.delete("/<int:filter_id>")
@require_right(RIGHT)
@doc("Delete a service filter that no user holds")
def api_delete(filter_id: int):
    target = filter_or_404(filter_id)
    try:
        delete_filter(target)
    except ValidationError as exc:
        abort(409, _messages(exc))
    record("service_filter_delete", target=target.name, via="api")
    return "", 204
