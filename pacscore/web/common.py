"""Helpers shared by the console and API blueprints: input at the edge, paging, audit."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import abort, current_app, request
from marshmallow import Schema, ValidationError

from pacscore import audit
from pacscore.services import Actor
from pacscore.web.security import client_ip, current_user

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_PAGE = 1_000_000


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
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput({"_body": [f"invalid JSON: {exc}"]}) from None
    except RecursionError:
        raise InvalidInput({"_body": ["invalid JSON: nested too deeply"]}) from None
    if has_nul(data):
        raise InvalidInput({"_body": [NUL_MESSAGE]})
    return data


def json_object() -> dict[str, Any]:
    """The request body: a JSON object, or a 400 that says why not."""
    data = json_body()
    if not isinstance(data, dict):
        raise InvalidInput({"_body": ["a JSON object is expected"]})
    return data


# PostgreSQL refuses NUL in text: such input answered 500 instead of 400
NUL_MESSAGE = "NUL characters (\\u0000) are not allowed"


def has_nul(data: Any) -> bool:
    """True if a string of ``data`` (JSON values, keys included) holds a NUL character."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            pending += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            pending += value
    return False


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
        if has_nul(data[key]):
            raise InvalidInput({key: [NUL_MESSAGE]})
    return load(schema, data)


def check_uid(uid: str) -> str:
    """A DICOM UID from a URL: digits and dots only, at most 64 characters."""
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        abort(400, "invalid UID")
    return uid


def actor(via: str | None = None) -> Actor:
    """The current user as the service layer audits them (``via="api"`` from the API)."""
    return Actor(user=current_user(), source_ip=client_ip(), via=via)


def record(action: str, target: str = "", **details: Any) -> None:
    """Audit an action of the current user."""
    user = current_user()
    audit.record(
        action, actor=user.login if user else "", target=target, source_ip=client_ip(), **details
    )


def page_args(default_size: int = 50, max_size: int = 500) -> tuple[int, int]:
    try:
        # at most the API's last page: an offset beyond 64 bits made the database raise
        page = min(max(1, int(request.args.get("page", 1))), MAX_PAGE)
        size = min(max_size, max(1, int(request.args.get("page_size", default_size))))
    except ValueError:
        abort(400, "page and page_size must be integers")
    return page, size
