"""The OpenAPI 3 document of the REST API, built from the routes and their schemas.

apispec's marshmallow plugin turns each schema class into a component; the
paths come from the URL map (every ``/api/v1`` rule) and the ``@doc``
description each API view carries.
"""

from __future__ import annotations

import re
from functools import cache

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import current_app

from pacscore import __version__
from pacscore.web.schemas import ErrorSchema
from pacscore.web.security import PUBLIC, declared_right

ERRORS = {
    "400": "invalid input (field errors in `errors`)",
    "401": "authentication required",
    "403": "not allowed (right, IP allow-list or expired password)",
    "404": "not found (or not visible to this user)",
}


def _path(rule: str) -> tuple[str, list[dict]]:
    params = []
    for converter, name in re.findall(r"<(?:(\w+):)?(\w+)>", rule):
        kind = "integer" if converter == "int" else "string"
        params.append({"in": "path", "name": name, "required": True, "schema": {"type": kind}})
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), params


def _operation(view, params: list[dict]) -> dict:
    described = view.api_doc
    right = declared_right(view)
    operation: dict = {"summary": described["summary"], "parameters": list(params)}
    if right != PUBLIC:
        operation["security"] = [{"token": []}, {"basic": []}]
        operation["description"] = f"Requires the right `{right}`."
    if described["query"] is not None:
        operation["parameters"].append({"in": "query", "schema": described["query"]})
    if described["body"] is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": described["body"]}},
        }
    response: dict = {"description": "success"}
    if described["response"] is not None:
        schema = described["response"]
        body = {"type": "array", "items": schema} if described["many"] else schema
        response["content"] = {described["content"]: {"schema": body}}
    elif described["content"] != "application/json":
        response["content"] = {described["content"]: {}}
    responses = {str(described["status"]): response}
    for code, text in ERRORS.items():
        responses[code] = {
            "description": text,
            "content": {"application/json": {"schema": ErrorSchema}},
        }
    operation["responses"] = responses
    return operation


def build(app) -> dict:
    spec = APISpec(
        title="pacscore API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "The operations of the pacscore console as JSON."},
    )
    spec.components.security_scheme("token", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})
    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        if not rule.rule.startswith("/api/") or not hasattr(view, "api_doc"):
            continue
        path, params = _path(rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(view, params)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@cache
def _cached(app_id: int, app) -> dict:
    return build(app)


def openapi_document() -> dict:
    app = current_app._get_current_object()
    return _cached(id(app), app)
