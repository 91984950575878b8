"""Every database table, in one place.

Models are bound to ``db``, a proxy initialised from a URL at start-up
(``sqlite:///...`` by default, ``postgresql://...`` for larger sites).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    OperationalError,
    TextField,
)
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

db = DatabaseProxy()

SCHEMA_VERSION = 1
# how long a SQLite writer waits for another before 'database is locked'
BUSY_TIMEOUT_SECONDS = 30


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


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


class Hl7Message(BaseModel):
    """An HL7 v2 message received (by a plugin), its outcome and the ACK sent."""

    # few indexes: each one is written by every message of a feed
    received_at = DateTimeField(default=utcnow)
    peer = CharField(max_length=64, default="")
    message_type = CharField(max_length=32, default="")  # e.g. ORM^O01
    control_id = CharField(max_length=64, default="", index=True)
    charset = CharField(max_length=32, default="")
    text = TextField()  # the decoded message, segments separated by CR
    outcome = CharField(max_length=2, default="")  # AA, AE, AR
    detail = TextField(default="")  # what was done, or why not
    ack = TextField(default="")
    replay_of = IntegerField(null=True)


class RouterDelivery(BaseModel):
    """One instance to deliver (or delivered) to a node by a router rule.

    Written when a send is queued (``state`` ``queued``, ``job_id`` the send
    job), marked ``sent`` once the node accepted it: a rule never sends the
    same instance to the same node twice unless forced, a retried job sends
    only what is still queued, and queued rows hold their study back from
    automatic purge (``retention_holds``).
    """

    rule = CharField(max_length=128)
    node = CharField(max_length=64)
    sop_uid = CharField(max_length=64)
    study_uid = CharField(max_length=64, index=True)
    state = CharField(max_length=16, default="queued")
    job_id = IntegerField(default=0, index=True)
    updated = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("rule", "node", "sop_uid"), True),)


class SchemaVersion(BaseModel):
    version = IntegerField()


class AppliedMigration(BaseModel):
    """A named schema upgrade step already run on this database (see migrations.py)."""

    name = CharField(max_length=128, unique=True)
    applied = DateTimeField(default=utcnow)


class MailAlertSent(BaseModel):
    """When an alert (kind + storage) was last mailed by the email plugin: its quiet period."""

    key = CharField(max_length=255, unique=True)
    last_sent = DateTimeField(default=utcnow)
    suppressed = IntegerField(default=0)  # occurrences not mailed since last_sent


class ApicryptIdentity(BaseModel):
    """Our APICrypt signing identity (apicrypt plugin): one row, the last import."""

    email = CharField(max_length=255, default="")
    name = CharField(max_length=324, default="")
    fingerprint = CharField(max_length=64)  # SHA-256 of our certificate, hex
    not_after = DateTimeField()
    cert_pem = TextField()  # our certificate, then its chain
    key = TextField()  # PKCS#8 PEM, encrypted with pacs.secrets
    imported = DateTimeField(default=utcnow)


class ApicryptCertificate(BaseModel):
    """A correspondent's S/MIME certificate (apicrypt plugin directory), one row per address."""

    email = CharField(max_length=255, index=True)  # lower-case
    name = CharField(max_length=324, default="")
    subject = TextField(default="")
    issuer = TextField(default="")
    serial = CharField(max_length=128, default="")
    fingerprint = CharField(max_length=64, index=True)  # SHA-256, hex
    not_before = DateTimeField()
    not_after = DateTimeField(index=True)
    pem = TextField()
    imported = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("fingerprint", "email"), True),)


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
    Hl7Message,
    SchemaVersion,
    AppliedMigration,
    MailAlertSent,
    ApicryptIdentity,
    ApicryptCertificate,
    RouterDelivery,
    StudyType,
    PasswordResetToken,
]


