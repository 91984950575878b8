"""Console page and API route of the email plugin: send a test e-mail now and show
the server's answer (right ``configure``, like the plugin settings it checks)."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request
from marshmallow import Schema, ValidationError, fields

from pacscore.web.common import get_pacs, load_json, record
from pacscore.web.openapi import doc
from pacscore.web.security import require_right

RIGHT = "configure"


class TestMailSchema(Schema):
    address = fields.Email(required=True)


class TestMailResultSchema(Schema):
    sent = fields.Boolean()
    error = fields.String(metadata={"description": "the server's refusal; empty when sent"})


SCHEMA = TestMailSchema()


def try_test_mail(pacs, address: str) -> dict:
    """Send the test mail; the answer for the page and the API, never an exception."""
    from . import send_test_mail

    try:
        send_test_mail(pacs, address)
    except Exception as exc:  # noqa: BLE001 - the server's refusal is the answer the user wants
        return {"sent": False, "error": str(exc) or exc.__class__.__name__}
    return {"sent": True, "error": ""}


def make_blueprints() -> list[Blueprint]:
    page = Blueprint("email", __name__, url_prefix="/email", template_folder="console_templates")
    api = Blueprint("email_api", __name__, url_prefix="/api/v1/email")

    @page.route("/test", methods=["GET", "POST"])
    @require_right(RIGHT)
    def test_page():
        errors, result, address = {}, None, request.form.get("address", "")
        if request.method == "POST":
            try:
                address = SCHEMA.load({"address": address})["address"]
            except ValidationError as exc:
                errors = exc.normalized_messages()
            else:
                result = try_test_mail(get_pacs(), address)
                record("email_test", target=address, sent=result["sent"])
        return render_template("email/test.html", address=address, errors=errors, result=result)

    @api.post("/test")
    @require_right(RIGHT)
    @doc("Send a test e-mail now (the SMTP server's answer)", body=TestMailSchema,
         response=TestMailResultSchema)  # fmt: skip
    def test_api():
        address = load_json(SCHEMA)["address"]
        result = try_test_mail(get_pacs(), address)
        record("email_test", target=address, sent=result["sent"])
        return jsonify(result)

    return [page, api]
