"""Console pages of storage folders: list with free space, add, edit, delete an empty one."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError
from peewee import IntegrityError

from pacscore.models import Instance, Storage
from pacscore.storage import MB, free_bytes
from pacscore.web.common import get_pacs, record
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.schemas import StorageSchema
from pacscore.web.security import require_right

bp = Blueprint("storages", __name__, url_prefix="/storages")
SCHEMA = StorageSchema()


def free_mb(storage: Storage) -> int | None:
    try:
        return free_bytes(Path(storage.path)) // MB
    except OSError:
        return None


def storage_or_404(storage_id: int) -> Storage:
    storage = Storage.get_or_none(Storage.id == storage_id)
    if storage is None:
        abort(404, "no such storage")
    return storage


def save_storage(storage: Storage | None, values: dict) -> Storage:
    """Create (the folder too) or update a storage; its path never changes once created:
    the stored files are found through it."""
    if storage is None:
        path = Path(values["path"])
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValidationError({"path": [f"cannot create the folder: {exc.strerror}"]}) from None
        last = Storage.select().order_by(Storage.position.desc()).first()
        storage = Storage(position=(last.position + 1) if last else 0)
    elif values.get("path", storage.path) != storage.path:
        raise ValidationError({"path": ["the path of a storage cannot change"]})
    for name, value in values.items():
        setattr(storage, name, value)
    try:
        storage.save()
    except IntegrityError:
        raise ValidationError({"name": ["a storage with this name already exists"]}) from None
    get_pacs().archive.folders.invalidate()
    return storage


def delete_storage(storage: Storage) -> None:
    if Instance.select().where(Instance.storage == storage).exists():
        raise ValidationError({"_schema": ["the storage still holds instances"]})
    storage.delete_instance()
    get_pacs().archive.folders.invalidate()


@bp.get("/")
@require_right("manage_storages")
def index():
    storages = list(Storage.select().order_by(Storage.position, Storage.id))
    return render_template("storages.html", storages=storages, free_mb=free_mb)


def _form(storage: Storage | None):
    specs = form_fields(SCHEMA)
    errors = {}
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            saved = save_storage(storage, SCHEMA.load(data))
        except ValidationError as exc:
            errors, shown = exc.normalized_messages(), data
        else:
            record("storage_save", target=saved.name, created=storage is None)
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
    return _form(storage_or_404(storage_id))


@bp.post("/<int:storage_id>/delete")
@require_right("manage_storages")
def delete(storage_id: int):
    storage = storage_or_404(storage_id)
    try:
        delete_storage(storage)
    except ValidationError:
        flash(f"Storage {storage.name} still holds instances: disable it instead.", "error")
    else:
        record("storage_delete", target=storage.name)
        flash(f"Storage {storage.name} deleted.", "success")
    return redirect(url_for("storages.index"))
