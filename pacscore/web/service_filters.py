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

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from marshmallow import fields

from pacscore.models import ServiceFilter
from pacscore.services import Conflict, Invalid
from pacscore.services import service_filters as filter_service
from pacscore.services.schemas import ServiceFilterChangeSchema, ServiceFilterSchema
from pacscore.web.api import doc
from pacscore.web.common import actor, json_object
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.security import require_right

RIGHT = "manage_users"
bp = Blueprint("service_filters", __name__, url_prefix="/users/service-filters")
api = Blueprint("service_filters_api", __name__, url_prefix="/api/v1/service-filters")


class ServiceFilterOutSchema(ServiceFilterSchema):
    users = fields.List(fields.String(), dump_only=True, metadata={"help": "logins holding it"})


def described(service_filter: ServiceFilter, held: dict[str, list[str]]) -> dict[str, Any]:
    data = ServiceFilterSchema().dump(service_filter)
    data["users"] = held.get(service_filter.name.casefold(), [])
    return data


# -- console pages --------------------------------------------------------------------------


@bp.get("/")
@require_right(RIGHT)
def index():
    held = filter_service.holders()
    rows = [described(f, held) for f in filter_service.listed()]
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
            saved = filter_service.save(target, shown, actor())
        except Invalid as exc:
            errors = exc.errors
        else:
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
    return _form(filter_service.get(filter_id))


@bp.post("/<int:filter_id>/delete")
@require_right(RIGHT)
def delete(filter_id: int):
    target = filter_service.get(filter_id)
    try:
        filter_service.delete(target, actor())
    except Conflict as exc:
        flash(f"Service filter {target.name} not deleted: {exc}", "error")
    else:
        flash(f"Service filter {target.name} deleted.", "success")
    return redirect(url_for("service_filters.index"))


# -- API ---------------------------------------------------------------------------------------


@api.get("")
@require_right(RIGHT)
@doc("Service filters, with the users holding each", response=ServiceFilterOutSchema, many=True)
def api_list():
    held = filter_service.holders()
    return jsonify([described(f, held) for f in filter_service.listed()])


@api.post("")
@require_right(RIGHT)
@doc("Create a service filter", body=ServiceFilterSchema, response=ServiceFilterOutSchema,
     status=201)  # fmt: skip
def api_create():
    saved = filter_service.save(None, json_object(), actor("api"))
    return jsonify(described(saved, filter_service.holders())), 201


@api.get("/<int:filter_id>")
@require_right(RIGHT)
@doc("One service filter", response=ServiceFilterOutSchema)
def api_get(filter_id: int):
    return jsonify(described(filter_service.get(filter_id), filter_service.holders()))


@api.patch("/<int:filter_id>")
@require_right(RIGHT)
@doc("Change a service filter (only the given fields)", body=ServiceFilterChangeSchema,
     response=ServiceFilterOutSchema)  # fmt: skip
def api_update(filter_id: int):
    target = filter_service.get(filter_id)
    filter_service.save(target, json_object(), actor("api"), partial=True)
    return jsonify(described(target, filter_service.holders()))


@api.delete("/<int:filter_id>")
@require_right(RIGHT)
@doc("Delete a service filter that no user holds")
def api_delete(filter_id: int):
    filter_service.delete(filter_service.get(filter_id), actor("api"))
    return "", 204
