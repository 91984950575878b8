"""Console page of the HL7 message log: filter, read message and ACK, replay a message.

Right ``manage_worklist`` for everything: the messages carry the orders' patient
data, and a replay changes the worklist.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from marshmallow import Schema, ValidationError, fields, validate

from pacscore.web.common import get_pacs, record
from pacscore.web.security import require_right
from pacscore_hl7.service import recent, replay

RIGHT = "manage_worklist"
OUTCOMES = ("", "AA", "AE", "AR")


class LogFilterSchema(Schema):
    message_type = fields.String(
        load_default="", validate=validate.Regexp(r"^[A-Z0-9^_]{0,32}$", error="like ORM^O01")
    )
    outcome = fields.String(load_default="", validate=validate.OneOf(OUTCOMES))
    control_id = fields.String(load_default="", validate=validate.Length(max=64))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


def make_blueprint() -> Blueprint:
    bp = Blueprint("hl7", __name__, url_prefix="/hl7", template_folder="templates")

    @bp.get("/")
    @require_right(RIGHT)
    def index():
        schema = LogFilterSchema()
        given = {k: request.args[k] for k in schema.fields if k in request.args}
        try:
            filters, errors = schema.load(given), {}
        except ValidationError as exc:
            filters, errors = {**schema.load({}), **given}, exc.normalized_messages()
        messages = [] if errors else recent(**{k: v for k, v in filters.items() if v})
        return render_template(
            "hl7_log.html", messages=messages, filters=filters, errors=errors, outcomes=OUTCOMES
        )

    @bp.route("/<int:message_id>/replay", methods=["GET", "POST"])
    @require_right(RIGHT)
    def replay_message(message_id: int):
        if request.method == "GET" or request.form.get("confirm") != "yes":
            return render_template(
                "confirm.html",
                title="Replay an HL7 message",
                question=f"Process message {message_id} again? It may change the worklist.",
                action=url_for("hl7.replay_message", message_id=message_id),
                button="Replay",
                cancel=url_for("hl7.index"),
            )
        try:
            outcome = replay(get_pacs(), message_id)
        except LookupError:
            abort(404, f"no HL7 message {message_id}")
        record("hl7_replay", target=str(message_id), outcome=outcome.code)
        category = "success" if outcome.code == "AA" else "error"
        flash(f"Replay of message {message_id}: {outcome.code} {outcome.detail}", category)
        return redirect(url_for("hl7.index"))

    return bp
