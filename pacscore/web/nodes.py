"""Console pages of DICOM nodes: list, create, edit, delete, C-ECHO."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from pacscore.models import Node
from pacscore.services import Invalid
from pacscore.services import nodes as node_service
from pacscore.services.schemas import NodeSchema
from pacscore.web.common import actor, get_pacs
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.security import require_right

bp = Blueprint("nodes", __name__, url_prefix="/nodes")
SCHEMA = NodeSchema()


@bp.get("/")
@require_right("manage_nodes")
def index():
    return render_template("nodes.html", nodes=node_service.listed())


def _form(node: Node | None):
    specs = form_fields(SCHEMA)
    errors = {}
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            target = node_service.save(get_pacs(), node, data, actor())
        except Invalid as exc:
            errors = exc.errors
            shown = data
        else:
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
    return _form(node_service.get(node_id))


@bp.post("/<int:node_id>/delete")
@require_right("manage_nodes")
def delete(node_id: int):
    node = node_service.get(node_id)
    node_service.delete(get_pacs(), node, actor())
    flash(f"Node {node.name} deleted.", "success")
    return redirect(url_for("nodes.index"))


@bp.post("/<int:node_id>/echo")
@require_right("manage_nodes")
def echo_page(node_id: int):
    node = node_service.get(node_id)
    result = node_service.echo(get_pacs(), node)
    if result["success"]:
        flash(f"C-ECHO {node.name}: success in {result['milliseconds']} ms.", "success")
    else:
        flash(f"C-ECHO {node.name} failed: {result['error']}", "error")
    return redirect(url_for("nodes.index"))
