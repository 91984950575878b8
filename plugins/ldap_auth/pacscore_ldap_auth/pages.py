"""Console page of ldap_auth: test the connection, test a login (right ``manage_plugins``).

The settings themselves are edited in the generic plugin settings form.  A
test login binds as the user but creates no account and counts no failure;
the password is neither logged, audited nor sent back to the browser.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request
from marshmallow import Schema, ValidationError, fields, validate

from pacscore.web.common import get_pacs, record
from pacscore.web.security import require_right
from pacscore_ldap_auth.login import test_connection, test_login

RIGHT = "manage_plugins"


class TestLoginSchema(Schema):
    login = fields.String(required=True, validate=validate.Length(min=1, max=128))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


TestLoginSchema.__test__ = False  # not a pytest class despite its name


def make_blueprint() -> Blueprint:
    bp = Blueprint("ldap_auth", __name__, url_prefix="/ldap", template_folder="templates")

    def page(**values):
        return render_template("ldap_checks.html", **{"connection": None, "login": None, **values})

    @bp.get("/")
    @require_right(RIGHT)
    def index():
        return page()

    @bp.post("/test-connection")
    @require_right(RIGHT)
    def connection_check():
        result = test_connection(get_pacs())
        record("ldap_test_connection", ok=result.ok)
        return page(connection=result)

    @bp.post("/test-login")
    @require_right(RIGHT)
    def login_check():
        given = {k: request.form.get(k, "") for k in ("login", "password")}
        try:
            values = TestLoginSchema().load(given)
        except ValidationError as exc:
            return page(errors=exc.normalized_messages(), tested_login=given["login"]), 400
        result = test_login(get_pacs(), values["login"], values["password"])
        record("ldap_test_login", target=values["login"], ok=result.ok)
        return page(login=result, tested_login=values["login"])

    return bp
