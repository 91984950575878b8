"""Helpers shared by the console and API blueprints: input at the edge, paging, audit."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import abort, current_app, request
from marshmallow import Schema, ValidationError

from pacscore import audit
from pacscore.web.security import client_ip, current_user

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidInput(Exception):
    """Input refused at the edge: answered 400 with the field errors."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(json.dumps(errors))
        self.errors = errors


def get_pacs():
    return current_app.extensions["pacs"]


def json_body() -> Any:
    """The request body parsed as JSON, or a 400 that says why not."""
    raw = request.get_data(cache=True)  # bounded by MAX_CONTENT_LENGTH (413)
    if not raw.strip():
        raise InvalidInput({"_body": ["a JSON body is required"]})
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput({"_body": [f"invalid JSON: {exc}"]}) from None


def load(schema: Schema, data: Any, partial: bool = False) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput({"_body": ["a JSON object is expected"]})
    try:
        return schema.load(data, partial=partial)
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None


def load_json(schema: Schema, partial: bool = False) -> dict[str, Any]:
    return load(schema, json_body(), partial=partial)


def load_args(schema: Schema) -> dict[str, Any]:
    """Query-string parameters through ``schema`` (repeated keys become lists)."""
    data: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        field = schema.fields.get(key)
        is_list = field is not None and field.__class__.__name__ == "List"
        data[key] = values if is_list else values[-1]
    return load(schema, data)


def check_uid(uid: str) -> str:
    """A DICOM UID from a URL: digits and dots only, at most 64 characters."""
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        abort(400, "invalid UID")
    return uid


def record(action: str, target: str = "", **details: Any) -> None:
    """Audit an action of the current user."""
    user = current_user()
    audit.record(
        action, actor=user.login if user else "", target=target, source_ip=client_ip(), **details
    )


def page_args(default_size: int = 50, max_size: int = 500) -> tuple[int, int]:
    try:
        page = max(1, int(request.args.get("page", 1)))
        size = min(max_size, max(1, int(request.args.get("page_size", default_size))))
    except ValueError:
        abort(400, "page and page_size must be integers")
    return page, size


def add_menu_link(app, label: str, endpoint: str, right: str) -> None:
    """Add a link to a plugin page in the console's header, shown to holders of ``right``.

    Call it from a ``register_blueprints`` implementation, with the endpoint of
    one of the plugin's views (``"router.index"``).
    """
    app.extensions.setdefault("pacscore_menu", []).append((label, endpoint, right))


def menu_links() -> list[tuple[str, str]]:
    """(label, endpoint) of the plugin links the current user may follow (a template global)."""
    from pacscore.web.security import has_right

    links = current_app.extensions.get("pacscore_menu", [])
    return [(label, endpoint) for label, endpoint, right in links if has_right(right)]
