"""The core's database tables.

Models are bound to ``db`` (:mod:`pacscore.db`), a proxy initialised from a URL
at start-up (``sqlite:///...`` by default, ``postgresql://...`` for larger
sites).  A plugin's tables live in the plugin (hook ``database_models``); both
are created and upgraded by :mod:`pacscore.migrations`.
"""

from __future__ import annotations

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from pacscore.db import db, utcnow

SCHEMA_VERSION = 1


class BaseModel(Model):
    class Meta:
        database = db


class Patient(BaseModel):
    patient_id = CharField(max_length=64, unique=True)
    patient_name = CharField(max_length=324, default="")
    # upper-case, accent-free copy of the name: case-insensitive matching on an index
    name_key = CharField(max_length=324, default="", index=True)
    birth_date = CharField(max_length=8, default="")
    sex = CharField(max_length=16, default="")
    created = DateTimeField(default=utcnow)


class Study(BaseModel):
    study_uid = CharField(max_length=64, unique=True)
    patient = ForeignKeyField(Patient, backref="studies", on_delete="CASCADE")
    study_date = CharField(max_length=8, default="", index=True)
    study_time = CharField(max_length=16, default="")
    accession_number = CharField(max_length=64, default="", index=True)
    study_id = CharField(max_length=64, default="")
    description = CharField(max_length=324, default="")
    referring_physician = CharField(max_length=324, default="")
    referring_key = CharField(max_length=324, default="")  # see Patient.name_key
    institution = CharField(max_length=324, default="")
    requesting_service = CharField(max_length=324, default="")
    # "\CT\MR\": delimited at both ends so that one modality matches with LIKE
    modalities = CharField(max_length=324, default="")
    num_series = IntegerField(default=0)
    num_instances = IntegerField(default=0)
    size = BigIntegerField(default=0)
    first_received = DateTimeField(default=utcnow)
    last_received = DateTimeField(default=utcnow, index=True)
    stable = BooleanField(default=False, index=True)


class Series(BaseModel):
    series_uid = CharField(max_length=64, unique=True)
    study = ForeignKeyField(Study, backref="series", on_delete="CASCADE")
    modality = CharField(max_length=16, default="", index=True)
    series_number = CharField(max_length=12, default="")
    description = CharField(max_length=324, default="")
    body_part = CharField(max_length=64, default="")
    station_name = CharField(max_length=64, default="")
    series_date = CharField(max_length=8, default="")
    series_time = CharField(max_length=16, default="")
    num_instances = IntegerField(default=0)
    size = BigIntegerField(default=0)
    first_received = DateTimeField(default=utcnow)
    last_received = DateTimeField(default=utcnow)


class Storage(BaseModel):
    name = CharField(max_length=64, unique=True)
    path = CharField(max_length=1024)
    enabled = BooleanField(default=True)
    min_free_mb = IntegerField(default=2048)
    position = IntegerField(default=0)


class Instance(BaseModel):
    sop_uid = CharField(max_length=64, unique=True)
    series = ForeignKeyField(Series, backref="instances", on_delete="CASCADE")
    sop_class_uid = CharField(max_length=64)
    instance_number = CharField(max_length=12, default="")
    transfer_syntax = CharField(max_length=64)
    storage = ForeignKeyField(Storage, backref="instances")
    # relative to the storage folder, derived from a hash of the UID
    path = CharField(max_length=255)
    size = BigIntegerField()
    received_at = DateTimeField(default=utcnow)
    calling_ae = CharField(max_length=16, default="")
    called_ae = CharField(max_length=16, default="")


class Node(BaseModel):
    name = CharField(max_length=64, unique=True)
    aet = CharField(max_length=16, index=True)
    host = CharField(max_length=255)
    port = IntegerField()
    enabled = BooleanField(default=True)
    description = CharField(max_length=255, default="")
    allow_store = BooleanField(default=True)
    allow_find = BooleanField(default=False)
    allow_move = BooleanField(default=False)
    allow_get = BooleanField(default=False)
    allow_worklist = BooleanField(default=False)
    # Modality Worklist: this station sees only the steps scheduled for its AE title
    worklist_own_steps_only = BooleanField(default=False)
    # Transfer Syntax UID to send in when the node accepts it; "" sends as stored
    preferred_transfer_syntax = CharField(max_length=64, default="")

    RIGHTS = ("store", "find", "move", "get", "worklist")

    def rights(self) -> list[str]:
        return [r for r in self.RIGHTS if getattr(self, f"allow_{r}")]


class Profile(BaseModel):
    """A named set of rights (see ``pacscore.rights``); built-in ones cannot be deleted."""

    name = CharField(max_length=64, unique=True)
    rights = TextField(default="[]")  # JSON list of right names
    builtin = BooleanField(default=False)