def make_database(url: str, home: Path | None = None):
    """Create the peewee database for ``url``; relative SQLite paths are under ``home``."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = Path(url[len("sqlite:///") :])
        if not path.is_absolute() and home is not None:
            path = home / path
        return PooledSqliteDatabase(
            str(path),
            max_connections=64,
            stale_timeout=300,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_SECONDS,
            pragmas={
                "journal_mode": "wal",
                # a C-STORE success must survive a power loss, not only a crash
                "synchronous": "full",
                "foreign_keys": 1,
                "busy_timeout": BUSY_TIMEOUT_SECONDS * 1000,
                "cache_size": -16000,
            },
        )
    if parsed.scheme in ("postgres", "postgresql"):
        return PooledPostgresqlDatabase(
            parsed.path.lstrip("/"),
            user=parsed.username,
            password=parsed.password,
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            max_connections=32,
            stale_timeout=300,
        )
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


def bind_database(url: str, home: Path | None = None):
    database = make_database(url, home)
    db.initialize(database)
    return database


def is_sqlite() -> bool:
    return isinstance(db.obj, PooledSqliteDatabase)


def create_tables() -> None:
    """Create missing tables and indexes, then upgrade existing tables."""
    from pacscore import migrations

    with connection():
        fresh = not db.table_exists(SchemaVersion._meta.table_name)
        db.create_tables(ALL_MODELS, safe=True)
        if fresh:
            SchemaVersion.create(version=SCHEMA_VERSION)
            # a new database already has the shape every named step produces
            for name, _ in migrations.STEPS:
                AppliedMigration.create(name=name)
        migrations.upgrade()


@contextmanager
def write_transaction(sync_commit: bool = True):
    """A transaction that takes the write lock up front on SQLite.

    With a deferred transaction two SQLite writers may both read and then
    deadlock on the upgrade; IMMEDIATE makes the second one wait instead.

    ``sync_commit=False`` commits without waiting for the disk (SQLite
    ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): the commit
    survives a crash of the process, and a power loss once
    :func:`make_commits_durable` has run after it.  Only callers that can
    redo a commit lost to a power loss may ask for it (the C-STORE path keeps
    a journal of its files until then).
    """
    database = db.obj
    if not is_sqlite():
        with database.atomic():
            if not sync_commit:
                database.execute_sql("SET LOCAL synchronous_commit TO OFF")
            yield
        return
    outermost = not database.in_transaction()
    # only the C-STORE path commits without waiting for the disk: that tells a store
    with (
        _sqlite_writers.queue(database.database, BUSY_TIMEOUT_SECONDS, store=not sync_commit)
        if outermost
        else nullcontext()
    ):
        # per connection, and only outside a transaction: back to FULL for the next user
        # (on the sqlite3 connection itself: through peewee, a C-STORE's 2% of CPU)
        relaxed = database.connection() if not sync_commit and outermost else None
        if relaxed is not None:
            relaxed.execute("PRAGMA synchronous = NORMAL")
        try:
            with database.atomic("IMMEDIATE"):
                yield
        finally:
            if relaxed is not None:
                relaxed.execute("PRAGMA synchronous = FULL")


# the first byte of the lock file while a writer other than a C-STORE holds the lock
# (any other byte: a C-STORE holds it); set and cleared by those writers only, so
# that the C-STORE path pays no write for it
OTHER_HOLDS, NO_OTHER = b"O", b"-"


class _SqliteWriterQueue:
    """Writers of one SQLite database queue on a lock that wakes the next one at once.

    SQLite's own wait for its write lock (busy timeout) polls: it sleeps 1, 2,
    5, 10... ms between tries, so that with several processes storing, a
    transaction of a fraction of a millisecond often cost its waiters a
    millisecond or more of idle time.  Here ``write_transaction`` first takes a
    lock of its process (threads) and then ``flock(2)`` on ``<database>-writers``
    (processes), whose waiters the kernel wakes as soon as it is released (and
    releases if its holder dies).  Writers that do not queue (plain
    transactions) still meet SQLite's own lock, which stays what protects the
    data.
    """

    def __init__(self) -> None:
        self._thread_lock = threading.Lock()
        self._files: dict[str, int] = {}  # database path -> its lock file, open
        # when a store of this process last queued behind a store of another process
        self.store_waited_at = float("-inf")
        # a fork copies the lock as another thread may hold it: the child starts afresh
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._thread_lock = threading.Lock()
        # the parent's open lock files: closing the child's copies releases no lock
        # the parent holds (flock(2) locks go with the last descriptor of an open file)
        for fd in self._files.values():
            with suppress(OSError):
                os.close(fd)
        self._files = {}

    @contextmanager
    def queue(self, path: str, timeout: float, store: bool = False):
        if not self._thread_lock.acquire(timeout=timeout):
            raise OperationalError("database is locked")  # SQLite's words for it
        try:
            fd = self._lock_file(path)
            if fd is None:  # an in-memory database, or no lock file possible: SQLite waits
                yield
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if store and os.pread(fd, 1, 0) != OTHER_HOLDS:
                    self.store_waited_at = time.monotonic()
                # its holder is inside a transaction, which SQLite's timeout bounds
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if not store:
                    _hint(fd, OTHER_HOLDS)
                yield
            finally:
                if not store:
                    _hint(fd, NO_OTHER)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _lock_file(self, path: str) -> int | None:
        fd = self._files.get(path)
        if fd is not None:
            return fd
        if path in ("", ":memory:") or path.startswith("file:"):
            return None
        # opened per process (see _forget): flock does not exclude holders of one open file
        try:
            fd = os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        self._files[path] = fd
        return fd


def _hint(fd: int, byte: bytes) -> None:
    with suppress(OSError):  # only a hint (a full disk refuses even one byte)
        os.pwrite(fd, byte, 0)


_sqlite_writers = _SqliteWriterQueue()


def stores_queued_within(seconds: float) -> bool:
    """Whether a C-STORE of this process had to wait for the SQLite write lock held by
    a C-STORE of another process in the last ``seconds`` (never on PostgreSQL, whose
    writers do not queue)."""
    return time.monotonic() - _sqlite_writers.store_waited_at < seconds


def make_commits_durable() -> None:
    """Bring every commit made so far, synchronous or not, to the disk.

    SQLite (WAL): fsync the write-ahead log, which holds every commit not yet
    checkpointed (a checkpoint syncs the database file itself).  PostgreSQL:
    one synchronous commit, which flushes the WAL up to it.
    """
    database = db.obj
    if is_sqlite():
        try:
            fd = os.open(database.database + "-wal", os.O_RDONLY)
        except FileNotFoundError:  # no WAL: every commit is in the synced database
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    with connection(), database.atomic():
        database.execute_sql("SELECT txid_current()")


@contextmanager
def connection():
    """Use the thread's connection, opening (and afterwards closing) it only if needed.

    Unlike peewee's ``connection_context`` it nests: an inner block never
    closes a connection that an outer block (or a transaction) is using.
    """
    opened = db.is_closed()
    if opened:
        db.connect()
    try:
        yield
    finally:
        if opened and not db.is_closed():
            db.close()
