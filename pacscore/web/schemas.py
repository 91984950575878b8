"""marshmallow schemas of the API's own inputs and outputs (and of the console's search).

What the services accept (nodes, storages, accounts, profiles, service
filters) is in :mod:`pacscore.services.schemas`.  Inputs reject unknown fields
(marshmallow's default ``RAISE``); the OpenAPI document is generated from these
classes, so a field whose type apispec cannot see (``fields.Function``)
carries its JSON schema in ``metadata``.
"""

from __future__ import annotations

import json
import re

from marshmallow import Schema, ValidationError, fields, validate

from pacscore.jobs import STATES as JOB_STATES
from pacscore.services.schemas import NAME, STRINGS, UtcDateTime
from pacscore.web.common import MAX_PAGE
from pacscore.web.studyops import DATE_PRESETS, SORTS

DICOM_DATE = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")
# paging: an offset beyond 64 bits made the database raise
PAGE = validate.Range(min=1, max=MAX_PAGE)


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


# -- nodes, profiles -----------------------------------------------------------------------


class EchoResultSchema(Schema):
    success = fields.Boolean()
    milliseconds = fields.Float(allow_none=True)
    error = fields.String()


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
    """One part of the health check (``db.check_database``)."""

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
