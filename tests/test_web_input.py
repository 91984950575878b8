"""Bad input at the HTTP edge: clear errors, never a stack trace, nothing changed."""

from __future__ import annotations

import pytest
from flask import Blueprint

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.models import Node
from pacscore.web.security import require_right
from tests.webclient import Console, add_user, store_instance, web_app


class Exploding:
    @hookimpl
    def register_blueprints(self, app):
        bp = Blueprint("boom", __name__)

        @bp.get("/boom")
        @require_right("view_studies")
        def boom():
            raise RuntimeError("secret internal detail")

        @bp.get("/api/v1/boom")
        @require_right("view_studies")
        def api_boom():
            raise RuntimeError("secret internal detail")

        app.register_blueprint(bp)


@pytest.fixture
def pacs(make_pacs):
    return make_pacs(Exploding())


@pytest.fixture
def console(pacs):
    add_user("root", "system administrator")
    console = Console(web_app(pacs))
    console.login("root")
    return console


NODE = {"name": "n1", "aet": "N1", "host": "127.0.0.1", "port": 104}


def post_node(console, data, **kwargs):
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return console.api("POST", "/api/v1/nodes", data=data, headers=headers, **kwargs)


def nodes() -> int:
    with connection():
        return Node.select().count()


def test_broken_json_and_non_objects(console):
    for body in (b'{"name": "n1",', b"\xff\xfe", b"", b"[1, 2]", b'"text"'):
        response = post_node(console, body)
        assert response.status_code == 400, body
        assert "_body" in response.json["errors"]
    assert nodes() == 0


def test_wrong_types_and_unknown_fields_give_field_errors(console):
    response = console.api("POST", "/api/v1/nodes", json={**NODE, "port": "eleven", "x": 1})
    assert response.status_code == 400
    assert response.json["errors"] == {"port": ["Not a valid integer."], "x": ["Unknown field."]}
    response = console.api("POST", "/api/v1/nodes", json={"name": "n2"})
    assert set(response.json["errors"]) == {"aet", "host", "port"}
    response = console.client.get("/api/v1/studies?page=zero&modalities=c%20t&colour=blue")
    assert response.status_code == 400
    assert set(response.json["errors"]) == {"page", "modalities", "colour"}
    assert nodes() == 0


def test_oversized_bodies_are_refused(console):
    huge = b'{"name": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    response = post_node(console, huge)
    assert response.status_code == 413 and response.json["error"] == "request entity too large"
    page = console.post("/nodes/new", {"description": "y" * (17 * 1024 * 1024)})
    assert page.status_code == 413
    assert nodes() == 0


def test_path_traversal_in_download_routes(console, pacs, tmp_path):
    uid = store_instance(pacs, tmp_path)
    for bad in ("..%2F..%2Fetc%2Fpasswd", "..", "1.2.3%2F..%2F..", "1.2.3.*", "%00", "a" * 65):
        for url in (f"/studies/{bad}/download", f"/api/v1/studies/{bad}/download",
                    f"/studies/{uid}/series/{bad}/download"):  # fmt: skip
            response = console.get(url)
            assert response.status_code in (400, 404), url
            assert b"root:" not in response.data
    assert console.get(f"/studies/{uid}/download").status_code == 200


def test_errors_never_show_a_stack_trace(console):
    page = console.get("/boom")
    assert page.status_code == 500
    assert "Traceback" not in page.text and "secret internal detail" not in page.text
    assert "internal error" in page.text
    api = console.get("/api/v1/boom")
    assert api.status_code == 500 and "secret" not in api.text and api.json["error"]
    assert console.get("/api/v1/nothing-here").json["error"] == "not found"
    assert console.client.put("/api/v1/health").status_code == 405
    assert "Error 404" in console.get("/studies/1.2.3.4").text


def test_pages_forbid_inline_scripts_and_framing(console):
    response = console.get("/nodes/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "onsubmit=" not in response.text and "javascript:" not in response.text
