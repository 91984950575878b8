"""marshmallow schemas of every API input and output (and of the console's search).

Inputs reject unknown fields (marshmallow's default ``RAISE``); the OpenAPI
document is generated from these classes, so a field whose type apispec cannot
see (``fields.Function``) carries its JSON schema in ``metadata``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from pacscore.jobs import STATES as JOB_STATES
from pacscore.models import Node
from pacscore.rights import RIGHTS
from pacscore.web.common import MAX_PAGE
from pacscore.web.studyops import DATE_PRESETS, SORTS

DICOM_DATE = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")
AE_TITLE = validate.Regexp(r"^[ -\[\]-~]{1,16}$", error="1 to 16 printable characters, no '\\'")
NAME = validate.Length(min=1, max=64)
# paging: an offset beyond 64 bits made the database raise
PAGE = validate.Range(min=1, max=MAX_PAGE)
# an integer column on PostgreSQL: a larger value raised "integer out of range" (500)
INT32_MAX = 2**31 - 1
STRINGS = {"type": "array", "items": {"type": "string"}}


class UtcDateTime(fields.DateTime):
    """A date-time as RFC 3339 requires it, with its offset: "2026-12-06T09:26:52.936536+00:00".

    The database holds naive datetimes in UTC (``models.utcnow``); an ISO string
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


def _date(value: str) -> None:
    if value and not DICOM_DATE.match(value):
        raise ValidationError("a date YYYY-MM-DD or YYYYMMDD")


# -- studies ---------------------------------------------------------------------------


class StudySearchSchema(Schema):
    patient_name = fields.String(load_default="", validate=validate.Length(max=324))
    patient_id = fields.String(load_default="", validate=validate.Length(max=64))
    accession = fields.String(load_default="", validate=validate.Length(max=64))
    modalities = fields.List(
        fields.String(validate=validate.Regexp(r"^[A-Z0-9]{1,16}$")), load_default=list
    )
    date_preset = fields.String(load_default="any", validate=validate.OneOf(DATE_PRESETS))
    date = fields.String(load_default="", validate=_date)
    date_from = fields.String(load_default="", validate=_date)
    date_to = fields.String(load_default="", validate=_date)
    birth_date = fields.String(load_default="", validate=_date)
    sort = fields.String(load_default="date", validate=validate.OneOf(list(SORTS)))
    page = fields.Integer(load_default=1, validate=PAGE)
    page_size = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class SeriesSchema(Schema):
    series_uid = fields.String()
    modality = fields.String()
    series_number = fields.String()
    description = fields.String()
    body_part = fields.String()
    num_instances = fields.Integer()
    size = fields.Integer()


class StudySchema(Schema):
    study_uid = fields.String()
    patient_id = fields.Function(lambda s: s.patient.patient_id, metadata={"type": "string"})
    patient_name = fields.Function(lambda s: s.patient.patient_name, metadata={"type": "string"})
    birth_date = fields.Function(lambda s: s.patient.birth_date, metadata={"type": "string"})
    study_date = fields.String()
    study_time = fields.String()
    accession_number = fields.String()
    description = fields.String()
    institution = fields.String()
    requesting_service = fields.String()
    referring_physician = fields.String()
    modalities = fields.Function(
        lambda s: [m for m in s.modalities.split("\\") if m], metadata=STRINGS
    )
    num_series = fields.Integer()
    num_instances = fields.Integer()
    size = fields.Integer()
    last_received = UtcDateTime()


class StudyDetailSchema(StudySchema):
    series = fields.List(fields.Nested(SeriesSchema))


class StudyPageSchema(Schema):
    total = fields.Integer()
    page = fields.Integer()
    page_size = fields.Integer()
    studies = fields.List(fields.Nested(StudySchema))


class InstanceSchema(Schema):
    sop_uid = fields.String()
    sop_class_uid = fields.String()
    instance_number = fields.String()
    transfer_syntax = fields.String()
    size = fields.Integer()
    received_at = UtcDateTime()


class SendSchema(Schema):
    node = fields.String(required=True, validate=NAME)


class JobRefSchema(Schema):
    job_id = fields.Integer()
    state = fields.String()


class DeletedSchema(Schema):
    deleted_instances = fields.Integer()


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


class EchoResultSchema(Schema):
    success = fields.Boolean()
    milliseconds = fields.Float(allow_none=True)
    error = fields.String()


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


class ProfileDeleteSchema(Schema):
    replacement = fields.String(load_default=None, allow_none=True, validate=NAME)


# -- plugins, settings, audit, jobs ---------------------------------------------------------


class PluginSchema(Schema):
    name = fields.String()
    version = fields.String()
    enabled = fields.Boolean()
    builtin = fields.Boolean()
    state = fields.String()
    error = fields.String(allow_none=True)
    has_settings = fields.Boolean()


class PluginChangeSchema(Schema):
    enabled = fields.Boolean(required=True)


class AuditQuerySchema(Schema):
    actor = fields.String(load_default="", validate=validate.Length(max=128))
    action = fields.String(load_default="", validate=validate.Length(max=64))
    date_from = fields.Date(load_default=None)
    date_to = fields.Date(load_default=None)
    page = fields.Integer(load_default=1, validate=PAGE)
    page_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class AuditEventSchema(Schema):
    id = fields.Integer()
    at = UtcDateTime()
    actor = fields.String()
    action = fields.String()
    target = fields.String()
    source_ip = fields.String()
    details = fields.Function(lambda e: json.loads(e.details or "{}"), metadata={"type": "object"})


class JobQuerySchema(Schema):
    state = fields.String(load_default="", validate=validate.OneOf(["", *JOB_STATES]))
    page = fields.Integer(load_default=1, validate=PAGE)
    page_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class JobSchema(Schema):
    id = fields.Integer()
    kind = fields.String()
    state = fields.String()
    attempts = fields.Integer()
    next_attempt = UtcDateTime()
    last_error = fields.String()
    created = UtcDateTime()
    updated = UtcDateTime()
    payload = fields.Function(lambda j: json.loads(j.payload or "{}"), metadata={"type": "object"})


class ErrorSchema(Schema):
    error = fields.String()
    message = fields.String()
    errors = fields.Dict()


class HealthCheckSchema(Schema):
    """One part of the health check (``models.check_database``)."""

    status = fields.String(metadata={"enum": ["ok", "failing"]})
    latency_ms = fields.Float()
    failed = fields.String(metadata={"description": "which step failed: connection or query"})
    error = fields.String()
    connections = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "in_use, idle, max"}
    )


class HealthSchema(Schema):
    status = fields.String(metadata={"enum": ["ok", "failing"]})
    aet = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.Nested(HealthCheckSchema))
