"""Console pages of DICOM nodes: list, create, edit, delete, C-ECHO."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError
from peewee import IntegrityError

from pacscore.dicom.scu import EchoFailed, echo
from pacscore.models import Node
from pacscore.web.common import get_pacs, record
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.schemas import NodeSchema
from pacscore.web.security import require_right

bp = Blueprint("nodes", __name__, url_prefix="/nodes")
SCHEMA = NodeSchema()
ECHO_TIMEOUT = 10


def node_or_404(node_id: int) -> Node:
    node = Node.get_or_none(Node.id == node_id)
    if node is None:
        abort(404, "no such node")
    return node


def save_node(node: Node, values: dict) -> None:
    """Persist a validated node; a duplicate name is a field error."""
    for name, value in values.items():
        setattr(node, name, value)
    try:
        node.save()
    except IntegrityError:
        raise ValidationError({"name": ["a node with this name already exists"]}) from None
    get_pacs().nodes.invalidate()


def echo_node(node: Node) -> dict:
    try:
        elapsed = echo(node, get_pacs().config.aet, timeout=ECHO_TIMEOUT)
    except (EchoFailed, OSError, RuntimeError, ValueError) as exc:
        return {"success": False, "milliseconds": None, "error": str(exc)}
    return {"success": True, "milliseconds": round(elapsed, 1), "error": ""}


@bp.get("/")
@require_right("manage_nodes")
def index():
    return render_template("nodes.html", nodes=list(Node.select().order_by(Node.name)))


def _form(node: Node | None):
    specs = form_fields(SCHEMA)
    errors = {}
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            values = SCHEMA.load(data)
            target = node or Node()
            save_node(target, values)
        except ValidationError as exc:
            errors = exc.normalized_messages()
            shown = data
        else:
            record("node_save", target=target.name, created=node is None)
            flash(f"Node {target.name} saved.", "success")
            return redirect(url_for("nodes.index"))
    else:
        shown = SCHEMA.dump(node) if node else schema_defaults(SCHEMA)
    return render_template(
        "form.html",
        title=f"Node {node.name}" if node else "New node",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=url_for("nodes.index"),
    )


@bp.route("/new", methods=["GET", "POST"])
@require_right("manage_nodes")
def create():
    return _form(None)


@bp.route("/<int:node_id>", methods=["GET", "POST"])
@require_right("manage_nodes")
def edit(node_id: int):
    return _form(node_or_404(node_id))


@bp.post("/<int:node_id>/delete")
@require_right("manage_nodes")
def delete(node_id: int):
    node = node_or_404(node_id)
    node.delete_instance()
    get_pacs().nodes.invalidate()
    record("node_delete", target=node.name)
    flash(f"Node {node.name} deleted.", "success")
    return redirect(url_for("nodes.index"))


@bp.post("/<int:node_id>/echo")
@require_right("manage_nodes")
def echo_page(node_id: int):
    node = node_or_404(node_id)
    result = echo_node(node)
    if result["success"]:
        flash(f"C-ECHO {node.name}: success in {result['milliseconds']} ms.", "success")
    else:
        flash(f"C-ECHO {node.name} failed: {result['error']}", "error")
    return redirect(url_for("nodes.index"))