class User(BaseModel):
    login = CharField(max_length=128, unique=True)
    # empty for accounts managed by an authentication plugin (auth_source != "local")
    password_hash = CharField(max_length=255, default="")
    first_name = CharField(max_length=128, default="")
    last_name = CharField(max_length=128, default="")
    email = CharField(max_length=255, default="")
    profile = CharField(max_length=64, default="simple user")  # Profile.name
    status = CharField(max_length=16, default="active")  # active, locked, disabled
    services = TextField(default="[]")  # JSON list; empty means every study
    physician_id = CharField(max_length=64, default="")
    auth_source = CharField(max_length=32, default="local")  # or the plugin's method
    failed_attempts = IntegerField(default=0)
    locked_until = DateTimeField(null=True)
    password_changed = DateTimeField(null=True)
    must_change_password = BooleanField(default=False)
    last_login = DateTimeField(null=True)
    created = DateTimeField(default=utcnow)


class ServiceFilter(BaseModel):
    """A named study filter that users are limited to (``User.services`` lists names).

    Its non-empty criteria must all match (AND); a user's several filters
    add up (OR).  ``institution_or_service`` is the meaning service names
    always had: InstitutionName or RequestingService equal to it (see
    ``web/studyops.py`` and the migration step ``service_filters``).
    """

    name = CharField(max_length=128, unique=True)
    institution = CharField(max_length=324, default="")  # InstitutionName (0008,0080)
    requesting_service = CharField(max_length=324, default="")  # RequestingService (0032,1033)
    modality = CharField(max_length=16, default="")  # one of ModalitiesInStudy (0008,0061)
    institution_or_service = CharField(max_length=324, default="")


class AuditEvent(BaseModel):
    """Who did what, kept for the audit trail (logins, exports, deletions, changes)."""

    at = DateTimeField(default=utcnow, index=True)
    actor = CharField(max_length=128, default="", index=True)  # login, or "system:<plugin>"
    action = CharField(max_length=64, index=True)
    target = CharField(max_length=255, default="")
    details = TextField(default="{}")  # JSON object
    source_ip = CharField(max_length=64, default="")


class PluginState(BaseModel):
    name = CharField(max_length=128, unique=True)
    enabled = BooleanField(default=True)
    settings = TextField(default="{}")


class PluginFailureRecord(BaseModel):
    plugin = CharField(max_length=128, index=True)
    hook = CharField(max_length=64)
    error = TextField()
    at = DateTimeField(default=utcnow)


class Setting(BaseModel):
    key = CharField(max_length=128, unique=True)
    value = TextField()  # JSON


class OutboxEvent(BaseModel):
    """A hook call owed to plugins; deleted once delivered (at-least-once)."""

    hook = CharField(max_length=64)
    payload = TextField()
    created = DateTimeField(default=utcnow)


class TrashedFile(BaseModel):
    """A file whose index rows are gone and that is still to be unlinked.

    Written in the transaction that deletes the rows, so that a crash between
    the commit and the unlink leaves no orphan file: start-up finishes the job.
    """

    storage = ForeignKeyField(Storage)
    path = CharField(max_length=255)


class Job(BaseModel):
    """A unit of durable background work, run by a handler from ``job_handlers``.

    ``state`` is ``pending`` (due at ``next_attempt``), ``running`` (taken by
    the worker ``taken_by``), ``done`` or ``failed`` (retry schedule exhausted).
    """

    kind = CharField(max_length=64, index=True)
    payload = TextField(default="{}")  # JSON object
    state = CharField(max_length=16, default="pending")
    attempts = IntegerField(default=0)
    next_attempt = DateTimeField(default=utcnow)
    last_error = TextField(default="")
    created = DateTimeField(default=utcnow)
    updated = DateTimeField(default=utcnow)
    taken_by = CharField(max_length=255, default="")

    class Meta:
        # the workers' query: pending jobs that are due, oldest first
        indexes = ((("state", "next_attempt"), False),)


class ApiToken(BaseModel):
    """A per-user REST API token; only a SHA-256 digest of the secret is kept."""

    user = ForeignKeyField(User, backref="api_tokens", on_delete="CASCADE")
    name = CharField(max_length=128, default="")
    token_hash = CharField(max_length=64, unique=True)
    created = DateTimeField(default=utcnow)
    last_used = DateTimeField(null=True)


