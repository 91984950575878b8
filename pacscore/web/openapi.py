"""The OpenAPI 3 document of the REST API, built from the routes and their schemas.

Every view under ``/api/v1`` -- the core's and every plugin's blueprint --
carries its description with :func:`doc`; apispec's marshmallow plugin turns
each schema class into a component, and the paths come from the application's
URL map, so a plugin's routes appear as soon as its blueprint is registered.
A route without ``@doc`` is missing from the document:
:func:`undocumented_routes` lists them (a test requires none).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, current_app
from marshmallow import Schema

from pacscore import __version__
from pacscore.services.schemas import OptionalEmail
from pacscore.web.schemas import ErrorSchema
from pacscore.web.security import PUBLIC, declared_right

API_PREFIX = "/api/v1/"
ERRORS = {
    400: "invalid input (field errors in `errors`)",
    401: "authentication required",
    403: "not allowed (right, IP allow-list or expired password)",
    404: "not found (or not visible to this user)",
    409: "refused in the current state (`message` says why)",
    413: "the request body is too large",
}
ALWAYS = (400, 401, 403, 404)
DOC_ATTRIBUTE = "api_doc"
PARTIAL_SUFFIX = "Patch"

SchemaLike = type[Schema] | Schema | dict


def doc(
    summary: str,
    *,
    body: SchemaLike | None = None,
    body_content: str = "application/json",
    partial: bool | None = None,
    query: type[Schema] | None = None,
    response: SchemaLike | None = None,
    many: bool = False,
    status: int = 200,
    content: str = "application/json",
    errors: Iterable[int] = (),
    other_responses: dict[int, tuple[str, SchemaLike]] | None = None,
) -> Callable:
    """Describe an API view for the OpenAPI document (it changes nothing at run time).

    ``body`` and ``response`` are marshmallow schema classes (or a JSON schema
    dict).  ``partial``: the body's properties are all optional, none has a
    default (the view loads it with ``partial=True`` and changes only the given
    fields); by default true for PATCH, false otherwise.
    ``status`` is the success code (204: no body); ``errors`` adds codes to
    the 400, 401, 403 and 404 every operation may answer (409, 413);
    ``other_responses`` describes answers of another shape, ``{status:
    (description, schema)}`` (the health check's 503).
    """
    extra = tuple(errors)
    unknown = [code for code in extra if code not in ERRORS]
    if unknown:
        raise ValueError(f"undescribed error status {unknown}")

    def mark(view: Callable) -> Callable:
        setattr(view, DOC_ATTRIBUTE, {
            "summary": summary, "body": body, "body_content": body_content, "partial": partial,
            "query": query, "response": response, "many": many, "status": status,
            "content": content, "errors": extra, "other": dict(other_responses or {}),
        })  # fmt: skip
        return view

    return mark


def _schema_name(schema: type[Schema] | Schema) -> str:
    """Component name: the class name without "Schema"; "...Patch" for a partial one."""
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__.removesuffix("Schema") or cls.__name__
    return name + PARTIAL_SUFFIX if getattr(schema, "partial", False) is True else name


def _path(rule: str) -> tuple[str, list[dict]]:
    params = []
    for converter, name in re.findall(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>", rule):
        kind = {"type": "integer", "minimum": 0} if converter == "int" else {"type": "string"}
        params.append({"in": "path", "name": name, "required": True, "schema": kind})
    return re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule), params


def _operation(view: Callable, method: str, params: list[dict]) -> dict:
    described = getattr(view, DOC_ATTRIBUTE)
    right = declared_right(view)
    operation: dict = {"summary": described["summary"], "parameters": list(params)}
    if right != PUBLIC:
        operation["security"] = [{"token": []}, {"basic": []}]
        operation["description"] = f"Requires the right `{right}`."
    if described["query"] is not None:
        operation["parameters"].append({"in": "query", "schema": described["query"]})
    body = described["body"]
    if body is not None:
        partial = described["partial"]
        if (method == "PATCH" if partial is None else partial) and isinstance(body, type):
            body = body(partial=True)
        operation["requestBody"] = {
            "required": True,
            "content": {described["body_content"]: {"schema": body}},
        }
    operation["responses"] = _responses(described)
    return operation


def _responses(described: dict) -> dict:
    response: dict = {"description": "success" if described["status"] != 204 else "done"}
    if described["response"] is not None:
        schema = described["response"]
        body = {"type": "array", "items": schema} if described["many"] else schema
        response["content"] = {described["content"]: {"schema": body}}
    elif described["content"] != "application/json":
        response["content"] = {described["content"]: {}}
    responses = {str(described["status"]): response}
    for code in sorted({*ALWAYS, *described["errors"]}):
        responses[str(code)] = {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": ErrorSchema}},
        }
    for code, (description, schema) in described["other"].items():
        responses[str(code)] = {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    return responses


def api_rules(app: Flask) -> list:
    """The URL rules of the API, core and plugins, in path order."""
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith(API_PREFIX)]
    return sorted(rules, key=lambda r: r.rule)


def undocumented_routes(app: Flask) -> list[str]:
    """``METHOD /path`` of every API route without ``@doc`` (absent from the document)."""
    return [
        f"{','.join(sorted(rule.methods - {'HEAD', 'OPTIONS'}))} {rule.rule}"
        for rule in api_rules(app)
        if not hasattr(app.view_functions.get(rule.endpoint), DOC_ATTRIBUTE)
    ]


def build(app: Flask) -> dict[str, Any]:
    marshmallow_plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="pacscore API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[marshmallow_plugin],
        info={"description": "The operations of the pacscore console as JSON."},
    )
    # its OpenAPI type is in its metadata (an address or ""), not format "email"
    marshmallow_plugin.map_to_openapi_type(OptionalEmail, "string", None)
    spec.components.security_scheme("token", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})
    paths: dict[str, dict] = {}
    for rule in api_rules(app):
        view = app.view_functions.get(rule.endpoint)
        if not hasattr(view, DOC_ATTRIBUTE):
            continue
        path, params = _path(rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(view, method, params)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _drop_partial_defaults(document["components"]["schemas"])
    return document


def _drop_partial_defaults(schemas: dict[str, dict]) -> None:
    """A partial body's missing field keeps its value: it has no default."""
    for name, schema in schemas.items():
        if name.endswith(PARTIAL_SUFFIX):
            for prop in schema.get("properties", {}).values():
                prop.pop("default", None)


def openapi_document() -> dict[str, Any]:
    """The document of the current application (built once: its routes do not change)."""
    app = current_app._get_current_object()
    document = app.extensions.get("pacscore_openapi")
    if document is None:
        document = app.extensions["pacscore_openapi"] = build(app)
    return document
