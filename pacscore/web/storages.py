"""Console pages of storage folders: list with free space, add, edit, delete an empty one."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from pacscore.models import Storage
from pacscore.services import Conflict, Invalid
from pacscore.services import storages as storage_service
from pacscore.services.schemas import StorageSchema
from pacscore.web.common import actor, get_pacs
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.security import require_right

bp = Blueprint("storages", __name__, url_prefix="/storages")
SCHEMA = StorageSchema()


@bp.get("/")
@require_right("manage_storages")
def index():
    return render_template(
        "storages.html", storages=storage_service.listed(), free_mb=storage_service.free_mb
    )


def _form(storage: Storage | None):
    specs = form_fields(SCHEMA)
    errors = {}
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            saved = storage_service.save(get_pacs(), storage, data, actor())
        except Invalid as exc:
            errors, shown = exc.errors, data
        else:
            flash(f"Storage {saved.name} saved.", "success")
            return redirect(url_for("storages.index"))
    else:
        shown = SCHEMA.dump(storage) if storage else schema_defaults(SCHEMA)
    return render_template(
        "form.html",
        title=f"Storage {storage.name}" if storage else "New storage",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=url_for("storages.index"),
    )


@bp.route("/new", methods=["GET", "POST"])
@require_right("manage_storages")
def create():
    return _form(None)


@bp.route("/<int:storage_id>", methods=["GET", "POST"])
@require_right("manage_storages")
def edit(storage_id: int):
    return _form(storage_service.get(storage_id))


@bp.post("/<int:storage_id>/delete")
@require_right("manage_storages")
def delete(storage_id: int):
    storage = storage_service.get(storage_id)
    try:
        storage_service.delete(get_pacs(), storage, actor())
    except Conflict:
        flash(f"Storage {storage.name} still holds instances: disable it instead.", "error")
    else:
        flash(f"Storage {storage.name} deleted.", "success")
    return redirect(url_for("storages.index"))
