"""marshmallow schemas of what the services accept (and give back): nodes, storages,
accounts, profiles, service filters.

The console's forms, the REST API (and its OpenAPI document) and the command
line all validate through these classes.  Inputs reject unknown fields
(marshmallow's default ``RAISE``); a field whose type apispec cannot see
(``fields.Function``) carries its JSON schema in ``metadata``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from pacscore.models import Node
from pacscore.rights import RIGHTS

AE_TITLE = validate.Regexp(r"^[ -\[\]-~]{1,16}$", error="1 to 16 printable characters, no '\\'")
NAME = validate.Length(min=1, max=64)
# an integer column on PostgreSQL: a larger value raised "integer out of range" (500)
INT32_MAX = 2**31 - 1
STRINGS = {"type": "array", "items": {"type": "string"}}


class UtcDateTime(fields.DateTime):
    """A date-time as RFC 3339 requires it, with its offset: "2026-12-06T09:26:52.936536+00:00".

    The database holds naive datetimes in UTC (``db.utcnow``); an ISO string
    (the worklist's dicts) is read as such a value.
    """

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            value = datetime.fromisoformat(value) if value else None
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return super()._serialize(value, attr, obj, **kwargs)


class OptionalEmail(fields.Email):
    """An e-mail address, or "" for none (the OpenAPI type says both)."""

    OPENAPI = {"anyOf": [{"format": "email"}, {"maxLength": 0}]}

    def _validate(self, value: Any) -> None:
        if value != "":
            super()._validate(value)


# -- nodes and storages ------------------------------------------------------------------


class NodeSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=NAME)
    aet = fields.String(required=True, validate=AE_TITLE)
    host = fields.String(required=True, validate=validate.Length(min=1, max=255))
    port = fields.Integer(required=True, validate=validate.Range(min=1, max=65535))
    enabled = fields.Boolean(load_default=True)
    description = fields.String(load_default="", validate=validate.Length(max=255))
    allow_store = fields.Boolean(load_default=True)
    allow_find = fields.Boolean(load_default=False)
    allow_move = fields.Boolean(load_default=False)
    allow_get = fields.Boolean(load_default=False)
    allow_worklist = fields.Boolean(load_default=False)


NODE_FIELDS = [name for name in NodeSchema().fields if name != "id"]
assert all(f"allow_{r}" in NODE_FIELDS for r in Node.RIGHTS)


class StorageSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=NAME)
    path = fields.String(required=True, validate=validate.Length(min=1, max=1024))
    enabled = fields.Boolean(load_default=True)
    min_free_mb = fields.Integer(load_default=2048, validate=validate.Range(min=0, max=INT32_MAX))
    position = fields.Integer(dump_only=True)
    free_mb = fields.Integer(dump_only=True, allow_none=True)

    @validates_schema
    def absolute_path(self, data, **kwargs):
        if "path" in data and not data["path"].startswith("/"):
            raise ValidationError("an absolute path is required", "path")


# -- users and profiles ---------------------------------------------------------------------

STATUSES = ("active", "locked", "disabled")


class UserSchema(Schema):
    id = fields.Integer(dump_only=True)
    login = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9._@-]{1,128}$"))
    first_name = fields.String(load_default="", validate=validate.Length(max=128))
    last_name = fields.String(load_default="", validate=validate.Length(max=128))
    email = OptionalEmail(
        load_default="", validate=validate.Length(max=255), metadata=OptionalEmail.OPENAPI
    )
    profile = fields.String(required=True, validate=NAME)
    status = fields.String(load_default="active", validate=validate.OneOf(STATUSES))
    services = fields.Function(
        lambda u: json.loads(u.services or "[]"),
        deserialize=lambda v: _string_list(v),
        load_default=list,
        metadata={
            "list": True,
            "help": "service filter names, comma-separated; empty: every study",
            **STRINGS,
        },
    )
    physician_id = fields.String(load_default="", validate=validate.Length(max=64))
    auth_source = fields.String(dump_only=True)
    last_login = UtcDateTime(dump_only=True, allow_none=True)
    password = fields.String(load_only=True, validate=validate.Length(max=1024))


def _string_list(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("a list of strings")
    return [v.strip() for v in value if v.strip()]


class ProfileSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=NAME)
    rights = fields.Function(
        lambda p: json.loads(p.rights),
        deserialize=lambda v: _rights(v),
        load_default=list,
        metadata={"list": True, "default": [], **STRINGS},
    )
    builtin = fields.Boolean(dump_only=True)


def _rights(value) -> list[str]:
    names = _string_list(value)
    unknown = [n for n in names if n not in RIGHTS and not re.match(r"^[a-z][a-z0-9_.]*$", n)]
    if unknown:
        raise ValidationError(f"invalid right name(s): {', '.join(unknown)}")
    return sorted(set(names))


# -- service filters ------------------------------------------------------------------------

FILTER_TEXT = validate.Length(max=324)
FILTER_NAME = validate.Regexp(r"^[^,]{1,128}$", error="1 to 128 characters, no comma")


class ServiceFilterSchema(Schema):
    """A filter as given (POST, and PATCH with only the fields to change)."""

    id = fields.Integer(dump_only=True)
    name = fields.String(
        required=True, validate=FILTER_NAME, metadata={"help": "what users' services name"}
    )
    institution = fields.String(
        load_default="", validate=FILTER_TEXT, metadata={"help": "InstitutionName (0008,0080)"}
    )
    requesting_service = fields.String(
        load_default="",
        validate=FILTER_TEXT,
        metadata={"help": "RequestingService (0032,1033)"},
    )
    modality = fields.String(
        load_default="",
        validate=validate.Regexp(r"^[A-Z0-9]{0,16}$", error="upper-case letters and digits"),
        metadata={"help": "one of the study's modalities (ModalitiesInStudy), e.g. CT"},
    )
    institution_or_service = fields.String(
        load_default="",
        validate=FILTER_TEXT,
        metadata={"help": "InstitutionName or RequestingService (the form of older filters)"},
    )


class ServiceFilterChangeSchema(ServiceFilterSchema):
    """PATCH: every field optional, only the given ones change."""

    name = fields.String(validate=FILTER_NAME)