class WebSession(BaseModel):
    """A console login, checked server-side on every request (duration, inactivity).

    The browser holds the session key in a signed cookie; only its digest is
    stored, and logging out deletes the row.
    """

    key_hash = CharField(max_length=64, unique=True)
    user = ForeignKeyField(User, backref="web_sessions", on_delete="CASCADE")
    created = DateTimeField(default=utcnow)
    last_seen = DateTimeField(default=utcnow)
    source_ip = CharField(max_length=64, default="")
    must_change_password = BooleanField(default=False)


class RequestedProcedure(BaseModel):
    """A Modality Worklist entry: an order for one study (see ``pacscore.worklist``)."""

    patient_id = CharField(max_length=64, index=True)
    patient_name = CharField(max_length=324, default="")
    name_key = CharField(max_length=324, default="", index=True)  # see Patient.name_key
    birth_date = CharField(max_length=8, default="")
    sex = CharField(max_length=16, default="")
    accession_number = CharField(max_length=64, default="", index=True)
    admission_id = CharField(max_length=64, default="")
    study_uid = CharField(max_length=64, unique=True)
    requested_procedure_id = CharField(max_length=64, default="")
    procedure_code = CharField(max_length=64, default="")
    procedure_scheme = CharField(max_length=64, default="")
    procedure_description = CharField(max_length=324, default="")
    referring_physician = CharField(max_length=324, default="")
    referring_key = CharField(max_length=324, default="")
    reason = CharField(max_length=324, default="")
    placer_order = CharField(max_length=64, default="", index=True)
    filler_order = CharField(max_length=64, default="", index=True)
    created = DateTimeField(default=utcnow)
    updated = DateTimeField(default=utcnow)


class ScheduledStep(BaseModel):
    """A scheduled procedure step of a requested procedure, with its status."""

    procedure = ForeignKeyField(RequestedProcedure, backref="steps", on_delete="CASCADE")
    sps_id = CharField(max_length=64, default="")
    modality = CharField(max_length=16, default="", index=True)
    station_aet = CharField(max_length=16, default="")
    start_date = CharField(max_length=8, default="", index=True)
    start_time = CharField(max_length=16, default="")
    description = CharField(max_length=324, default="")
    performing_physician = CharField(max_length=324, default="")
    protocol_code = CharField(max_length=64, default="")
    protocol_scheme = CharField(max_length=64, default="")
    protocol_description = CharField(max_length=324, default="")
    # SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, MISSED, CANCELED
    status = CharField(max_length=16, default="SCHEDULED")
    # when the step should start, for the overdue sweep (start_date + start_time)
    scheduled_at = DateTimeField(null=True)
    updated = DateTimeField(default=utcnow)

    class Meta:
        # status matching (MWL) and the overdue sweep (status, then start) share one index
        indexes = ((("status", "scheduled_at"), False),)


class PerformedStep(BaseModel):
    """A Modality Performed Procedure Step received by N-CREATE."""

    mpps_uid = CharField(max_length=64, unique=True)
    # JSON list of the ScheduledStep ids it performs (empty: unscheduled)
    step_ids = TextField(default="[]")
    status = CharField(max_length=16)  # IN PROGRESS, COMPLETED, DISCONTINUED
    calling_ae = CharField(max_length=16, default="")
    created = DateTimeField(default=utcnow)
    updated = DateTimeField(default=utcnow)


class SchemaVersion(BaseModel):
    version = IntegerField()


class AppliedMigration(BaseModel):
    """A named schema upgrade step already run on this database (see migrations.py)."""

    name = CharField(max_length=128, unique=True)
    applied = DateTimeField(default=utcnow)


class StudyType(BaseModel):
    """A kind of examination offered by the worklist form (see docs/worklist.md)."""

    code = CharField(max_length=64, unique=True)
    description = CharField(max_length=324, default="")
    modality = CharField(max_length=16, default="")
    duration_minutes = IntegerField(default=15)
    nodes = TextField(default="[]")  # JSON list of the Node names it may be scheduled on


class PasswordResetToken(BaseModel):
    """A single-use password reset link; only a SHA-256 digest of its secret is kept."""

    user = ForeignKeyField(User, backref="reset_tokens", on_delete="CASCADE")
    token_hash = CharField(max_length=64, unique=True)
    created = DateTimeField(default=utcnow, index=True)
    expires = DateTimeField()
    used = DateTimeField(null=True)


ALL_MODELS = [
    Patient,
    Study,
    Series,
    Storage,
    Instance,
    Node,
    Profile,
    User,
    ServiceFilter,
    AuditEvent,
    PluginState,
    PluginFailureRecord,
    Setting,
    OutboxEvent,
    TrashedFile,
    Job,
    ApiToken,
    WebSession,
    RequestedProcedure,
    ScheduledStep,
    PerformedStep,
    SchemaVersion,
    AppliedMigration,
    StudyType,
    PasswordResetToken,
]
